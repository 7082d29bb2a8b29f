package web

import (
	"context"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/federation"
)

// settleAs posts the settlement form as finance in lang.
func settleAs(t *testing.T, w *Web, lang, day string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	r := httptest.NewRequest("POST", "/console/clearing/settle", strings.NewReader(url.Values{"day": {day}}.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rq := w.newReq(rec, r)
	rq.Lang = lang
	rq.S = &session{P: auth.Principal{Kind: auth.KindStaff, Subject: "u1", Role: auth.RoleFinance}, CSRF: "csrf-token"}
	if err := w.consoleClearingSettle(rq); err != nil {
		rq.fail(err)
	}
	return rec.Code, rec.Body.String()
}

// TestConsoleSettleDisagreementInChinese: a peer that does not
// countersign is explained in the page's language, its figures in yuan,
// not in the federation's English with amounts in fen.
func TestConsoleSettleDisagreementInChinese(t *testing.T) {
	w := clearingWeb(t)
	w.d.Auth = auth.New(w.d.DB, nil)
	w.d.ClearingSettle = func(_ context.Context, day string) ([]federation.SignedStatement, error) {
		return []federation.SignedStatement{
			{Statement: federation.Statement{Day: day, A: "CN-310000", B: "CN-330100", AOwesB: "500", BOwesA: "0", Messages: "2"},
				Error:  "the peer's figures differ: 12345/0 over 3 messages",
				Theirs: &federation.Statement{Day: day, A: "CN-310000", B: "CN-330100", AOwesB: "12345", BOwesA: "0", Messages: "3"}},
			{Statement: federation.Statement{Day: day, A: "CN-320100", B: "CN-330100", AOwesB: "0", BOwesA: "0", Messages: "0"},
				Error: `Post "http://127.0.0.1:1/v1/federation": dial tcp 127.0.0.1:1: connect: connection refused`},
		}, nil
	}
	st, body := settleAs(t, w, "zh", "2026-03-09")
	if st != 200 {
		t.Fatalf("%d %s", st, body)
	}
	i := strings.Index(body, `id="statements"`)
	if i < 0 {
		t.Fatalf("no statements: %s", body)
	}
	table := body[i:]
	for _, bad := range []string{"figures differ", "connection refused", "12345"} {
		if strings.Contains(table, bad) {
			t.Fatalf("Chinese page shows %q:\n%s", bad, table)
		}
	}
	if !strings.Contains(table, "¥123.45") {
		t.Fatalf("the peer's figures are not shown in yuan:\n%s", table)
	}
	_, body = settleAs(t, w, "en", "2026-03-09")
	if !strings.Contains(body, "¥123.45") || strings.Contains(body, "12345/0") {
		t.Fatalf("English page:\n%s", body)
	}
}

// TestConsoleSettleBadDayKept: a settlement day that is not a date
// is refused with the form still holding what the user typed.
func TestConsoleSettleBadDayKept(t *testing.T) {
	w := clearingWeb(t)
	w.d.ClearingSettle = func(context.Context, string) ([]federation.SignedStatement, error) {
		t.Fatal("settled a bad day")
		return nil, nil
	}
	st, body := settleAs(t, w, "zh", "2026-3-9x")
	if st != 422 || !strings.Contains(body, `name="day" value="2026-3-9x"`) {
		t.Fatalf("%d, day not kept: %s", st, body)
	}
}
