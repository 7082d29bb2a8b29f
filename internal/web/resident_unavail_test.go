package web

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// A node without a service (sign-in, e-codes, the ledger) says so in the
// page's language: no English word inside the Chinese notice.
func TestUnavailableSpeaksChinese(t *testing.T) {
	w, err := New(Deps{})
	if err != nil {
		t.Fatal(err)
	}
	form := url.Values{"csrf": {"pre-token-pre-token-1234"}, "card_number": {"1234567890123456"}, "pin": {"123456"}}
	r := httptest.NewRequest("POST", "/r/login", strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.AddCookie(&http.Cookie{Name: preCookie, Value: "pre-token-pre-token-1234"})
	rec := httptest.NewRecorder()
	w.page(w.residentLogin)(rec, r)
	body := rec.Body.String()
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(body, "本节点暂不提供") {
		t.Fatalf("%d %.2000s", rec.Code, body)
	}
	if strings.Contains(body, "sign-in") {
		t.Errorf("English in the Chinese page: %.2000s", body)
	}
	for _, what := range []string{"e-code", "ledger", "sign-in"} {
		rq := &req{Lang: "zh"}
		if zh := rq.ErrText(unavailable(what)); strings.ContainsAny(zh, "abcdefghijklmnopqrstuvwxyz") {
			t.Errorf("unavailable(%q) in Chinese: %q", what, zh)
		}
	}
}
