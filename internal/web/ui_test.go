package web_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// The review of the pages in both languages: machine names (transfer
// kinds, roles, scenario ids, reason codes) are shown as words, money as
// ¥ with a sign, and the Chinese pages hold no stray English.

func (b *browser) residentLogin(card, pin string) {
	b.t.Helper()
	tok := b.csrf("/r/login")
	st, body, _ := b.do("POST", "/r/login", url.Values{"csrf": {tok}, "card_number": {card}, "pin": {pin}})
	if st != http.StatusSeeOther {
		b.t.Fatalf("resident sign-in: %d %.400s", st, body)
	}
}

func mustContain(t *testing.T, what, body string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(body, w) {
			t.Fatalf("%s lacks %q:\n%.3000s", what, w, body)
		}
	}
}

func mustNotContain(t *testing.T, what, body string, bad ...string) {
	t.Helper()
	for _, w := range bad {
		if strings.Contains(body, w) {
			t.Fatalf("%s shows %q:\n%.3000s", what, w, body)
		}
	}
}

// contentOf is the page's <main> (without the language switch and nav).
func contentOf(body string) string {
	_, m, ok := strings.Cut(body, "<main>")
	if !ok {
		return body
	}
	m, _, _ = strings.Cut(m, "</main>")
	return m
}

func TestPagesSpeakPlainly(t *testing.T) {
	t.Parallel()
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 3})
	ctx := t.Context()
	res := tn.Demo.Residents[0]
	rid := residentID(t, tn, res.CardNumber)
	wallet, _, err := tn.Ledger.OpenResidentAccounts(ctx, rid)
	if err != nil {
		t.Fatal(err)
	}
	bus, err := tn.Catalog.Scenario(ctx, "transit.bus")
	if err != nil {
		t.Fatal(err)
	}
	prov := tn.Demo.Terminals[0].Provider
	if _, err := tn.Ledger.Transfer(ctx, ledger.TransferRequest{Key: "ui-fare", Debit: wallet, Credit: ledger.ReceivableID(prov), Amount: 200,
		Kind: "scan_charge", Meta: map[string]string{"scenario": "transit.bus", "terminal": "t1"}}); err != nil {
		t.Fatal(err)
	}

	t.Run("the resident statement names kinds and scenarios and signs money", func(t *testing.T) {
		b := newBrowser(t, tn.URL)
		b.residentLogin(res.CardNumber, res.PIN)
		_, body, _ := b.do("GET", "/r/statement", nil)
		list := body[strings.Index(body, `id="statement"`):]
		mustContain(t, "statement", list, "扫码消费", "充值", "−¥2.00", "&#43;¥200.00", bus.NameZh) // html/template writes + as &#43;
		mustNotContain(t, "statement", list, "scan_charge", "topup", "transit.bus", ">-2.00")
		_, body, _ = b.do("GET", "/r/statement?account=medical", nil)
		mustContain(t, "medical statement", body, "医保个人账户划入", "&#43;¥500.00")
		b.do("GET", "/lang?l=en", nil)
		_, body, _ = b.do("GET", "/r/statement", nil)
		mustContain(t, "English statement", body, "payment", "top-up", "−¥2.00", bus.NameEn)
	})

	t.Run("the ledger and takings pages and exports name kinds", func(t *testing.T) {
		b := newBrowser(t, tn.URL).staffAs(tn, "finance")
		_, body, _ := b.do("GET", "/console/ledger?account="+url.QueryEscape(wallet), nil)
		table := body[strings.Index(body, `id="lines"`):]
		mustContain(t, "ledger", table, "扫码消费", "充值", bus.NameZh)
		mustNotContain(t, "ledger", table, "scan_charge", "topup", "transit.bus")
		_, csvText, _ := b.do("GET", "/console/ledger/export?format=csv&account="+url.QueryEscape(wallet), nil)
		mustContain(t, "ledger export", csvText, "扫码消费", "充值")
		mustNotContain(t, "ledger export", csvText, "scan_charge")
		_, body, _ = b.do("GET", "/console/takings?provider="+prov, nil)
		mustContain(t, "takings", body[strings.Index(body, `id="lines"`):], "扫码消费", bus.NameZh)
		_, csvText, _ = b.do("GET", "/console/takings/export?format=csv&provider="+prov, nil)
		mustContain(t, "settlement export", csvText, "扫码消费")
	})

	t.Run("console pages: roles, sex, card history, kinds and headers in Chinese", func(t *testing.T) {
		hr := newBrowser(t, tn.URL).staffAs(tn, "hr_admin")
		_, body, _ := hr.do("GET", "/console/", nil)
		mustContain(t, "home", body, `id="role">人社管理员<`, `class="who">人社管理员<`)
		_, body, _ = hr.do("GET", "/console/?m=foo", nil)
		mustNotContain(t, "home with an unknown message", body, "flash.foo", `id="flash"`)
		_, body, _ = hr.do("GET", "/console/residents/"+rid, nil)
		mustContain(t, "resident", body, "发卡", "正常")
		if !strings.Contains(body, "性别: 男") && !strings.Contains(body, "性别: 女") {
			t.Fatalf("sex not in words: %.2000s", contentOf(body))
		}
		mustNotContain(t, "resident", body, "<td>issued</td>", "→ active")
		_, body, _ = hr.do("GET", "/console/scenarios", nil)
		mustContain(t, "scenarios", body, "<th>编号</th><th>名称</th>", "<td>收费</td>", "<td>身份核验</td>")
		mustNotContain(t, "scenarios", body, "<td>charge</td>", "<th>ID</th>", "<th>姓名</th>")
		_, body, _ = hr.do("GET", "/console/audit", nil)
		mustContain(t, "audit", body, "管理台登录", "console_sign_in", "人社管理员")
		op := newBrowser(t, tn.URL).staffAs(tn, "operator")
		_, body, _ = op.do("GET", "/console/terminals", nil)
		mustContain(t, "terminals", body, "<td>公共交通</td>", bus.NameZh, "<th>名称</th>", "<th>编号</th>")
		mustNotContain(t, "terminals", body, "<td>transit</td>", "<th>姓名</th>", "<th>ID</th>")
	})

	t.Run("the gate names scenarios, explains declines and labels the view", func(t *testing.T) {
		b := newBrowser(t, tn.URL).staffAs(tn, "operator")
		var busKey, exitKey string
		for _, term := range tn.Demo.Terminals {
			switch term.Scenario {
			case "transit.bus":
				busKey = term.ID + "/" + term.Scenario
			case "transit.metro_exit":
				exitKey = term.ID + "/" + term.Scenario
			}
		}
		if busKey == "" || exitKey == "" {
			t.Fatalf("demo terminals: %+v", tn.Demo.Terminals)
		}
		_, body, _ := b.do("GET", "/gate", nil)
		opt := body[strings.Index(body, `value="`+exitKey+`"`):]
		opt = opt[:strings.Index(opt, "</option>")]
		if strings.Contains(opt, ">transit.") || strings.Count(opt, "郑州地铁") > 1 || !strings.Contains(opt, "轨道交通出站扣费") {
			t.Fatalf("the metro exit option: %s", opt)
		}
		scan := func(key string, form url.Values) string {
			form.Set("csrf", b.csrf("/gate"))
			form.Set("terminal", key)
			_, body, _ := b.do("POST", "/gate", form)
			return contentOf(body)
		}
		body = scan(exitKey, url.Values{"card_number": {tn.Demo.Residents[1].CardNumber}})
		mustContain(t, "a metro exit without an amount", body, "金额（元）")
		mustNotContain(t, "a metro exit without an amount", body, "（分）")
		body = scan(busKey, url.Values{"code": {"garbage"}})
		mustContain(t, "a malformed code", body, `data-reason="malformed"`, `<span id="reason">`)
		if r := body[strings.Index(body, `<span id="reason">`):]; strings.Contains(r[:strings.Index(r, "</span>")], "malformed") {
			t.Fatalf("the reason shows its code: %s", r)
		}
		body = scan(busKey, url.Values{"card_number": {tn.Demo.Residents[2].CardNumber}})
		view := body[strings.Index(body, `id="view"`):]
		mustNotContain(t, "the view", view, "<th>charged_fen</th>", "<th>decision</th>", "permanent_resident</td>", "<td>200</td>")
		mustContain(t, "the view", view, "受理结果")
	})

	t.Run("the dashboard names decline reasons", func(t *testing.T) {
		b := newBrowser(t, tn.URL).staffAs(tn, "operator")
		_, svg, _ := b.do("GET", "/console/charts/decisions.svg", nil)
		mustNotContain(t, "the decisions chart", svg, ">malformed<")
		mustContain(t, "the decisions chart", svg, "码格式错误")
	})

	t.Run("a lost card at sign-in says what to do next", func(t *testing.T) {
		lost := tn.Demo.Residents[1]
		if _, err := tn.Residents.ReportLost(ctx, lost.CardNumber, "test"); err != nil {
			t.Fatal(err)
		}
		b := newBrowser(t, tn.URL)
		tok := b.csrf("/r/login")
		_, body, _ := b.do("POST", "/r/login", url.Values{"csrf": {tok}, "card_number": {lost.CardNumber}, "pin": {lost.PIN}})
		mustContain(t, "sign-in with a lost card", body, "该卡已挂失。找回后请携带身份证件到服务窗口解挂，或办理补卡。")
		b.do("GET", "/lang?l=en", nil)
		tok = b.csrf("/r/login")
		_, body, _ = b.do("POST", "/r/login", url.Values{"csrf": {tok}, "card_number": {lost.CardNumber}, "pin": {lost.PIN}})
		mustContain(t, "English sign-in with a lost card", body, "reported lost", "service counter")
	})

	t.Run("the bulk enrolment sample box is closed before the file input", func(t *testing.T) {
		_, body, _ := newBrowser(t, tn.URL).staffAs(tn, "hr_admin").do("GET", "/console/enrol/csv", nil)
		for _, pre := range strings.Split(body, `<pre class="sample">`)[1:] {
			if i, j := strings.Index(pre, "</pre>"), strings.Index(pre, `id="csv-file"`); i < 0 || (j >= 0 && j < i) {
				t.Fatalf("an unclosed sample: %.600s", pre)
			}
		}
		mustContain(t, "bulk enrolment", body, "姓名,证件号码,人员类别", "GBK")
	})

	t.Run("payout lists in yuan; a failed funding keeps the amount", func(t *testing.T) {
		if _, err := tn.Subsidies.CreateProgramme(ctx, "yuan-2026", "元名单"); err != nil {
			t.Fatal(err)
		}
		if _, err := tn.Subsidies.Fund(ctx, "yuan-2026", "fund-yuan", 100_000); err != nil {
			t.Fatal(err)
		}
		hr := newBrowser(t, tn.URL).staffAs(tn, "hr_admin")
		_, page, _ := hr.do("GET", "/console/subsidies", nil)
		mustContain(t, "subsidies page", page, "金额（元", "150.00", "id_or_card,amount_yuan,reference\n1101")
		// 金额（分） is named only as the header that switches to fen.
		mustNotContain(t, "subsidies page", page, "证件号码或卡号, 金额（分）", "amount_fen,reference\n1101")
		r := tn.Demo.Residents
		snap, report := payList(t, hr, "yuan-2026", "证件号码或卡号,金额,流水号\n"+r[0].CardNumber+",150.00,Y-1\n"+r[2].CardNumber+",60元,Y-2\n"+r[2].CardNumber+",abc,Y-3\n")
		if snap.Paid != 2 || snap.Refused != 1 || snap.PaidFen != 21000 {
			t.Fatalf("a list in yuan: %+v\n%.2000s", snap, report)
		}
		mustContain(t, "payout report", report, "¥210.00", "元金额")
		snap, _ = payList(t, hr, "yuan-2026", "id_or_card,amount_fen,reference\n"+r[0].CardNumber+",100,F-1\n")
		if snap.Paid != 1 || snap.PaidFen != 100 {
			t.Fatalf("a list in fen under an amount_fen header: %+v", snap)
		}

		fin := newBrowser(t, tn.URL).staffAs(tn, "finance")
		forms := fundForms(t, fin)
		var action string
		for a := range forms {
			if strings.Contains(a, "yuan-2026") {
				action = a
			}
		}
		_, body, _ := fin.do("POST", action, url.Values{"csrf": {fin.csrf("/console/subsidies")}, "key": {forms[action]}, "amount": {"12a"}})
		mustContain(t, "a failed funding", body, `value="12a"`, `id="error"`)
	})

	t.Run("unknown paths get the site's own 404 page; the API still answers", func(t *testing.T) {
		b := newBrowser(t, tn.URL)
		for _, p := range []string{"/nope", "/favicon.ico", "/r/nope", "/console/nope"} {
			st, body, _ := b.do("GET", p, nil)
			if st != http.StatusNotFound || !strings.Contains(body, "页面不存在") || strings.Contains(body, "404 page not found") {
				t.Fatalf("%s: %d %.300s", p, st, body)
			}
		}
		if st, _, _ := b.do("GET", "/healthz", nil); st != 200 {
			t.Fatalf("/healthz: %d", st)
		}
		if st, body, h := b.do("GET", "/v1/nope", nil); strings.Contains(body, "页面不存在") || strings.HasPrefix(h.Get("Content-Type"), "text/html") {
			t.Fatalf("/v1/nope answered by the site: %d %.300s", st, body)
		}
	})

	t.Run("a failed scenario save keeps the typed minimum age; placeholders have labels", func(t *testing.T) {
		hr := newBrowser(t, tn.URL).staffAs(tn, "hr_admin")
		v := scenarioValues(bus)
		v.Set("csrf", hr.csrf("/console/scenarios/transit.bus"))
		v.Set("min_age", "12x")
		st, body, _ := hr.do("POST", "/console/scenarios/transit.bus", v)
		if st == http.StatusSeeOther {
			t.Fatal("a bad minimum age saved")
		}
		mustContain(t, "the scenario form after an error", body, `name="min_age" inputmode="numeric" value="12x"`)
		_, body, _ = hr.do("GET", "/console/residents/"+rid, nil)
		mustContain(t, "the card's new-PIN box", body, `aria-label="新密码"`)
		rb := newBrowser(t, tn.URL)
		rb.residentLogin(tn.Demo.Residents[2].CardNumber, tn.Demo.Residents[2].PIN)
		_, body, _ = rb.do("GET", "/r/", nil)
		if strings.Contains(body, `id="code-text"`) {
			mustContain(t, "the resident's code box", body, `id="code-text" readonly rows="3" aria-label="`)
		}
	})
}
