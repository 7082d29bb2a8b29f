package web_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/catalog"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/web"
)

// eachBackend starts a demo node on every storage backend (SQLite, and
// PostgreSQL unless YIKATONG_BACKENDS says otherwise) and runs fn on it.
func eachBackend(t *testing.T, residents int, fn func(t *testing.T, tn *nodetest.Node)) {
	t.Parallel()
	for _, b := range storetest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			o := nodetest.Options{Demo: true, DemoResidents: residents}
			if b.Name != "sqlite" {
				o.DB = b.DSN(t)
			}
			fn(t, nodetest.Start(t, o))
		})
	}
}

// upload posts a multipart form with one file.
func (b *browser) upload(path string, fields map[string]string, file, name string) (int, string, http.Header) {
	b.t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for k, v := range fields {
		mw.WriteField(k, v)
	}
	fw, _ := mw.CreateFormFile("file", name)
	fw.Write([]byte(file))
	mw.Close()
	req, _ := http.NewRequest("POST", b.base+path, &buf)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out bytes.Buffer
	out.ReadFrom(resp.Body)
	return resp.StatusCode, out.String(), resp.Header
}

func (b *browser) staffAs(tn *nodetest.Node, role string) *browser {
	s := tn.Demo.Staff[role]
	b.staffLogin(s.User, s.Password)
	return b
}

func audited(t *testing.T, tn *nodetest.Node, action, subject string) []auth.AuditEntry {
	t.Helper()
	log, err := tn.Auth.AuditLog(t.Context(), subject, 0, 500)
	if err != nil {
		t.Fatal(err)
	}
	var out []auth.AuditEntry
	for _, e := range log {
		if e.Action == action {
			out = append(out, e)
		}
	}
	return out
}

func balance(t *testing.T, tn *nodetest.Node, acct string) int64 {
	t.Helper()
	a, err := tn.Ledger.Balance(t.Context(), acct)
	if err != nil {
		t.Fatal(err)
	}
	return a.Balance
}

func ledgerOK(t *testing.T, tn *nodetest.Node) {
	t.Helper()
	c, err := tn.Ledger.Check(t.Context())
	if err != nil || !c.OK() {
		t.Fatalf("ledger check: %+v %v", c, err)
	}
}

var fundKeyRe = regexp.MustCompile(`name="key" value="([^"]+)"`)

type paySnap struct {
	Total, Done                int
	Finished                   bool
	Paid, AlreadyPaid, Refused int
	PaidFen                    int64 `json:"paid_fen"`
}

// payList uploads a payout list and waits for the job to finish.
func payList(t *testing.T, b *browser, programme, list string) (paySnap, string) {
	t.Helper()
	st, body, h := b.upload("/console/subsidies/payouts", map[string]string{"csrf": b.csrf("/console/subsidies"), "programme": programme}, list, "list.csv")
	loc := h.Get("Location")
	if st != http.StatusSeeOther || !strings.HasPrefix(loc, "/console/subsidies/jobs/") {
		t.Fatalf("upload: %d %s %.500s", st, loc, body)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, js, _ := b.do("GET", loc+"/progress", nil)
		var s struct {
			paySnap
			AlreadyPaid int `json:"already_paid"`
		}
		if err := json.Unmarshal([]byte(js), &s); err != nil {
			t.Fatalf("progress %q: %v", js, err)
		}
		s.paySnap.AlreadyPaid = s.AlreadyPaid
		if s.Finished {
			_, page, _ := b.do("GET", loc, nil)
			return s.paySnap, page
		}
		if time.Now().After(deadline) {
			t.Fatalf("payout job not finished: %+v", s)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSubsidies: finance creates and funds a programme (a double submit of
// the funding form funds once), hr_admin pays a list with good and bad
// lines spread over several chunks, and the same list again pays nothing.
func TestSubsidies(t *testing.T) {
	eachBackend(t, 6, func(t *testing.T, tn *nodetest.Node) {
		ctx := t.Context()
		fin := newBrowser(t, tn.URL).staffAs(tn, "finance")
		tok := fin.csrf("/console/subsidies")
		st, body, _ := fin.do("POST", "/console/subsidies", url.Values{"csrf": {tok}, "id": {"heating-2026"}, "label": {"冬季取暖补贴"}})
		if st != http.StatusSeeOther {
			t.Fatalf("create programme: %d %.400s", st, body)
		}
		// A bad id is refused in plain words.
		st, body, _ = fin.do("POST", "/console/subsidies", url.Values{"csrf": {tok}, "id": {"a b"}, "label": {"x"}})
		if st != http.StatusBadRequest && st != http.StatusUnprocessableEntity || !strings.Contains(body, "补贴项目编号") {
			t.Fatalf("bad id: %d %.400s", st, body)
		}
		_, page, _ := fin.do("GET", "/console/subsidies", nil)
		key := fundKeyRe.FindStringSubmatch(page)[1]
		for range 2 { // the same form submitted twice funds once
			st, body, _ = fin.do("POST", "/console/subsidies/heating-2026/fund", url.Values{"csrf": {tok}, "key": {key}, "amount": {"500.00"}})
			if st != http.StatusSeeOther {
				t.Fatalf("fund: %d %.400s", st, body)
			}
		}
		if got := balance(t, tn, ledger.ProgrammeID("heating-2026")); got != 50000 {
			t.Fatalf("programme balance %d, want 50000 (funded once)", got)
		}
		if len(audited(t, tn, "create_programme", "heating-2026")) != 1 || len(audited(t, tn, "fund_programme", "heating-2026")) != 1 {
			t.Fatal("programme creation and funding not audited once each")
		}
		// Finance may not upload lists; a provider may not see programmes.
		if st, _, _ := fin.upload("/console/subsidies/payouts", map[string]string{"csrf": tok, "programme": "heating-2026"}, "x,1,r", "l.csv"); st != http.StatusForbidden {
			t.Fatalf("finance uploading a list: %d", st)
		}

		hr := newBrowser(t, tn.URL).staffAs(tn, "hr_admin")
		r0, r1, r2 := tn.Demo.Residents[0], tn.Demo.Residents[1], tn.Demo.Residents[2]
		w0, _, _ := tn.Ledger.OpenResidentAccounts(ctx, residentID(t, tn, r0.CardNumber))
		w1, _, _ := tn.Ledger.OpenResidentAccounts(ctx, residentID(t, tn, r1.CardNumber))
		before0, before1 := balance(t, tn, w0), balance(t, tn, w1)
		var l strings.Builder
		l.WriteString("id_or_card,amount_fen,reference\n")
		fmt.Fprintf(&l, "%s,15000,R-1\n", r0.IDNumber)
		for i := range 300 { // unknown people: the list spans several chunks
			fmt.Fprintf(&l, "NOBODY%04d,100,U-%d\n", i, i)
		}
		fmt.Fprintf(&l, "%s,20000,R-2\n", r1.CardNumber) // line 303
		fmt.Fprintf(&l, "%s,abc,R-3\n", r2.CardNumber)
		fmt.Fprintf(&l, "%s,100\n", r2.CardNumber)
		fmt.Fprintf(&l, "%s,99999,R-4\n", r2.CardNumber) // more than is left
		snap, report := payList(t, hr, "heating-2026", l.String())
		if snap.Total != 305 || snap.Paid != 2 || snap.AlreadyPaid != 0 || snap.Refused != 303 || snap.PaidFen != 35000 {
			t.Fatalf("first upload: %+v", snap)
		}
		if got := balance(t, tn, w0) - before0; got != 15000 {
			t.Fatalf("resident 0 got %d fen, want 15000", got)
		}
		if got := balance(t, tn, w1) - before1; got != 20000 {
			t.Fatalf("resident 1 got %d fen, want 20000", got)
		}
		if strings.Contains(report, r0.IDNumber) || strings.Contains(report, r1.CardNumber) {
			t.Fatal("the report shows a full ID or card number")
		}
		for _, want := range []string{"programme_exhausted", "bad_amount", "malformed_line", "unknown_person", "项目资金不足"} {
			if !strings.Contains(report, want) {
				t.Fatalf("report lacks %q", want)
			}
		}
		// Line numbers are the file's, across chunks: R-2 is on line 303.
		if !regexp.MustCompile(`<tr class="row-paid"><td>303</td>`).MatchString(report) {
			t.Fatalf("paid line 303 not reported as such: %.2000s", report[strings.Index(report, "job-rows"):])
		}
		// The same list again pays nothing twice.
		snap, _ = payList(t, hr, "heating-2026", l.String())
		if snap.Paid != 0 || snap.AlreadyPaid != 2 || snap.PaidFen != 0 {
			t.Fatalf("second upload: %+v", snap)
		}
		if got := balance(t, tn, w0) - before0; got != 15000 {
			t.Fatalf("after the second upload resident 0 got %d fen in all, want 15000", got)
		}
		if got := balance(t, tn, ledger.ProgrammeID("heating-2026")); got != 50000-35000 {
			t.Fatalf("programme balance %d", got)
		}
		ledgerOK(t, tn)
		if len(audited(t, tn, "upload_payouts", "heating-2026")) != 2 || len(audited(t, tn, "payouts_done", "heating-2026")) != 2 {
			t.Fatal("uploads not audited")
		}
		// The dashboard shows the programme by name with budget and paid.
		_, dash, _ := fin.do("GET", "/console/dashboard", nil)
		if !strings.Contains(dash, "冬季取暖补贴") || !strings.Contains(dash, "¥500.00") || !strings.Contains(dash, "¥350.00") {
			t.Fatalf("dashboard lacks the programme's figures: %s", dash[strings.Index(dash, "<div class=\"cols\">"):])
		}
	})
}

func residentID(t *testing.T, tn *nodetest.Node, card string) string {
	t.Helper()
	c, err := tn.Residents.Card(t.Context(), card)
	if err != nil {
		t.Fatal(err)
	}
	return c.ResidentID
}

var tokenRe = regexp.MustCompile(`id="new-terminal-token">([^<]+)<`)

// TestTerminals: the operator onboards a provider and a terminal (the
// token shown once works), a provider's staff see only their own
// terminals and may disable only those, and disabling kills the token.
func TestTerminals(t *testing.T) {
	eachBackend(t, 3, func(t *testing.T, tn *nodetest.Node) {
		ctx := t.Context()
		op := newBrowser(t, tn.URL).staffAs(tn, "operator")
		tok := op.csrf("/console/terminals")
		f := url.Values{"csrf": {tok}, "name": {"测试公交 Test Bus"}, "kind": {"transit"}, "scenario": {"transit.bus"}}
		if st, body, _ := op.do("POST", "/console/providers", f); st != http.StatusSeeOther {
			t.Fatalf("create provider: %d %.400s", st, body)
		}
		// No scenario ticked: refused in plain words.
		if st, body, _ := op.do("POST", "/console/providers", url.Values{"csrf": {tok}, "name": {"X"}, "kind": {"transit"}}); st == http.StatusSeeOther || !strings.Contains(body, "至少勾选") {
			t.Fatalf("provider without scenarios: %d %.300s", st, body)
		}
		var provID string
		provs, err := providersOf(tn)
		if err != nil {
			t.Fatal(err)
		}
		for id, name := range provs {
			if name == "测试公交 Test Bus" {
				provID = id
			}
		}
		if provID == "" {
			t.Fatal("provider not created")
		}
		st, page, _ := op.do("POST", "/console/terminals", url.Values{"csrf": {tok}, "provider": {provID}, "name": {"Gate 7"}})
		m := tokenRe.FindStringSubmatch(page)
		if st != 200 || m == nil {
			t.Fatalf("create terminal: %d %.500s", st, page)
		}
		termTok := m[1]
		p, err := tn.Auth.Authenticate(ctx, termTok)
		if err != nil || p.Role != auth.RoleTerminal || p.ProviderID != provID {
			t.Fatalf("the new terminal's token: %+v %v", p, err)
		}
		// Shown once: the list never shows it again, the audit log never has it.
		_, list, _ := op.do("GET", "/console/terminals", nil)
		if strings.Contains(list, termTok) || !strings.Contains(list, p.Subject) || !strings.Contains(list, "测试公交 Test Bus") {
			t.Fatal("terminal list: token shown again, or the terminal/provider missing")
		}
		for _, a := range []string{"create_provider", "create_terminal"} {
			es := audited(t, tn, a, "")
			if len(es) == 0 {
				t.Fatalf("%s not audited", a)
			}
			for _, e := range es {
				if strings.Contains(e.Detail, termTok) {
					t.Fatal("the token is in the audit log")
				}
			}
		}
		// Reissued by the operator (a replaced device): new credentials
		// shown once, with the number offline records continue after; the
		// old token is dead at once.
		st, page, _ = op.do("POST", "/console/terminals/"+p.Subject+"/reissue", url.Values{"csrf": {tok}})
		m = tokenRe.FindStringSubmatch(page)
		if st != 200 || m == nil || m[1] == termTok || !strings.Contains(page, "已重新签发") || !strings.Contains(page, `id="new-terminal-seq">0<`) {
			t.Fatalf("reissue: %d %.600s", st, page)
		}
		if _, err := tn.Auth.Authenticate(ctx, termTok); apperr.CodeOf(err) != apperr.Unauthorized {
			t.Fatalf("the token from before the reissue still works: %v", err)
		}
		termTok = m[1]
		if p2, err := tn.Auth.Authenticate(ctx, termTok); err != nil || p2.Subject != p.Subject {
			t.Fatalf("the reissued token: %+v %v", p2, err)
		}
		if len(audited(t, tn, "reissue_terminal", p.Subject)) != 1 {
			t.Fatal("reissue not audited")
		}
		// A provider's staff: own terminals only.
		if _, err := tn.Auth.CreateStaff(ctx, "testbus", "Test Bus clerk", auth.RoleProvider, "correct horse battery", provID); err != nil {
			t.Fatal(err)
		}
		pb := newBrowser(t, tn.URL)
		pb.staffLogin("testbus", "correct horse battery")
		_, own, _ := pb.do("GET", "/console/terminals", nil)
		other := tn.Demo.Terminals[0].ID
		if !strings.Contains(own, p.Subject) || strings.Contains(own, other) {
			t.Fatal("a provider sees other providers' terminals, or not its own")
		}
		ptok := pb.csrf("/console/terminals")
		if st, _, _ := pb.do("POST", "/console/terminals/"+other+"/disable", url.Values{"csrf": {ptok}}); st != http.StatusForbidden {
			t.Fatalf("a provider disabling another's terminal: %d", st)
		}
		if _, err := tn.Auth.Authenticate(ctx, tn.Demo.Terminals[0].Token); err != nil {
			t.Fatalf("the other provider's terminal was disabled: %v", err)
		}
		if st, _, _ := pb.do("POST", "/console/terminals/"+p.Subject+"/reissue", url.Values{"csrf": {ptok}}); st != http.StatusForbidden {
			t.Fatalf("a provider reissuing credentials: %d", st)
		}
		if _, err := tn.Auth.Authenticate(ctx, termTok); err != nil {
			t.Fatalf("a refused reissue killed the token: %v", err)
		}
		if st, _, _ := pb.do("POST", "/console/providers", url.Values{"csrf": {ptok}, "name": {"Y"}, "kind": {"transit"}, "scenario": {"transit.bus"}}); st != http.StatusForbidden {
			t.Fatalf("a provider onboarding providers: %d", st)
		}
		// Disabling the own terminal kills its token at once.
		if st, body, _ := pb.do("POST", "/console/terminals/"+p.Subject+"/disable", url.Values{"csrf": {ptok}}); st != http.StatusSeeOther {
			t.Fatalf("disable: %d %.300s", st, body)
		}
		if _, err := tn.Auth.Authenticate(ctx, termTok); apperr.CodeOf(err) != apperr.Unauthorized {
			t.Fatalf("a disabled terminal's token still works: %v", err)
		}
		if len(audited(t, tn, "disable_terminal", p.Subject)) != 1 {
			t.Fatal("disabling not audited")
		}
		// Takings: finance picks providers by name.
		fin := newBrowser(t, tn.URL).staffAs(tn, "finance")
		_, tk, _ := fin.do("GET", "/console/takings?provider="+provID, nil)
		if !strings.Contains(tk, `id="takings-name">测试公交 Test Bus<`) || !strings.Contains(tk, ">郑州公交集团 Zhengzhou Bus<") {
			t.Fatalf("takings page without provider names: %.3000s", tk)
		}
		// The operator disables the provider and lets it back in; its
		// own staff may do neither.
		if st, _, _ := pb.do("POST", "/console/providers/"+provID+"/disable", url.Values{"csrf": {ptok}}); st != http.StatusForbidden {
			t.Fatalf("a provider disabling itself: %d", st)
		}
		if st, body, _ := op.do("POST", "/console/providers/"+provID+"/disable", url.Values{"csrf": {tok}}); st != http.StatusSeeOther {
			t.Fatalf("disable provider: %d %.300s", st, body)
		}
		if _, _, err := tn.Auth.LoginStaff(ctx, "testbus", "correct horse battery", time.Hour); err == nil {
			t.Fatal("staff of a disabled provider signed in")
		}
		// Its terminals cannot be reissued while it is disabled: no button.
		if _, off, _ := op.do("GET", "/console/terminals", nil); strings.Contains(off, `/console/terminals/`+p.Subject+`/reissue"`) || !strings.Contains(off, `/console/providers/`+provID+`/enable"`) {
			t.Fatalf("terminals page with the provider disabled: %.3000s", off)
		}
		if st, body, _ := op.do("POST", "/console/providers/"+provID+"/enable", url.Values{"csrf": {tok}}); st != http.StatusSeeOther {
			t.Fatalf("enable provider: %d %.300s", st, body)
		}
		if _, _, err := tn.Auth.LoginStaff(ctx, "testbus", "correct horse battery", time.Hour); err != nil {
			t.Fatalf("staff of the re-enabled provider: %v", err)
		}
		_, after, _ := op.do("GET", "/console/terminals?m=provider_enabled", nil)
		if !strings.Contains(after, "须逐台重新签发凭据") || !strings.Contains(after, `action="/console/providers/`+provID+`/disable"`) {
			t.Fatalf("terminals page after the enable: %.3000s", after)
		}
		for _, a := range []string{"disable_provider", "enable_provider"} {
			if n := len(audited(t, tn, a, provID)); n != 1 {
				t.Fatalf("%s audited %d times", a, n)
			}
		}
	})
}

func providersOf(tn *nodetest.Node) (map[string]string, error) {
	m := map[string]string{}
	rows, err := tn.DB.R.QueryContext(context.Background(), `SELECT id, name FROM providers`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id, n string
		rows.Scan(&id, &n)
		m[id] = n
	}
	return m, rows.Err()
}

// disputeSetup returns the pages' service over tn and the first demo
// resident with their id, wallet and the provider their charges credit.
func disputeSetup(t *testing.T, tn *nodetest.Node) (w *web.Web, res node.DemoResident, rid, wallet, prov string) {
	t.Helper()
	w, err := web.New(web.Deps{DB: tn.DB, Auth: tn.Auth, Residents: tn.Residents, Catalog: tn.Catalog, Ledger: tn.Ledger, City: tn.City})
	if err != nil {
		t.Fatal(err)
	}
	res = tn.Demo.Residents[0]
	rid = residentID(t, tn, res.CardNumber)
	wallet, _, _ = tn.Ledger.OpenResidentAccounts(t.Context(), rid)
	return w, res, rid, wallet, ledger.ReceivableID(tn.Demo.Terminals[0].Provider)
}

// TestRefundDisputeOnce: refunding a dispute twice (and twice at once)
// refunds once; the books balance and the resident's balance is right.
func TestRefundDisputeOnce(t *testing.T) {
	eachBackend(t, 3, func(t *testing.T, tn *nodetest.Node) {
		ctx := t.Context()
		w, res, rid, wallet, prov := disputeSetup(t, tn)
		start, provStart := balance(t, tn, wallet), balance(t, tn, prov)
		charge := func(key string) ledger.Transfer {
			tr, err := tn.Ledger.Transfer(ctx, ledger.TransferRequest{Key: key, Debit: wallet, Credit: prov, Amount: 200, Kind: "charge"})
			if err != nil {
				t.Fatal(err)
			}
			return tr
		}
		c1, c2 := charge("t-1"), charge("t-2")
		d1, err := w.OpenDispute(ctx, rid, res.CardNumber, c1.ID, "I was not on that bus")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.OpenDispute(ctx, rid, res.CardNumber, c1.ID, "again"); apperr.CodeOf(err) != apperr.AlreadyExists {
			t.Fatalf("a second dispute of one charge: %v", err)
		}
		// Someone else's charge cannot be disputed, and is answered like
		// one that does not exist (ids cannot be probed).
		other := residentID(t, tn, tn.Demo.Residents[1].CardNumber)
		_, errOther := w.OpenDispute(ctx, other, tn.Demo.Residents[1].CardNumber, c2.ID, "not mine")
		_, errNone := w.OpenDispute(ctx, other, tn.Demo.Residents[1].CardNumber, "tr-99999999", "not mine")
		if apperr.CodeOf(errOther) != apperr.NotFound || errOther.Error() != errNone.Error() {
			t.Fatalf("disputing another's charge: %v; a charge that does not exist: %v", errOther, errNone)
		}
		staff := auth.Principal{Kind: auth.KindStaff, Subject: "fin-test", Role: auth.RoleFinance}
		var wg sync.WaitGroup
		var mu sync.Mutex
		ok, conflicts := 0, 0
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := w.RefundDispute(ctx, staff, d1.ID, "refund")
				mu.Lock()
				defer mu.Unlock()
				switch apperr.CodeOf(err) {
				case "":
					ok++
				case apperr.Conflict:
					conflicts++
				default:
					t.Errorf("refund: %v", err)
				}
			}()
		}
		wg.Wait()
		if _, err := w.RefundDispute(ctx, staff, d1.ID, "refund"); apperr.CodeOf(err) != apperr.Conflict {
			t.Fatalf("a later refund: %v", err)
		}
		// Concurrent clicks may each report the one refund (a click that
		// finds the refund under way finishes it idempotently) or be
		// refused; the money moves once (below).
		if ok < 1 || ok+conflicts != 3 {
			t.Fatalf("%d refunds succeeded and %d were refused", ok, conflicts)
		}
		if got := balance(t, tn, wallet); got != start-200 {
			t.Fatalf("wallet %d, want %d (two charges, one refunded)", got, start-200)
		}
		if got := balance(t, tn, prov); got != provStart+200 {
			t.Fatalf("provider %d, want %d", got, provStart+200)
		}
		var n int
		tn.DB.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM ledger_journal WHERE type = 'reversal' AND ref = $1`, refSeq(t, c1.ID)).Scan(&n)
		if n != 1 {
			t.Fatalf("%d reversals of the charge, want 1", n)
		}
		ledgerOK(t, tn)
		d, _ := w.Disputes(ctx, rid, "")
		if len(d) != 1 || d[0].Status != web.DisputeRefunded || d[0].RefundTransfer == "" {
			t.Fatalf("disputes %+v", d)
		}
		if len(audited(t, tn, "dispute_refund", d1.ID)) != 1 {
			t.Fatal("the refund is not audited exactly once")
		}
		// A rejected dispute cannot then be refunded.
		d2, _ := w.OpenDispute(ctx, rid, res.CardNumber, c2.ID, "wrong fare")
		if _, err := w.RejectDispute(ctx, staff, d2.ID, ""); apperr.CodeOf(err) != apperr.ValidationFailed {
			t.Fatalf("rejecting without a reason: %v", err)
		}
		if _, err := w.RejectDispute(ctx, staff, d2.ID, "the fare was right"); err != nil {
			t.Fatal(err)
		}
		if _, err := w.RefundDispute(ctx, staff, d2.ID, ""); apperr.CodeOf(err) != apperr.Conflict {
			t.Fatalf("refunding a rejected dispute: %v", err)
		}
		if got := balance(t, tn, wallet); got != start-200 {
			t.Fatalf("wallet %d after the rejection", got)
		}
	})
}

// TestRefundAndRejectAtOnce: a refund and a rejection of one dispute at
// the same moment end one way or the other, never "rejected" with the
// money refunded.
func TestRefundAndRejectAtOnce(t *testing.T) {
	eachBackend(t, 3, func(t *testing.T, tn *nodetest.Node) {
		ctx := t.Context()
		w, res, rid, wallet, prov := disputeSetup(t, tn)
		staff := auth.Principal{Kind: auth.KindStaff, Subject: "fin-test", Role: auth.RoleFinance}
		for i := range 8 {
			tr, err := tn.Ledger.Transfer(ctx, ledger.TransferRequest{Key: fmt.Sprintf("rr-%d", i), Debit: wallet, Credit: prov, Amount: 100, Kind: "charge"})
			if err != nil {
				t.Fatal(err)
			}
			d, err := w.OpenDispute(ctx, rid, res.CardNumber, tr.ID, "not me")
			if err != nil {
				t.Fatal(err)
			}
			var refundErr, rejectErr error
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); _, refundErr = w.RefundDispute(ctx, staff, d.ID, "") }()
			go func() { defer wg.Done(); _, rejectErr = w.RejectDispute(ctx, staff, d.ID, "the fare was right") }()
			wg.Wait()
			if (refundErr == nil) == (rejectErr == nil) {
				t.Fatalf("round %d: refund %v, reject %v: exactly one must win", i, refundErr, rejectErr)
			}
			var reversals int
			tn.DB.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM ledger_journal WHERE type = 'reversal' AND ref = $1`, refSeq(t, tr.ID)).Scan(&reversals)
			got, err := w.Disputes(ctx, rid, "")
			if err != nil {
				t.Fatal(err)
			}
			var st string
			for _, x := range got {
				if x.ID == d.ID {
					st = x.Status
				}
			}
			if refundErr == nil && (st != web.DisputeRefunded || reversals != 1) || rejectErr == nil && (st != web.DisputeRejected || reversals != 0) {
				t.Fatalf("round %d: status %q with %d reversals (refund %v, reject %v)", i, st, reversals, refundErr, rejectErr)
			}
		}
		ledgerOK(t, tn)
	})
}

// refSeq is the journal sequence number behind a transfer id.
func refSeq(t *testing.T, id string) int64 {
	t.Helper()
	var seq int64
	for _, r := range id {
		if r >= '0' && r <= '9' {
			seq = seq*10 + int64(r-'0')
		}
	}
	return seq
}

// TestScenarioEdit: hr_admin changes a fare and a concession from the
// console; bad input is explained naming the field; a stale form is
// refused; every change is audited.
func TestScenarioEdit(t *testing.T) {
	eachBackend(t, 3, func(t *testing.T, tn *nodetest.Node) {
		ctx := t.Context()
		hr := newBrowser(t, tn.URL).staffAs(tn, "hr_admin")
		s, err := tn.Catalog.Scenario(ctx, "transit.bus")
		if err != nil {
			t.Fatal(err)
		}
		_, page, _ := hr.do("GET", "/console/scenarios/transit.bus", nil)
		if !strings.Contains(page, `name="version" value="`+strconv.FormatInt(s.Version, 10)+`"`) {
			t.Fatal("the form lacks the version")
		}
		form := scenarioValues(s)
		form.Set("csrf", hr.csrf("/console/scenarios/transit.bus"))
		post := func(f url.Values) (int, string) {
			st, body, _ := hr.do("POST", "/console/scenarios/transit.bus", f)
			return st, body
		}
		bad := cloneValues(form)
		bad.Set("c0_pay", "150")
		if st, body := post(bad); st != http.StatusBadRequest && st != http.StatusUnprocessableEntity || !strings.Contains(body, "优惠 1 · 付费比例") {
			t.Fatalf("pay 150%%: %d %.600s", st, errorText(body))
		}
		bad = cloneValues(form)
		bad.Set("default_amount", "two yuan")
		if st, body := post(bad); st == http.StatusSeeOther || !strings.Contains(body, "票价/金额：金额请以元填写") || strings.Contains(errorText(body), "default_amount") {
			t.Fatalf("a fare in words: %d %s", st, errorText(body))
		}
		// A box's name is said once, in words, never as the form's key.
		bad = cloneValues(form)
		bad.Set("min_age", "ten")
		if st, body := post(bad); st == http.StatusSeeOther || strings.Count(errorText(body), "最小年龄") != 1 || strings.Contains(errorText(body), "min_age") {
			t.Fatalf("an age in words: %d %s", st, errorText(body))
		}
		bad = cloneValues(form)
		bad.Set("version", "x")
		if st, body := post(bad); st == http.StatusSeeOther || !strings.Contains(errorText(body), "表单已过期") || strings.Contains(errorText(body), "version") {
			t.Fatalf("a broken version: %d %s", st, errorText(body))
		}
		good := cloneValues(form)
		good.Set("default_amount", "2.50")
		good.Set("c1_pay", "40")
		if st, body := post(good); st != http.StatusSeeOther {
			t.Fatalf("save: %d %s", st, errorText(body))
		}
		got, _ := tn.Catalog.Scenario(ctx, "transit.bus")
		if got.DefaultAmountFen != 250 || got.Concessions[1].PayPercent != 40 || got.Version != s.Version+1 || len(got.Concessions) != len(s.Concessions) {
			t.Fatalf("saved scenario %+v", got)
		}
		// The same (now stale) form again is refused.
		if st, body := post(good); st != http.StatusConflict || !strings.Contains(body, "已被他人修改") {
			t.Fatalf("stale form: %d %s", st, errorText(body))
		}
		// Disable it.
		off := scenarioValues(got)
		off.Set("csrf", form.Get("csrf"))
		off.Del("enabled")
		if st, body := post(off); st != http.StatusSeeOther {
			t.Fatalf("disable: %d %s", st, errorText(body))
		}
		if got, _ := tn.Catalog.Scenario(ctx, "transit.bus"); got.Enabled {
			t.Fatal("still enabled")
		}
		if n := len(audited(t, tn, "update_scenario", "transit.bus")); n != 2 {
			t.Fatalf("%d audited updates, want 2", n)
		}
		// Finance may not edit scenarios.
		fin := newBrowser(t, tn.URL).staffAs(tn, "finance")
		if st, _, _ := fin.do("GET", "/console/scenarios/transit.bus", nil); st != http.StatusForbidden {
			t.Fatalf("finance on the scenario form: %d", st)
		}
	})
}

var errRe = regexp.MustCompile(`id="error">([^<]*)<`)

func errorText(body string) string {
	if m := errRe.FindStringSubmatch(body); m != nil {
		return m[1]
	}
	if len(body) > 400 {
		return body[:400]
	}
	return body
}

func cloneValues(v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// scenarioValues is the form as the page would submit it for s.
func scenarioValues(s catalog.Scenario) url.Values {
	y := func(fen int64) string {
		if fen == 0 {
			return ""
		}
		return fmt.Sprintf("%d.%02d", fen/100, fen%100)
	}
	n := func(i int) string {
		if i == 0 {
			return ""
		}
		return strconv.Itoa(i)
	}
	f := url.Values{"version": {strconv.FormatInt(s.Version, 10)}, "name_zh": {s.NameZh}, "name_en": {s.NameEn},
		"default_amount": {y(s.DefaultAmountFen)}, "max_amount": {y(s.MaxAmountFen)}, "credit_limit": {y(s.CreditLimitFen)},
		"pin_above": {y(s.PINAboveFen)}, "min_age": {n(s.Eligibility.MinAge)}, "max_age": {n(s.Eligibility.MaxAge)},
		"require_any_flag": {strings.Join(s.Eligibility.RequireAnyFlag, ",")}}
	on := func(k string, b bool) {
		if b {
			f.Set(k, "1")
		}
	}
	on("enabled", s.Enabled)
	on("amount_from_terminal", s.AmountFromTerminal)
	on("require_pin", s.RequirePIN)
	on("offline_allowed", s.OfflineAllowed)
	on("local_only", s.LocalOnly)
	f["category"] = s.Eligibility.Categories
	f["view_field"] = s.ViewFields
	for i, c := range append(s.Concessions, catalog.Concession{PayPercent: 100}) {
		p := fmt.Sprintf("c%d_", i)
		f.Set(p+"id", c.ID)
		f.Set(p+"name_zh", c.NameZh)
		f.Set(p+"name_en", c.NameEn)
		f.Set(p+"min_age", n(c.MinAge))
		f.Set(p+"max_age", n(c.MaxAge))
		f.Set(p+"flags", strings.Join(c.AnyFlag, ","))
		f.Set(p+"pay", strconv.Itoa(c.PayPercent))
	}
	return f
}

// TestLedgerStatementReadsAreAudited: a resident's wallet statement read or
// exported on the console is recorded under the wallet, with the reader.
func TestLedgerStatementReadsAreAudited(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 3})
	b := newBrowser(t, tn.URL).staffAs(tn, "finance")
	wallet := "w:" + tn.Demo.Residents[0].ResidentID
	if st, body, _ := b.do("GET", "/console/ledger?account="+url.QueryEscape(wallet), nil); st != 200 {
		t.Fatalf("statement: %d %.300s", st, body)
	}
	if st, body, _ := b.do("GET", "/console/ledger/export?format=csv&account="+url.QueryEscape(wallet), nil); st != 200 {
		t.Fatalf("export: %d %.300s", st, body)
	}
	for _, action := range []string{"read_statement", "export_statement"} {
		got := audited(t, tn, action, wallet)
		if len(got) != 1 || got[0].ActorRole != auth.RoleFinance || got[0].Actor == "" {
			t.Fatalf("%s of %s: %+v, want one record by finance", action, wallet, got)
		}
	}
}
