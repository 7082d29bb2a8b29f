package web_test

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// browser is a cookie-keeping HTTP client that does not follow redirects.
type browser struct {
	t    *testing.T
	base string
	c    *http.Client
}

func newBrowser(t *testing.T, base string) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, base: base, c: &http.Client{Jar: jar, Timeout: 20 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (b *browser) do(method, path string, form url.Values) (int, string, http.Header) {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, b.base+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out), resp.Header
}

var csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (b *browser) csrf(path string) string {
	b.t.Helper()
	_, body, _ := b.do("GET", path, nil)
	m := csrfRe.FindStringSubmatch(body)
	if m == nil {
		b.t.Fatalf("no CSRF token on %s", path)
	}
	return m[1]
}

func (b *browser) staffLogin(user, pw string) {
	b.t.Helper()
	tok := b.csrf("/console/login")
	st, body, h := b.do("POST", "/console/login", url.Values{"csrf": {tok}, "user": {user}, "password": {pw}})
	if st != http.StatusSeeOther || h.Get("Location") != "/console/" {
		b.t.Fatalf("staff sign-in: %d %s %.300s", st, h.Get("Location"), body)
	}
}

func TestSafety(t *testing.T) {
	t.Parallel()
	for _, b := range storetest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			dsn := ""
			if b.Name != "sqlite" {
				dsn = b.DSN(t)
			}
			testSafety(t, dsn)
		})
	}
}

func testSafety(t *testing.T, dsn string) {
	clock := struct {
		sync.Mutex
		at time.Time
	}{at: time.Now()}
	now := func() time.Time { clock.Lock(); defer clock.Unlock(); return clock.at }
	advance := func(d time.Duration) { clock.Lock(); clock.at = clock.at.Add(d); clock.Unlock() }
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 10, Now: now, DB: dsn})
	hr := tn.Demo.Staff["hr_admin"]
	res := tn.Demo.Residents[0]

	t.Run("sign-in without the CSRF token is refused in plain words", func(t *testing.T) {
		b := newBrowser(t, tn.URL)
		st, body, _ := b.do("POST", "/console/login", url.Values{"user": {hr.User}, "password": {hr.Password}})
		if st != http.StatusForbidden || !strings.Contains(body, "表单安全令牌") {
			t.Fatalf("status %d: %.400s", st, body)
		}
	})

	t.Run("a signed-in POST without the CSRF token is refused and changes nothing", func(t *testing.T) {
		b := newBrowser(t, tn.URL)
		b.staffLogin(hr.User, hr.Password)
		st, _, _ := b.do("POST", "/console/cards/"+res.CardNumber+"/lost", url.Values{})
		if st != http.StatusForbidden {
			t.Fatalf("status %d, want 403", st)
		}
		c, err := tn.Residents.Card(t.Context(), res.CardNumber)
		if err != nil || c.Status != "active" {
			t.Fatalf("card %+v %v: changed without a CSRF token", c, err)
		}
		// A token from another session does not work either.
		other := newBrowser(t, tn.URL)
		other.staffLogin(hr.User, hr.Password)
		foreign := other.csrf("/console/enrol")
		st, _, _ = b.do("POST", "/console/cards/"+res.CardNumber+"/lost", url.Values{"csrf": {foreign}})
		if st != http.StatusForbidden {
			t.Fatalf("another session's token: status %d, want 403", st)
		}
	})

	t.Run("an idle staff session ends", func(t *testing.T) {
		b := newBrowser(t, tn.URL)
		b.staffLogin(hr.User, hr.Password)
		if st, _, _ := b.do("GET", "/console/audit", nil); st != 200 {
			t.Fatalf("status %d", st)
		}
		advance(16 * time.Minute)
		st, _, h := b.do("GET", "/console/audit", nil)
		if st != http.StatusSeeOther || !strings.Contains(h.Get("Location"), "m=expired") {
			t.Fatalf("after 16 idle minutes: %d %s", st, h.Get("Location"))
		}
		_, body, _ := b.do("GET", h.Get("Location"), nil)
		if !strings.Contains(body, "会话已过期") {
			t.Fatalf("no plain explanation: %.400s", body)
		}
	})

	t.Run("a PIN change signs out the card's other sessions; a PIN set at the counter, all", func(t *testing.T) {
		res := tn.Demo.Residents[2]
		signIn := func(pin string) *browser {
			b := newBrowser(t, tn.URL)
			tok := b.csrf("/r/login")
			if st, body, _ := b.do("POST", "/r/login", url.Values{"csrf": {tok}, "card_number": {res.CardNumber}, "pin": {pin}}); st != http.StatusSeeOther {
				t.Fatalf("resident sign-in: %d %.300s", st, body)
			}
			return b
		}
		signedIn := func(b *browser) bool {
			st, _, _ := b.do("GET", "/r/pin", nil)
			return st == 200
		}
		holder, other := signIn(res.PIN), signIn(res.PIN)
		tok := holder.csrf("/r/pin")
		st, body, _ := holder.do("POST", "/r/pin", url.Values{"csrf": {tok}, "old_pin": {res.PIN}, "new_pin": {"135790"}, "new_pin2": {"135790"}})
		if st != http.StatusSeeOther {
			t.Fatalf("PIN change: %d %.300s", st, body)
		}
		if signedIn(other) {
			t.Fatal("a session signed in with the old PIN still works after the PIN change")
		}
		if !signedIn(holder) {
			t.Fatal("the session that changed the PIN was signed out")
		}
		staff := newBrowser(t, tn.URL)
		staff.staffLogin(hr.User, hr.Password)
		c, err := tn.Residents.Card(t.Context(), res.CardNumber)
		if err != nil {
			t.Fatal(err)
		}
		tok = staff.csrf("/console/residents/" + c.ResidentID)
		if st, body, _ := staff.do("POST", "/console/cards/"+res.CardNumber+"/pin", url.Values{"csrf": {tok}, "pin": {"246813"}}); st != http.StatusSeeOther {
			t.Fatalf("PIN set at the counter: %d %.300s", st, body)
		}
		if signedIn(holder) {
			t.Fatal("a session signed in with the old PIN still works after staff set a new one")
		}
		if !signedIn(signIn("246813")) {
			t.Fatal("the new PIN does not sign in")
		}
	})

	t.Run("a resident may not open staff pages", func(t *testing.T) {
		b := newBrowser(t, tn.URL)
		tok := b.csrf("/r/login")
		st, _, _ := b.do("POST", "/r/login", url.Values{"csrf": {tok}, "card_number": {res.CardNumber}, "pin": {res.PIN}})
		if st != http.StatusSeeOther {
			t.Fatalf("resident sign-in: %d", st)
		}
		st, body, _ := b.do("GET", "/console/audit", nil)
		if st != http.StatusForbidden || !strings.Contains(body, "仅限工作人员") {
			t.Fatalf("status %d: %.300s", st, body)
		}
	})

	t.Run("the resident search posts: no ID number in a URL, CSRF checked", func(t *testing.T) {
		b := newBrowser(t, tn.URL)
		b.staffLogin(hr.User, hr.Password)
		_, form, _ := b.do("GET", "/console/residents", nil)
		if !strings.Contains(form, `method="post" action="/console/residents"`) {
			t.Fatalf("the search form does not post: %.400s", form)
		}
		tok := b.csrf("/console/residents")
		st, body, _ := b.do("POST", "/console/residents", url.Values{"csrf": {tok}, "q": {res.IDNumber}})
		_, table, found := strings.Cut(body, `<table id="results">`)
		if st != http.StatusOK || !found || strings.Contains(table, res.IDNumber[6:14]) {
			t.Fatalf("search by ID number: %d %.600s", st, table)
		}
		if st, _, _ := b.do("POST", "/console/residents", url.Values{"q": {res.IDNumber}}); st != http.StatusForbidden {
			t.Fatalf("a search without the CSRF token: %d", st)
		}
	})

	t.Run("roles: finance may not search residents, operator may not read the ledger", func(t *testing.T) {
		for role, path := range map[string]string{"finance": "/console/residents", "operator": "/console/ledger"} {
			s := tn.Demo.Staff[role]
			b := newBrowser(t, tn.URL)
			b.staffLogin(s.User, s.Password)
			if st, _, _ := b.do("GET", path, nil); st != http.StatusForbidden {
				t.Fatalf("%s on %s: status %d", role, path, st)
			}
		}
	})

	t.Run("a provider sees only its own takings", func(t *testing.T) {
		ctx := t.Context()
		p1, err := tn.CreateProvider(ctx, "Bus A", "transit", []string{"transit.bus"})
		if err != nil {
			t.Fatal(err)
		}
		p2, err := tn.CreateProvider(ctx, "Bus B", "transit", []string{"transit.bus"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tn.Auth.CreateStaff(ctx, "bus_a", "Bus A clerk", "provider", "correct horse battery", p1.ID); err != nil {
			t.Fatal(err)
		}
		b := newBrowser(t, tn.URL)
		b.staffLogin("bus_a", "correct horse battery")
		if st, body, _ := b.do("GET", "/console/takings", nil); st != 200 || !strings.Contains(body, p1.ID) {
			t.Fatalf("own takings: %d %.300s", st, body)
		}
		st, body, _ := b.do("GET", "/console/takings?provider="+p2.ID, nil)
		if st != http.StatusForbidden || !strings.Contains(body, "只能查看本单位") {
			t.Fatalf("another provider's takings: %d %.300s", st, body)
		}
		if st, _, _ := b.do("GET", "/console/takings/export?format=csv&provider="+p2.ID, nil); st != http.StatusForbidden {
			t.Fatalf("another provider's export: %d", st)
		}
	})

	t.Run("English on request", func(t *testing.T) {
		b := newBrowser(t, tn.URL)
		b.do("GET", "/lang?l=en&next=/r/login", nil)
		tok := b.csrf("/r/login")
		_, body, _ := b.do("POST", "/r/login", url.Values{"csrf": {tok}, "card_number": {tn.Demo.Residents[1].CardNumber}, "pin": {"000001"}})
		if !strings.Contains(body, "tries left before the card is locked") {
			t.Fatalf("no English explanation: %.500s", body)
		}
	})
}
