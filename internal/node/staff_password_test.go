package node_test

import (
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// A staff user changes the password handed to them: the current one is
// asked (wrong ones count toward the sign-in lock), the session used goes
// on, their other sessions end, the old password stops working, and the
// change is audited without either password.
func TestStaffChangesOwnPassword(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 2})
	fin := tn.Demo.Staff["finance"]
	signIn := func(pw string) (int, string) {
		r := nodetest.NewClient(tn.URL, "").Do(t, "POST", "/v1/auth/staff", map[string]string{"user": fin.User, "password": pw})
		var tok struct {
			Token string `json:"token"`
		}
		if r.Status == 200 {
			r.Decode(t, &tok)
		}
		return r.Status, tok.Token
	}
	_, a := signIn(fin.Password)
	_, b := signIn(fin.Password)
	sa := tn.Client(a)
	change := func(c *nodetest.Client, cur, next string) nodetest.Response {
		return c.Do(t, "POST", "/v1/auth/staff/password", map[string]string{"current_password": cur, "new_password": next})
	}
	const next = "new-and-long-enough"

	if r := change(sa, "wrong-password", next); r.Status != 403 || !strings.Contains(r.Problem()["detail"].(string), "current password is wrong") || !strings.Contains(r.Problem()["detail_zh"].(string), "当前密码错误") {
		t.Fatalf("wrong current password: %d %s", r.Status, r.Body)
	}
	if r := change(sa, fin.Password, "short"); r.Status != 422 || r.Code() != "validation_failed" {
		t.Fatalf("short new password: %d %s", r.Status, r.Body)
	}
	if r := change(sa, fin.Password, fin.Password); r.Status != 422 || r.Code() != "validation_failed" {
		t.Fatalf("same password: %d %s", r.Status, r.Body)
	}
	if r := change(sa, "", next); r.Status != 422 {
		t.Fatalf("no current password: %d %s", r.Status, r.Body)
	}
	for name, tok := range map[string]string{"terminal": tn.Demo.Terminals[0].Token, "nobody": ""} {
		if r := change(tn.Client(tok), fin.Password, next); r.Status != 403 && r.Status != 401 {
			t.Fatalf("%s changing a password: %d %s", name, r.Status, r.Body)
		}
	}

	sa.JSON(t, "POST", "/v1/auth/staff/password", map[string]string{"current_password": fin.Password, "new_password": next}, 204, nil)
	if r := sa.Do(t, "GET", "/v1/ledger/check", nil); r.Status != 200 {
		t.Fatalf("the session that changed the password: %d", r.Status)
	}
	if r := tn.Client(b).Do(t, "GET", "/v1/ledger/check", nil); r.Status != 401 {
		t.Fatalf("another session after the change: %d", r.Status)
	}
	if st, _ := signIn(fin.Password); st != 401 {
		t.Fatalf("old password after the change: %d", st)
	}
	if st, _ := signIn(next); st != 200 {
		t.Fatalf("new password: %d", st)
	}

	rows := auditRows(t, tn, "change_own_password", "")
	if len(rows) != 1 {
		t.Fatalf("change_own_password audited %d times", len(rows))
	}
	if e := rows[0]; strings.Contains(e.Detail, next) || strings.Contains(e.Detail, fin.Password) || e.ActorRole != auth.RoleFinance {
		t.Fatalf("audit row %+v", e)
	}

	// Wrong current passwords count toward the name's lock: with those
	// before, the fifth wrong try in a row locks sign-in.
	_, c := signIn(next)
	sc := tn.Client(c)
	for i := 0; i < auth.MaxStaffFails-1; i++ {
		if r := change(sc, "still-wrong", "another-long-one"); r.Status != 403 {
			t.Fatalf("wrong try %d: %d %s", i+1, r.Status, r.Body)
		}
	}
	if r := change(sc, "still-wrong", "another-long-one"); r.Status != 429 || r.Code() != "rate_limited" {
		t.Fatalf("the %dth wrong current password: %d %s", auth.MaxStaffFails, r.Status, r.Body)
	}
	if st, _ := signIn(next); st != 429 {
		t.Fatalf("sign-in after the lock: %d", st)
	}
}
