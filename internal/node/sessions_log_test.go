package node_test

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// TestPINChangeEndsOtherSessions: a PIN changed by its holder signs
// out every other session of the card (someone who learnt the old PIN and
// signed in with it can no longer make codes), keeping the one that changed
// it; a PIN set by staff at the counter signs out every session.
func TestPINChangeEndsOtherSessions(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 5})
	res := tn.Demo.Residents[0]
	hr := tn.Client(tn.Demo.Staff["hr_admin"].Token)
	anon := tn.Client("")
	signIn := func(pin string) *nodetest.Client {
		t.Helper()
		var lt struct{ Token string }
		anon.JSON(t, "POST", "/v1/auth/resident", map[string]string{"card_number": res.CardNumber, "pin": pin}, 200, &lt)
		return tn.Client(lt.Token)
	}
	holder, other := signIn(res.PIN), signIn(res.PIN)
	holder.JSON(t, "PUT", "/v1/cards/"+res.CardNumber+"/pin", map[string]string{"old_pin": res.PIN, "new_pin": "135790"}, 204, nil)
	if r := other.Do(t, "POST", "/v1/ecodes", nil); r.Status != 401 {
		t.Fatalf("a session signed in with the old PIN still makes codes after the PIN change: %d %s", r.Status, r.Body)
	}
	holder.JSON(t, "POST", "/v1/ecodes", nil, 200, nil)

	// Staff set a new PIN at the counter: every session ends.
	holder.JSON(t, "GET", "/v1/me", nil, 200, nil)
	hr.JSON(t, "PUT", "/v1/cards/"+res.CardNumber+"/pin", map[string]string{"new_pin": "246813"}, 204, nil)
	if r := holder.Do(t, "POST", "/v1/ecodes", nil); r.Status != 401 {
		t.Fatalf("a session signed in with the old PIN still makes codes after staff set a new one: %d %s", r.Status, r.Body)
	}
	signIn("246813").JSON(t, "POST", "/v1/ecodes", nil, 200, nil)
}

// TestAccessLogHasNoCardNumber: the access log names a resident
// caller without their card number (which identifies the person), and
// still names staff callers.
func TestAccessLogHasNoCardNumber(t *testing.T) {
	var logs syncBuffer
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 5, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	res := tn.Demo.Residents[0]
	var lt struct{ Token string }
	tn.Client("").JSON(t, "POST", "/v1/auth/resident", map[string]string{"card_number": res.CardNumber, "pin": res.PIN}, 200, &lt)
	rc := tn.Client(lt.Token)
	rc.JSON(t, "GET", "/v1/me", nil, 200, nil)
	rc.JSON(t, "POST", "/v1/ecodes", nil, 200, nil)
	rc.Do(t, "PUT", "/v1/cards/"+res.CardNumber+"/pin", map[string]string{"old_pin": "000000", "new_pin": "135790"})
	tn.Client(tn.Demo.Staff["hr_admin"].Token).JSON(t, "GET", "/v1/audit?limit=1", nil, 200, nil)
	out := logs.String()
	if !strings.Contains(out, "who=resident:") || !strings.Contains(out, "who=hr_admin:usr_") {
		t.Fatalf("the access log does not name its callers:\n%s", out)
	}
	if strings.Contains(out, res.CardNumber) {
		t.Fatalf("the access log holds a resident's card number:\n%s", out)
	}
}

// TestLogout: a signed-out token stops working at once, staff's and a
// resident's alike, and other sessions go on; a terminal cannot sign out
// its credential this way.
func TestLogout(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 3})
	hr := tn.Demo.Staff["hr_admin"]
	signIn := func() *nodetest.Client {
		var lt struct{ Token string }
		tn.Client("").JSON(t, "POST", "/v1/auth/staff", map[string]string{"user": hr.User, "password": hr.Password}, 200, &lt)
		return tn.Client(lt.Token)
	}
	a, b := signIn(), signIn()
	a.JSON(t, "POST", "/v1/auth/logout", nil, 204, nil)
	if r := a.Do(t, "GET", "/v1/audit?limit=1", nil); r.Status != 401 {
		t.Fatalf("a signed-out staff token: %d %s", r.Status, r.Body)
	}
	b.JSON(t, "GET", "/v1/audit?limit=1", nil, 200, nil)

	res := tn.Demo.Residents[0]
	var lt struct{ Token string }
	tn.Client("").JSON(t, "POST", "/v1/auth/resident", map[string]string{"card_number": res.CardNumber, "pin": res.PIN}, 200, &lt)
	rc := tn.Client(lt.Token)
	rc.JSON(t, "POST", "/v1/auth/logout", nil, 204, nil)
	if r := rc.Do(t, "GET", "/v1/me", nil); r.Status != 401 {
		t.Fatalf("a signed-out resident token: %d %s", r.Status, r.Body)
	}
	term := tn.Demo.Terminals[0]
	if r := tn.Client(term.Token).Do(t, "POST", "/v1/auth/logout", nil); r.Status != 403 {
		t.Fatalf("a terminal signing out: %d %s", r.Status, r.Body)
	}
}
