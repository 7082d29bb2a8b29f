package catalog

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/yikatong/yikatong/internal/apperr"
)

var (
	// scenarioID: two to four dot-separated lower-case segments, e.g. "transit.bus".
	scenarioID = regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,3}$`)
	// slug: concession ids and flags.
	slug = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
)

const (
	maxIDLen   = 64
	maxSlugLen = 32
	maxNameLen = 100 // characters
	maxFlags   = 16
)

func invalid(field, en, zh string) *apperr.Error { return apperr.Invalid(field, en, zh) }

// Validate checks s as staff would submit it. The error is
// apperr.ValidationFailed with Field set to the JSON path of the first
// offending field (e.g. "concessions[1].pay_percent").
func Validate(s Scenario) error {
	if len(s.ID) > maxIDLen || !scenarioID.MatchString(s.ID) {
		return invalid("id", "the id must be 2-4 dot-separated lower-case segments such as transit.bus, at most 64 characters",
			"标识须为 2-4 段以点分隔的小写字母段，如 transit.bus，最长 64 个字符")
	}
	if s.Item < 1 || s.Item > ItemCount {
		return invalid("item", "the item must be a service item number from 1 to 13", "服务事项编号须为 1 至 13")
	}
	if err := checkName("name_zh", s.NameZh); err != nil {
		return err
	}
	if err := checkName("name_en", s.NameEn); err != nil {
		return err
	}
	if !slices.Contains(Kinds, s.Kind) {
		return invalid("kind", "the kind must be one of identify, access, charge, medical, payout",
			"类型须为 identify、access、charge、medical、payout 之一")
	}
	if err := checkAmounts(s); err != nil {
		return err
	}
	if err := checkEligibility(s.Eligibility); err != nil {
		return err
	}
	if len(s.Concessions) > 0 && s.Kind != KindCharge {
		return invalid("concessions", "only charge scenarios have concessions", "仅收费类场景可设置优惠")
	}
	if len(s.Concessions) > MaxConcessions {
		return invalid("concessions", fmt.Sprintf("at most %d concessions", MaxConcessions), fmt.Sprintf("优惠最多 %d 项", MaxConcessions))
	}
	seen := map[string]bool{}
	for i, c := range s.Concessions {
		p := fmt.Sprintf("concessions[%d]", i)
		if err := checkConcession(p, c); err != nil {
			return err
		}
		if seen[c.ID] {
			return invalid(p+".id", "concession ids must be unique", "优惠标识不得重复")
		}
		seen[c.ID] = true
	}
	seenField := map[string]bool{}
	for i, f := range s.ViewFields {
		p := fmt.Sprintf("view_fields[%d]", i)
		if !IsField(f) {
			return invalid(p, "unknown view field; see the list of allowed fields (a full ID number is never one of them)",
				"未知的可见字段；完整证件号码不在允许范围内")
		}
		if seenField[f] {
			return invalid(p, "view fields must be unique", "可见字段不得重复")
		}
		seenField[f] = true
	}
	if s.OfflineAllowed && (s.Kind == KindMedical || s.Kind == KindPayout) {
		return invalid("offline_allowed", "medical settlement and payouts need the node online", "医疗结算和发放类场景必须联机")
	}
	if s.CreditLimitFen != 0 {
		if s.Kind != KindCharge {
			return invalid("credit_limit_fen", "only charge scenarios may grant credit", "仅收费类场景可设置先乘后付额度")
		}
		if s.CreditLimitFen < 0 || s.CreditLimitFen > MaxCreditLimitFen {
			return invalid("credit_limit_fen", fmt.Sprintf("the credit limit must be between 0 and %d fen", MaxCreditLimitFen),
				fmt.Sprintf("授信额度须在 0 至 %d 分之间", MaxCreditLimitFen))
		}
	}
	if s.RequirePIN && s.Kind != KindCharge && s.Kind != KindMedical {
		return invalid("require_pin", "only payments (charge, medical) ask for a PIN", "仅支付类场景（收费、医疗结算）可要求密码")
	}
	if s.PINAboveFen < 0 || s.PINAboveFen > MaxAmountFen {
		return invalid("pin_above_fen", "the PIN threshold must be between 0 and the maximum amount", "免密额度须在 0 与最大金额之间")
	}
	if s.PINAboveFen != 0 && !s.RequirePIN {
		return invalid("pin_above_fen", "set require_pin to use a PIN threshold", "设置免密额度须同时开启密码验证")
	}
	return nil
}

// checkName checks a name as it will be stored: one line of valid text of
// at most maxNameLen characters, not only spaces. Control characters are
// refused: a NUL cannot be stored in PostgreSQL (it failed there as an
// internal error while SQLite kept it), and a line break or tab breaks the
// tables the name is shown in. The length counts the name as given, not
// trimmed, since that is what is stored.
func checkName(field, v string) error {
	if strings.TrimSpace(v) == "" {
		return invalid(field, "the name must not be empty", "名称不能为空")
	}
	if !utf8.ValidString(v) || utf8.RuneCountInString(v) > maxNameLen || strings.ContainsFunc(v, unicode.IsControl) {
		return invalid(field, fmt.Sprintf("the name must be one line of valid text of at most %d characters", maxNameLen),
			fmt.Sprintf("名称须为不超过 %d 个字符的单行有效文本", maxNameLen))
	}
	return nil
}

func checkAmounts(s Scenario) error {
	if s.DefaultAmountFen < 0 || s.DefaultAmountFen > MaxAmountFen {
		return invalid("default_amount_fen", "the default amount must be between 0 and the maximum amount", "默认金额须在 0 与最大金额之间")
	}
	if s.MaxAmountFen < 0 || s.MaxAmountFen > MaxAmountFen {
		return invalid("max_amount_fen", "the maximum amount must be between 0 and the package maximum", "金额上限须在 0 与系统最大金额之间")
	}
	switch s.Kind {
	case KindIdentify, KindAccess:
		if s.DefaultAmountFen != 0 {
			return invalid("default_amount_fen", "identify and access scenarios take no amount", "身份核验和门禁类场景不涉及金额")
		}
		if s.AmountFromTerminal {
			return invalid("amount_from_terminal", "identify and access scenarios take no amount", "身份核验和门禁类场景不涉及金额")
		}
		if s.MaxAmountFen != 0 {
			return invalid("max_amount_fen", "identify and access scenarios take no amount", "身份核验和门禁类场景不涉及金额")
		}
	case KindMedical:
		if !s.AmountFromTerminal {
			return invalid("amount_from_terminal", "a medical bill's amount comes from the terminal", "医疗结算金额须由终端提供")
		}
		fallthrough
	default:
		if s.AmountFromTerminal && s.DefaultAmountFen != 0 {
			return invalid("default_amount_fen", "set either a default amount or amount_from_terminal, not both", "默认金额与终端金额只能二选一")
		}
		if !s.AmountFromTerminal && s.DefaultAmountFen == 0 {
			return invalid("default_amount_fen", "set a default amount or amount_from_terminal", "须设置默认金额或由终端提供金额")
		}
		if s.MaxAmountFen != 0 && !s.AmountFromTerminal {
			return invalid("max_amount_fen", "a maximum applies only to amounts from the terminal", "金额上限仅适用于终端提供的金额")
		}
	}
	return nil
}

func checkAges(prefix string, minAge, maxAge int) error {
	if minAge < 0 || minAge > MaxAge {
		return invalid(prefix+"min_age", fmt.Sprintf("ages must be between 0 and %d", MaxAge), fmt.Sprintf("年龄须在 0 至 %d 之间", MaxAge))
	}
	if maxAge < 0 || maxAge > MaxAge {
		return invalid(prefix+"max_age", fmt.Sprintf("ages must be between 0 and %d", MaxAge), fmt.Sprintf("年龄须在 0 至 %d 之间", MaxAge))
	}
	if maxAge != 0 && maxAge < minAge {
		return invalid(prefix+"max_age", "the maximum age must not be below the minimum age", "最大年龄不得小于最小年龄")
	}
	return nil
}

func checkFlags(field string, flags []string) error {
	if len(flags) > maxFlags {
		return invalid(field, fmt.Sprintf("at most %d flags", maxFlags), fmt.Sprintf("标记最多 %d 个", maxFlags))
	}
	for i, f := range flags {
		if len(f) > maxSlugLen || !slug.MatchString(f) {
			return invalid(fmt.Sprintf("%s[%d]", field, i), "flags are lower-case slugs such as student", "标记须为小写字母标识，如 student")
		}
		if slices.Contains(flags[:i], f) {
			return invalid(fmt.Sprintf("%s[%d]", field, i), "flags must be unique", "标记不得重复")
		}
	}
	return nil
}

func checkEligibility(e Eligibility) error {
	for i, c := range e.Categories {
		f := fmt.Sprintf("eligibility.categories[%d]", i)
		if !slices.Contains(Categories, c) {
			return invalid(f, "the category must be local, insured_nonlocal or permanent_resident",
				"持卡人类别须为 local、insured_nonlocal 或 permanent_resident")
		}
		if slices.Contains(e.Categories[:i], c) {
			return invalid(f, "categories must be unique", "持卡人类别不得重复")
		}
	}
	if err := checkAges("eligibility.", e.MinAge, e.MaxAge); err != nil {
		return err
	}
	return checkFlags("eligibility.require_any_flag", e.RequireAnyFlag)
}

func checkConcession(p string, c Concession) error {
	if len(c.ID) > maxSlugLen || !slug.MatchString(c.ID) {
		return invalid(p+".id", "the concession id must be a lower-case slug such as senior_65_free", "优惠标识须为小写字母标识，如 senior_65_free")
	}
	if err := checkName(p+".name_zh", c.NameZh); err != nil {
		return err
	}
	if err := checkName(p+".name_en", c.NameEn); err != nil {
		return err
	}
	if err := checkAges(p+".", c.MinAge, c.MaxAge); err != nil {
		return err
	}
	if err := checkFlags(p+".any_flag", c.AnyFlag); err != nil {
		return err
	}
	if c.MinAge == 0 && c.MaxAge == 0 && len(c.AnyFlag) == 0 {
		return invalid(p, "a concession needs an age range or flags: a discount for everyone is a lower fare", "优惠须设置年龄范围或身份标记；对所有人的优惠应直接调整票价")
	}
	if c.PayPercent < 0 || c.PayPercent > 99 {
		return invalid(p+".pay_percent", "pay_percent must be between 0 (free) and 99", "支付比例须在 0（免费）至 99 之间")
	}
	return nil
}
