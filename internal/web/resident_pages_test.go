package web_test

import (
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

var langSwitchRe = regexp.MustCompile(`id="lang-switch" href="([^"]+)"`)

// follow GETs path and the redirects after it, returning the last answer.
func (b *browser) follow(path string) (int, string, string) {
	b.t.Helper()
	for range 5 {
		st, body, h := b.do("GET", path, nil)
		if st != http.StatusSeeOther && st != http.StatusFound {
			return st, body, path
		}
		path = h.Get("Location")
	}
	b.t.Fatalf("too many redirects at %s", path)
	return 0, "", ""
}

func TestResidentPages(t *testing.T) {
	t.Parallel()
	// 20:30 UTC is 04:30 the next day in China. (The clock is the next
	// 20:30 UTC, not a fixed date: the cookie jar drops a session cookie
	// whose expiry is behind the real clock.)
	var mu sync.Mutex
	at := time.Now().UTC().Truncate(24 * time.Hour).Add(20*time.Hour + 30*time.Minute)
	if at.Before(time.Now()) {
		at = at.AddDate(0, 0, 1)
	}
	utcDay, chinaDay := at.Format("2006-01-02"), at.AddDate(0, 0, 1).Format("2006-01-02")
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return at }
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 4, Now: now})
	ctx := t.Context()

	t.Run("reporting the card lost: codes stop, the session ends, the confirmation switches language", func(t *testing.T) {
		res := tn.Demo.Residents[3]
		b := newBrowser(t, tn.URL)
		b.residentLogin(res.CardNumber, res.PIN)
		tok := b.csrf("/r/lost")
		st, body, h := b.do("POST", "/r/lost", url.Values{"csrf": {tok}})
		where := "/r/lost"
		if st == http.StatusSeeOther {
			st, body, where = b.follow(h.Get("Location"))
		}
		if st != 200 || !strings.Contains(body, `id="lost-done"`) || !strings.Contains(body, "已挂失") {
			t.Fatalf("after reporting lost: %d at %s %.1500s", st, where, contentOf(body))
		}
		if st, _, _ := b.do("GET", "/r/code.json", nil); st != http.StatusUnauthorized {
			t.Errorf("code.json after lost: %d", st)
		}
		if _, _, err := tn.IssueCode(ctx, res.CardNumber); err == nil {
			t.Errorf("a code is still issued for a lost card")
		}
		if st, _, h := b.do("GET", "/r/", nil); st != http.StatusSeeOther || !strings.HasPrefix(h.Get("Location"), "/r/login") {
			t.Errorf("the session did not end: %d %s", st, h.Get("Location"))
		}
		m := langSwitchRe.FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("no language switch on the confirmation")
		}
		_, en, where := b.follow(html.UnescapeString(m[1]))
		mustContain(t, "the confirmation in English (at "+where+")", contentOf(en), "Reported lost. The card and its codes no longer work.")
	})

	t.Run("another resident's charge cannot be disputed", func(t *testing.T) {
		r0, r1 := tn.Demo.Residents[0], tn.Demo.Residents[1]
		rid1 := residentID(t, tn, r1.CardNumber)
		x, err := tn.Ledger.Transfer(ctx, ledger.TransferRequest{Key: "review-fare-1", Debit: ledger.WalletID(rid1),
			Credit: ledger.ReceivableID(tn.Demo.Terminals[0].Provider), Amount: 200, Kind: "scan_charge"})
		if err != nil {
			t.Fatal(err)
		}
		b := newBrowser(t, tn.URL)
		b.residentLogin(r0.CardNumber, r0.PIN)
		tok := b.csrf("/r/disputes")
		st, body, _ := b.do("POST", "/r/disputes", url.Values{"csrf": {tok}, "transfer_id": {x.ID}, "reason": {"not mine"}})
		if st != http.StatusNotFound || strings.Contains(body, x.ID) && strings.Contains(body, "¥2.00") {
			t.Fatalf("disputing another's charge: %d %.1500s", st, contentOf(body))
		}
		_, body, _ = b.do("GET", "/r/statement?account=wallet", nil)
		mustNotContain(t, "own statement", body, x.ID)
		mustNotContain(t, "another's charge", body, `id="dispute-retry"`)

		// The owner's reason refused (too long): the form comes back with
		// what was typed, to shorten it there.
		own := newBrowser(t, tn.URL)
		own.residentLogin(r1.CardNumber, r1.PIN)
		long := strings.Repeat("扣", 501)
		st, body, _ = own.do("POST", "/r/disputes", url.Values{"csrf": {own.csrf("/r/disputes")}, "transfer_id": {x.ID}, "reason": {long}})
		if st == http.StatusSeeOther {
			t.Fatal("a 501-character reason was taken")
		}
		mustContain(t, "a refused reason", body, `id="dispute-retry"`, `value="`+x.ID+`"`, `value="`+long+`"`, "500")
	})

	t.Run("statement dates are China time; an empty range says so in both languages", func(t *testing.T) {
		r := tn.Demo.Residents[2]
		rid := residentID(t, tn, r.CardNumber)
		if _, err := tn.Ledger.Transfer(ctx, ledger.TransferRequest{Key: "review-fare-2", Debit: ledger.WalletID(rid),
			Credit: ledger.ReceivableID(tn.Demo.Terminals[0].Provider), Amount: 123456789, Kind: "scan_charge"}); err != nil && !strings.Contains(err.Error(), "insufficient") {
			t.Fatal(err)
		}
		b := newBrowser(t, tn.URL)
		b.residentLogin(r.CardNumber, r.PIN)
		_, body, _ := b.do("GET", "/r/statement?from="+chinaDay+"&to="+chinaDay, nil)
		mustContain(t, "the China day", body, chinaDay+" 04:30")
		mustNotContain(t, "the China day", body, utcDay+" 20:30")
		_, body, _ = b.do("GET", "/r/statement?from="+utcDay+"&to="+utcDay, nil)
		mustContain(t, "the UTC day", contentOf(body), "暂无记录")
		b.do("GET", "/lang?l=en", nil)
		_, body, _ = b.do("GET", "/r/statement?from="+utcDay+"&to="+utcDay, nil)
		mustContain(t, "the UTC day in English", contentOf(body), "Nothing here yet.")
		_, body, _ = b.do("GET", "/r/disputes", nil)
		mustContain(t, "no disputes in English", contentOf(body), "Nothing here yet.")
	})
}
