package web

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/yikatong/yikatong/internal/apperr"
)

// Labels: what the pages show instead of the machine names kept in the
// data (transfer kinds, roles, scenario ids, reason codes), and money
// written the way people read it.

// Kind is the label of a ledger transfer kind ("scan_charge" → 扫码消费).
func (rq *req) Kind(kind string) string {
	if kind == "" {
		return ""
	}
	return rq.T("kind." + kind)
}

// RoleName is the label of a staff role ("hr_admin" → 人社管理员).
func (rq *req) RoleName(role any) string { return rq.T("role." + toString(role)) }

// Label is the label of key prefix.value for a dynamic family (sex, event,
// scenariokind, provkind, audit, status, cat …).
func (rq *req) Label(family string, value any) string {
	v := toString(value)
	if v == "" {
		return ""
	}
	return rq.T(family + "." + v)
}

// ActorName is how a record's actor reads (a card's history, holder
// flags' setter): "role:subject" as the role's name and the subject, as
// the audit page shows it; a word such as enrolment by its label.
func (rq *req) ActorName(actor string) string {
	if role, sub, ok := strings.Cut(actor, ":"); ok {
		if _, known := messages["role."+role]; known {
			return rq.RoleName(role) + " · " + sub
		}
	}
	return rq.Label("actor", actor)
}

func toString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return fmt.Sprint(v)
}

// scenarios loads the catalogue's scenario names once per request.
func (rq *req) scenarioNames() map[string][2]string {
	if rq.scn != nil {
		return rq.scn
	}
	rq.scn = map[string][2]string{}
	if rq.web.d.Catalog == nil {
		return rq.scn
	}
	all, err := rq.web.d.Catalog.Scenarios(rq.r.Context(), 0)
	if err != nil {
		return rq.scn
	}
	for _, s := range all {
		rq.scn[s.ID] = [2]string{s.NameZh, s.NameEn}
	}
	return rq.scn
}

// ScenarioName is a scenario's name in the request's language (its id if
// the catalogue does not know it).
func (rq *req) ScenarioName(id string) string {
	n, ok := rq.scenarioNames()[id]
	if !ok {
		return id
	}
	if rq.Lang == "en" && n[1] != "" {
		return n[1]
	}
	if n[0] != "" {
		return n[0]
	}
	return id
}

// memoText picks the person's half of a bilingual memo ("english / 中文").
func memoText(lang, memo string) string {
	en, zh, ok := strings.Cut(memo, " / ")
	if !ok {
		return memo
	}
	if lang == "en" {
		return strings.TrimSpace(en)
	}
	return strings.TrimSpace(zh)
}

// ReasonText is the plain text of a decline reason code in the request's
// language; an unknown code is shown as it is.
func (rq *req) ReasonText(code string) string { return reasonText(rq.Lang, code) }

func reasonText(lang, code string) string {
	if code == "" {
		return ""
	}
	if m, ok := messages["reason."+code]; ok {
		if lang == "en" {
			return m[1]
		}
		return m[0]
	}
	e := apperr.New(apperr.Code(code))
	if code != string(apperr.Internal) && e.Message == apperr.New(apperr.Internal).Message {
		return code
	}
	en, zh := e.Text()
	if lang == "en" {
		return en
	}
	return zh
}

// groupDigits writes n with a comma every three digits: 100000 → 100,000.
func groupDigits(n int64) string {
	s := strings.TrimPrefix(itoa(n), "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// yuanGrouped formats fen as yuan with thousands separators for reading:
// 10000000 → "100,000.00", -5 → "-0.05". (yuan, without separators,
// stays for form values and exports that programs read.)
func yuanGrouped(fen int64) string {
	sign := ""
	if fen < 0 {
		sign, fen = "-", -fen
	}
	return sign + groupDigits(fen/100) + "." + pad2(fen%100)
}

// money is "¥100,000.00" (a minus sign before the ¥ when negative).
func money(fen int64) string {
	if fen < 0 {
		return "−¥" + yuanGrouped(-fen)
	}
	return "¥" + yuanGrouped(fen)
}

// signedMoney shows a movement with its direction: −¥2.00, +¥150.00.
func signedMoney(fen int64) string {
	if fen < 0 {
		return "−¥" + yuanGrouped(-fen)
	}
	return "+¥" + yuanGrouped(fen)
}

func pad2(n int64) string {
	if n < 10 {
		return "0" + itoa(n)
	}
	return itoa(n)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
