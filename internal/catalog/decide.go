package catalog

import (
	"fmt"
	"slices"

	"github.com/yikatong/yikatong/internal/apperr"
)

// Holder is what Decide needs to know about the person presenting a card
// or code — no name, no ID number.
type Holder struct {
	// Category is one of Categories.
	Category string
	// Age in whole years on the day of the scan.
	Age int
	// Flags are concession flags such as "student" or "disabled".
	Flags []string
	// CardStatus is the card's status; only CardActive passes.
	CardStatus string
	// Local: the holder's home city (the issuer of the card or code) is this city.
	Local bool
}

// The rules Decide reports in Decision.Rule.
const (
	RuleEnabled  = "enabled"
	RuleAmount   = "amount"
	RuleHolder   = "holder"
	RuleCard     = "card_status"
	RuleCategory = "category"
	RuleLocal    = "local_only"
	RuleMinAge   = "min_age"
	RuleMaxAge   = "max_age"
	RuleFlags    = "require_any_flag"
)

// Decision is the outcome of Decide.
type Decision struct {
	Eligible bool `json:"eligible"`
	// Reason is the apperr code when not eligible: scenario_disabled,
	// card_not_active, not_eligible, invalid_amount, overflow or validation_failed.
	Reason apperr.Code `json:"reason,omitempty"`
	// Rule names the rule that failed (one of the Rule constants).
	Rule string `json:"rule,omitempty"`
	// Detail and DetailZh explain the refusal (never personal data beyond the rule).
	Detail   string `json:"detail,omitempty"`
	DetailZh string `json:"detail_zh,omitempty"`
	// Amount is what the holder pays (charge, medical) or receives (payout),
	// after any concession; 0 for identify and access.
	Amount int64 `json:"amount_fen"`
	// BaseAmount is the amount before the concession.
	BaseAmount int64 `json:"base_amount_fen"`
	// Concession is the ID of the concession applied, "" if none.
	Concession string `json:"concession,omitempty"`
	// PINRequired: the terminal must collect the holder's PIN.
	PINRequired bool `json:"pin_required"`
}

// Err returns the refusal as an *apperr.Error (nil when eligible).
func (d Decision) Err() *apperr.Error {
	if d.Eligible {
		return nil
	}
	e := apperr.Newf(d.Reason, d.Detail, d.DetailZh)
	if d.Reason == apperr.ValidationFailed {
		e.Field = d.Rule
	}
	return e
}

func refuse(code apperr.Code, rule, en, zh string) Decision {
	return Decision{Reason: code, Rule: rule, Detail: en, DetailZh: zh}
}

// Decide says whether holder h may use scenario s and what it costs.
// requestedAmount is the amount the terminal sent (0 when it sent none).
//
// Checks, in order: the scenario is enabled; the amount is valid for the
// scenario's kind; the holder's data is sane; the card is active; the
// category is allowed; local-only; minimum and maximum age; required flags.
// Then the cheapest matching concession applies (charges only) and the PIN
// threshold is checked against the amount to pay. Decide is pure.
func Decide(s Scenario, h Holder, requestedAmount int64) Decision {
	if !s.Enabled {
		return refuse(apperr.ScenarioDisabled, RuleEnabled,
			"the service "+s.ID+" is disabled", "服务场景 "+s.ID+" 已停用")
	}
	base, d, ok := amountFor(s, requestedAmount)
	if !ok {
		return d
	}
	if h.Age < 0 || h.Age > MaxAge {
		return refuse(apperr.ValidationFailed, "age", "the holder's age is not valid", "持卡人年龄无效")
	}
	if h.CardStatus != CardActive {
		return refuse(apperr.CardNotActive, RuleCard, "the card is not active", "卡片状态非正常")
	}
	if !slices.Contains(Categories, h.Category) ||
		(len(s.Eligibility.Categories) > 0 && !slices.Contains(s.Eligibility.Categories, h.Category)) {
		return refuse(apperr.NotEligible, RuleCategory,
			"this service is not open to the holder's category", "该服务不向此类持卡人开放")
	}
	if s.LocalOnly && !h.Local {
		return refuse(apperr.NotEligible, RuleLocal,
			"this service is only for holders whose card was issued by this city", "该服务仅限本市发卡的持卡人")
	}
	if s.Eligibility.MinAge > 0 && h.Age < s.Eligibility.MinAge {
		return refuse(apperr.NotEligible, RuleMinAge,
			fmt.Sprintf("this service is for holders aged %d and over", s.Eligibility.MinAge),
			fmt.Sprintf("该服务仅限 %d 周岁及以上", s.Eligibility.MinAge))
	}
	if s.Eligibility.MaxAge > 0 && h.Age > s.Eligibility.MaxAge {
		return refuse(apperr.NotEligible, RuleMaxAge,
			fmt.Sprintf("this service is for holders aged %d and under", s.Eligibility.MaxAge),
			fmt.Sprintf("该服务仅限 %d 周岁及以下", s.Eligibility.MaxAge))
	}
	if len(s.Eligibility.RequireAnyFlag) > 0 && !anyFlag(h.Flags, s.Eligibility.RequireAnyFlag) {
		return refuse(apperr.NotEligible, RuleFlags,
			"this service needs a holder status the holder does not have", "持卡人不具备使用该服务所需的身份")
	}

	out := Decision{Eligible: true, Amount: base, BaseAmount: base}
	if s.Kind == KindCharge {
		for _, c := range s.Concessions {
			if !concessionMatches(c, h) {
				continue
			}
			if a := applyPercent(base, c.PayPercent); a < out.Amount {
				out.Amount, out.Concession = a, c.ID
			}
		}
	}
	if s.RequirePIN && (s.Kind == KindCharge || s.Kind == KindMedical) && out.Amount > s.PINAboveFen {
		out.PINRequired = true
	}
	return out
}

// amountFor checks requested against the scenario's kind and returns the
// base amount before concessions.
func amountFor(s Scenario, requested int64) (int64, Decision, bool) {
	if requested > MaxAmountFen {
		return 0, refuse(apperr.Overflow, RuleAmount, "the amount is too large", "金额过大"), false
	}
	if requested < 0 {
		return 0, refuse(apperr.InvalidAmount, RuleAmount, "the amount must not be negative", "金额不能为负数"), false
	}
	switch s.Kind {
	case KindIdentify, KindAccess:
		if requested != 0 {
			return 0, refuse(apperr.InvalidAmount, RuleAmount,
				"this service takes no amount", "该服务不涉及金额"), false
		}
		return 0, Decision{}, true
	case KindCharge, KindMedical, KindPayout:
		if s.AmountFromTerminal {
			if requested == 0 {
				return 0, refuse(apperr.InvalidAmount, RuleAmount,
					"this service needs an amount from the terminal", "该服务需要终端提供金额"), false
			}
			if s.MaxAmountFen > 0 && requested > s.MaxAmountFen {
				return 0, refuse(apperr.InvalidAmount, RuleAmount,
					fmt.Sprintf("the amount is above this service's maximum of %d fen", s.MaxAmountFen),
					fmt.Sprintf("金额超过该服务上限 %d 分", s.MaxAmountFen)), false
			}
			return requested, Decision{}, true
		}
		if s.DefaultAmountFen <= 0 || s.DefaultAmountFen > MaxAmountFen {
			return 0, refuse(apperr.ValidationFailed, "default_amount_fen",
				"the service has no valid amount configured", "该服务未配置有效金额"), false
		}
		if requested != 0 && requested != s.DefaultAmountFen {
			return 0, refuse(apperr.InvalidAmount, RuleAmount,
				fmt.Sprintf("this service has a fixed amount of %d fen", s.DefaultAmountFen),
				fmt.Sprintf("该服务金额固定为 %d 分", s.DefaultAmountFen)), false
		}
		return s.DefaultAmountFen, Decision{}, true
	}
	return 0, refuse(apperr.ValidationFailed, "kind", "the service has an unknown kind", "服务场景类型未知"), false
}

func concessionMatches(c Concession, h Holder) bool {
	if c.MinAge > 0 && h.Age < c.MinAge {
		return false
	}
	if c.MaxAge > 0 && h.Age > c.MaxAge {
		return false
	}
	if len(c.AnyFlag) > 0 && !anyFlag(h.Flags, c.AnyFlag) {
		return false
	}
	return c.PayPercent >= 0 && c.PayPercent <= 100
}

func anyFlag(have, want []string) bool {
	for _, f := range want {
		if slices.Contains(have, f) {
			return true
		}
	}
	return false
}

// applyPercent returns floor(amount*pct/100) for 0 <= amount, 0 <= pct <= 100
// without overflowing int64.
func applyPercent(amount int64, pct int) int64 {
	q, r := amount/100, amount%100
	return q*int64(pct) + r*int64(pct)/100
}

// SplitMedical splits a medical bill: the medical personal account pays
// first, as far as its balance goes, and the wallet pays the rest. Negative
// balances count as zero.
func SplitMedical(amount, medicalBalance int64) (fromMedical, fromWallet int64) {
	if amount <= 0 {
		return 0, 0
	}
	fromMedical = min(amount, max(medicalBalance, 0))
	return fromMedical, amount - fromMedical
}

// AgeBand returns a coarse age band for the "age_band" view field, so a
// provider can check a concession without learning the birth date.
func AgeBand(age int) string {
	switch {
	case age < 0:
		return ""
	case age < 14:
		return "0-13"
	case age < 18:
		return "14-17"
	case age < 60:
		return "18-59"
	case age < 65:
		return "60-64"
	case age < 70:
		return "65-69"
	default:
		return "70+"
	}
}
