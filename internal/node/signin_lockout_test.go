package node_test

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// TestStaffSignInLockout: wrong passwords lock a staff user name for a
// while (rate_limited, 429), the right password is refused while locked and
// works after the period, a right password resets the count, and an unknown
// user name is answered exactly like a wrong password, lock included.
func TestStaffSignInLockout(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		if strings.HasSuffix(dsn, ".db") {
			dsn = ""
		}
		var mu sync.Mutex
		at := time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC)
		now := func() time.Time { mu.Lock(); defer mu.Unlock(); return at }
		advance := func(d time.Duration) { mu.Lock(); at = at.Add(d); mu.Unlock() }
		tn := nodetest.Start(t, nodetest.Options{DB: dsn, Demo: true, DemoResidents: 5, Now: now})
		hr := tn.Demo.Staff["hr_admin"]
		anon := tn.Client("")
		try := func(user, pw string, wantStatus int, wantCode string) nodetest.Response {
			t.Helper()
			r := anon.Do(t, "POST", "/v1/auth/staff", map[string]string{"user": user, "password": pw})
			if r.Status != wantStatus || r.Code() != wantCode {
				t.Fatalf("sign-in %s: %d %s, want %d %s", user, r.Status, r.Body, wantStatus, wantCode)
			}
			if wantStatus != 200 {
				if p := r.Problem(); p["detail"] == "" || p["detail_zh"] == "" {
					t.Fatalf("problem lacks text: %s", r.Body)
				}
			}
			return r
		}

		// Four wrong, then right: the count starts again.
		for i := 0; i < 4; i++ {
			try(hr.User, "wrong-password", 401, "unauthorized")
		}
		try(hr.User, hr.Password, 200, "")
		for i := 0; i < 4; i++ {
			try(hr.User, "wrong-password", 401, "unauthorized")
		}
		// The fifth wrong one in a row locks.
		locked := try(hr.User, "wrong-password", 429, "rate_limited")
		if locked.Header.Get("WWW-Authenticate") != "" {
			t.Fatalf("a lock-out is not a missing credential: %v", locked.Header)
		}
		try(hr.User, hr.Password, 429, "rate_limited")
		advance(14 * time.Minute)
		try(hr.User, hr.Password, 429, "rate_limited")
		advance(2 * time.Minute)
		try(hr.User, hr.Password, 200, "")

		// An unknown user name: same answers, same lock.
		var unknown []nodetest.Response
		for i := 0; i < 5; i++ {
			unknown = append(unknown, anon.Do(t, "POST", "/v1/auth/staff", map[string]string{"user": "nobody-here", "password": "wrong-password"}))
		}
		var known []nodetest.Response
		for i := 0; i < 5; i++ {
			known = append(known, anon.Do(t, "POST", "/v1/auth/staff", map[string]string{"user": tn.Demo.Staff["finance"].User, "password": "wrong-password"}))
		}
		for i := range known {
			if known[i].Status != unknown[i].Status || string(known[i].Body) != string(unknown[i].Body) {
				t.Fatalf("attempt %d: known user %d %s, unknown %d %s", i+1, known[i].Status, known[i].Body, unknown[i].Status, unknown[i].Body)
			}
		}
		if unknown[4].Status != 429 {
			t.Fatalf("unknown user name not limited: %d %s", unknown[4].Status, unknown[4].Body)
		}

		// The lock-outs are in the audit log.
		var audit []struct{ Action, Subject, Detail string }
		tn.Client(hr.Token).JSON(t, "GET", "/v1/audit?limit=50", nil, 200, &audit)
		n := 0
		for _, a := range audit {
			if a.Action == "staff_sign_in_locked" {
				n++
			}
		}
		if n != 3 {
			t.Fatalf("%d lock-outs audited, want 3: %+v", n, audit)
		}
	})
}

// TestChangePINWrongOldPIN: a wrong old PIN on PUT /v1/cards/{own}/pin is
// 403 bad_pin without WWW-Authenticate (the session is fine), and it still
// counts toward the card's lock-out; sign-in keeps 401.
func TestChangePINWrongOldPIN(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 5})
	res := tn.Demo.Residents[0]
	anon := tn.Client("")
	var lt struct{ Token string }
	anon.JSON(t, "POST", "/v1/auth/resident", map[string]string{"card_number": res.CardNumber, "pin": res.PIN}, 200, &lt)
	c := tn.Client(lt.Token)
	path := "/v1/cards/" + res.CardNumber + "/pin"

	r := c.Do(t, "PUT", path, map[string]string{"old_pin": "000000", "new_pin": "135790"})
	if r.Status != 403 || r.Code() != "bad_pin" || r.Header.Get("WWW-Authenticate") != "" {
		t.Fatalf("wrong old PIN: %d %v %s", r.Status, r.Header, r.Body)
	}
	if p := r.Problem(); p["detail"] == "" || p["detail_zh"] == "" {
		t.Fatalf("problem lacks text: %s", r.Body)
	}
	// The session still works.
	c.JSON(t, "GET", "/v1/me", nil, 200, nil)

	// Sign-in with a wrong PIN keeps 401 (it is a bad credential).
	r = anon.Do(t, "POST", "/v1/auth/resident", map[string]string{"card_number": res.CardNumber, "pin": "000000"})
	if r.Status != 401 || r.Code() != "bad_pin" {
		t.Fatalf("sign-in with a wrong PIN: %d %s", r.Status, r.Body)
	}
	// Two wrong so far; four more wrong old PINs lock the card.
	for i := 0; i < 3; i++ {
		if r := c.Do(t, "PUT", path, map[string]string{"old_pin": "000000", "new_pin": "135790"}); r.Status != 403 || r.Code() != "bad_pin" {
			t.Fatalf("wrong old PIN %d: %d %s", i+3, r.Status, r.Body)
		}
	}
	if r := c.Do(t, "PUT", path, map[string]string{"old_pin": "000000", "new_pin": "135790"}); r.Status != 423 || r.Code() != "card_locked" {
		t.Fatalf("sixth wrong PIN: %d %s", r.Status, r.Body)
	}
	if r := c.Do(t, "PUT", path, map[string]string{"old_pin": res.PIN, "new_pin": "135790"}); r.Status != 423 || r.Code() != "card_locked" {
		t.Fatalf("right PIN on a locked card: %d %s", r.Status, r.Body)
	}
}
