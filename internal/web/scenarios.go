package web

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/catalog"
)

// Scenario rules in the console (hr_admin): the fare, the concessions, who
// is eligible, what the provider may see, and whether the scenario is
// enabled. The form starts from the stored scenario and replaces only the
// fields it shows; catalog.UpdateScenario validates and guards with the
// version the form was drawn from, so two people editing at once do not
// overwrite each other silently. A validation error is shown in plain
// words naming the field as the form labels it. Every change is audited
// with the scenario as saved.

type scenarioList struct {
	Items     []catalog.Item
	Scenarios map[int][]catalog.Scenario
}

func (w *Web) consoleScenarios(rq *req) error {
	ctx := rq.r.Context()
	items, err := w.d.Catalog.Items(ctx)
	if err != nil {
		return err
	}
	all, err := w.d.Catalog.Scenarios(ctx, 0)
	if err != nil {
		return err
	}
	d := scenarioList{Items: items, Scenarios: map[int][]catalog.Scenario{}}
	for _, s := range all {
		d.Scenarios[s.Item] = append(d.Scenarios[s.Item], s)
	}
	return rq.render(200, "c_scenarios.html", "c.scenarios.title", d)
}

type scenarioForm struct {
	S          catalog.Scenario
	Fields     []catalog.FieldInfo
	Categories []string
	// Concessions has the scenario's concessions plus one empty row.
	Concessions []catalog.Concession
	// Raw keeps what was typed in the amount and number boxes after an error.
	Raw map[string]string
}

func (f scenarioForm) HasCategory(c string) bool {
	return slices.Contains(f.S.Eligibility.Categories, c)
}
func (f scenarioForm) HasField(n string) bool { return slices.Contains(f.S.ViewFields, n) }

// Num shows a whole-number box (an age): what was typed, after an error.
func (f scenarioForm) Num(name string, n int) string {
	if v, ok := f.Raw[name]; ok {
		return v
	}
	if n == 0 {
		return ""
	}
	return strconv.Itoa(n)
}

// Amount shows a fen amount as yuan for a form box (or what was typed).
func (f scenarioForm) Amount(name string, fen int64) string {
	if v, ok := f.Raw[name]; ok {
		return v
	}
	if fen == 0 {
		return ""
	}
	return yuan(fen)
}

func newScenarioForm(s catalog.Scenario) scenarioForm {
	f := scenarioForm{S: s, Fields: catalog.Fields(), Categories: catalog.Categories, Raw: map[string]string{}}
	f.Concessions = append(slices.Clone(s.Concessions), catalog.Concession{PayPercent: 100})
	return f
}

func (w *Web) consoleScenario(rq *req) error {
	s, err := w.d.Catalog.Scenario(rq.r.Context(), rq.r.PathValue("id"))
	if err != nil {
		return err
	}
	return rq.render(200, "c_scenario.html", "c.scenario.title", newScenarioForm(s))
}

// fieldLabels name the form's fields in plain words for error messages.
var fieldLabels = map[string][2]string{
	"name_zh":              {"中文名称", "Chinese name"},
	"name_en":              {"英文名称", "English name"},
	"default_amount_fen":   {"票价/金额", "Fare / amount"},
	"amount_from_terminal": {"金额由终端提供", "Amount from the terminal"},
	"max_amount_fen":       {"终端金额上限", "Maximum terminal amount"},
	"credit_limit_fen":     {"先乘后付额度", "Ride-first credit"},
	"pin_above_fen":        {"免密额度", "No-PIN limit"},
	"require_pin":          {"需要密码", "Ask for the PIN"},
	"offline_allowed":      {"允许脱机", "Offline allowed"},
	"eligibility":          {"适用人群", "Who may use it"},
	"view_fields":          {"服务商可见信息", "What the provider sees"},
	"concessions":          {"优惠", "Concessions"},
	"min_age":              {"最小年龄", "minimum age"},
	"max_age":              {"最大年龄", "maximum age"},
	"require_any_flag":     {"须具备的标记", "required flags"},
	"categories":           {"人员类别", "categories"},
	"any_flag":             {"标记", "flags"},
	"pay_percent":          {"付费比例", "pay percent"},
	"id":                   {"标识", "id"},
}

var fieldPath = regexp.MustCompile(`^([a-z_]+)(?:\[(\d+)\])?(?:\.([a-z_]+))?$`)

// fieldLabel turns a validation path such as "concessions[1].pay_percent"
// into the form's words ("优惠 2 · 付费比例").
func (rq *req) fieldLabel(path string) string {
	m := fieldPath.FindStringSubmatch(path)
	if m == nil {
		return path
	}
	word := func(k string) string {
		if l, ok := fieldLabels[k]; ok {
			return rq.Msg(l[1], l[0])
		}
		return k
	}
	out := word(m[1])
	if m[2] != "" {
		n, _ := strconv.Atoi(m[2])
		if m[1] != "view_fields" {
			out += " " + strconv.Itoa(n+1)
		}
	}
	if m[3] != "" {
		out += " · " + word(m[3])
	}
	return out
}

func (w *Web) consoleScenarioSave(rq *req) error {
	ctx := rq.r.Context()
	cur, err := w.d.Catalog.Scenario(ctx, rq.r.PathValue("id"))
	if err != nil {
		return err
	}
	rq.r.ParseForm()
	s, raw, err := scenarioFromForm(cur, rq.r.PostForm)
	formErr := err // its messages name the form's boxes already
	if err == nil {
		var out catalog.Scenario
		if out, err = w.d.Catalog.UpdateScenario(ctx, s); err == nil {
			b, _ := json.Marshal(out)
			if len(b) > 4000 {
				b = b[:4000]
			}
			w.d.Auth.Audit(ctx, rq.S.P, "update_scenario", out.ID, string(b))
			return redirect("/console/scenarios/" + out.ID + "?m=scenario_saved")
		}
	}
	f := newScenarioForm(s)
	f.Raw = raw
	e := apperr.As(err)
	if formErr == nil && e.Field != "" && e.Code == apperr.ValidationFailed {
		en, zh := e.Text()
		label := rq.fieldLabel(e.Field)
		err = apperr.Newf(apperr.ValidationFailed, label+": "+en, label+"："+zh)
	}
	return rq.renderWithError(err, "c_scenario.html", "c.scenario.title", f)
}

// scenarioFromForm applies the form to the stored scenario. It returns the
// amount boxes as typed (to show them again after an error).
func scenarioFromForm(cur catalog.Scenario, f map[string][]string) (catalog.Scenario, map[string]string, error) {
	get := func(k string) string {
		if v := f[k]; len(v) > 0 {
			return strings.TrimSpace(v[0])
		}
		return ""
	}
	on := func(k string) bool { return get(k) != "" }
	raw := map[string]string{}
	s := cur.Clone()
	var err error
	setErr := func(e error) {
		if err == nil {
			err = e
		}
	}
	money := func(name string) int64 {
		v := get(name)
		raw[name] = v
		if v == "" {
			return 0
		}
		fen, e := parseYuan(v)
		if e != nil {
			l := fieldLabels[name+"_fen"]
			en, zh := apperr.As(e).Text()
			setErr(apperr.Invalid(name, l[1]+": "+en, l[0]+"："+zh))
		}
		return fen
	}
	number := func(name, label, labelZh string) int {
		v := get(name)
		raw[name] = v
		if v == "" {
			return 0
		}
		n, e := strconv.Atoi(v)
		if e != nil {
			setErr(apperr.Invalid(name, label+": write a whole number", labelZh+"：请填写整数"))
		}
		return n
	}
	list := func(name string) []string {
		var out []string
		for _, p := range strings.FieldsFunc(get(name), func(r rune) bool { return r == ',' || r == ' ' || r == '，' || r == '、' }) {
			out = append(out, p)
		}
		return out
	}
	if v, e := strconv.ParseInt(get("version"), 10, 64); e == nil {
		s.Version = v
	} else {
		setErr(apperr.Invalid("version", "the form is out of date; reload the page", "表单已过期，请刷新页面"))
	}
	s.NameZh, s.NameEn = get("name_zh"), get("name_en")
	s.DefaultAmountFen = money("default_amount")
	s.AmountFromTerminal = on("amount_from_terminal")
	s.MaxAmountFen = money("max_amount")
	s.CreditLimitFen = money("credit_limit")
	s.RequirePIN = on("require_pin")
	s.PINAboveFen = money("pin_above")
	s.OfflineAllowed = on("offline_allowed")
	s.LocalOnly = on("local_only")
	s.Enabled = on("enabled")
	s.Eligibility = catalog.Eligibility{Categories: f["category"],
		MinAge:         number("min_age", "Minimum age", "最小年龄"),
		MaxAge:         number("max_age", "Maximum age", "最大年龄"),
		RequireAnyFlag: list("require_any_flag")}
	s.ViewFields = f["view_field"]
	s.Concessions = nil
	for i := 0; i < catalog.MaxConcessions+1; i++ {
		p := fmt.Sprintf("c%d_", i)
		if _, ok := f[p+"id"]; !ok {
			break
		}
		id := get(p + "id")
		if id == "" {
			continue // an empty row (or one cleared to delete it)
		}
		lbl, lblZh := fmt.Sprintf("Concession %d", i+1), fmt.Sprintf("优惠 %d", i+1)
		pay := 100
		if get(p+"pay") != "" {
			pay = number(p+"pay", lbl+" pay percent", lblZh+" 付费比例")
		}
		s.Concessions = append(s.Concessions, catalog.Concession{ID: id, NameZh: get(p + "name_zh"), NameEn: get(p + "name_en"),
			MinAge: number(p+"min_age", lbl+" minimum age", lblZh+" 最小年龄"), MaxAge: number(p+"max_age", lbl+" maximum age", lblZh+" 最大年龄"),
			AnyFlag: list(p + "flags"), PayPercent: pay})
	}
	return s, raw, err
}
