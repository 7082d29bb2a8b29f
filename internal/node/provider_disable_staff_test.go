package node_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

// TestDisableProviderSignsOutItsStaff: disabling a provider ends its
// staff's sessions at once on the node that disabled it and within the
// token cache's bound (auth's CacheTTL, 2 s) on another node sharing the
// database, even with caches warm; they cannot sign in again, on either
// node, with a clear answer (forbidden, both languages). Staff of other
// providers and the operator go on working.
func TestDisableProviderSignsOutItsStaff(t *testing.T) {
	a := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 5})
	b := nodetest.Start(t, nodetest.Options{Dir: a.Dir})
	ctx := context.Background()
	op := a.Client(a.Demo.Staff["operator"].Token)

	var doomed, other terminal.Provider
	op.JSON(t, "POST", "/v1/providers", map[string]any{"name": "Doomed Bus Co", "kind": "transit", "scenarios": []string{"transit.bus"}}, 201, &doomed)
	op.JSON(t, "POST", "/v1/providers", map[string]any{"name": "Other Library", "kind": "library", "scenarios": []string{"transit.bus"}}, 201, &other)
	const pw = "correct horse battery"
	for _, s := range []struct{ user, provider string }{{"doomed_clerk", doomed.ID}, {"doomed_boss", doomed.ID}, {"other_clerk", other.ID}} {
		if _, err := a.Auth.CreateStaff(ctx, s.user, s.user, auth.RoleProvider, pw, s.provider); err != nil {
			t.Fatal(err)
		}
	}
	signIn := func(base, user string) nodetest.Response {
		t.Helper()
		return nodetest.NewClient(base, "").Do(t, "POST", "/v1/auth/staff", map[string]string{"user": user, "password": pw})
	}
	token := func(r nodetest.Response) string {
		t.Helper()
		var out struct{ Token string }
		if r.Status != 200 {
			t.Fatalf("sign-in: %d %s", r.Status, r.Body)
		}
		r.Decode(t, &out)
		return out.Token
	}
	clerkA := token(signIn(a.URL, "doomed_clerk")) // used on a
	clerkB := token(signIn(b.URL, "doomed_boss"))  // used on b
	otherTok := token(signIn(a.URL, "other_clerk"))
	takings := func(base, tok, provider string) int {
		t.Helper()
		return nodetest.NewClient(base, tok).Do(t, "GET", "/v1/providers/"+provider+"/takings", nil).Status
	}
	// Warm both nodes' token caches.
	for _, c := range []struct{ base, tok, prov string }{{a.URL, clerkA, doomed.ID}, {b.URL, clerkB, doomed.ID}, {a.URL, otherTok, other.ID}, {b.URL, otherTok, other.ID}} {
		if st := takings(c.base, c.tok, c.prov); st != 200 {
			t.Fatalf("before the disable: takings %d", st)
		}
	}

	op.JSON(t, "POST", "/v1/providers/"+doomed.ID+"/disable", nil, 200, nil)

	// On a: at once, for every request a provider's staff may make.
	for _, path := range []string{"/v1/providers/" + doomed.ID + "/takings", "/v1/providers/" + doomed.ID + "/terminals", "/v1/providers"} {
		if r := a.Client(clerkA).Do(t, "GET", path, nil); r.Status != 401 {
			t.Fatalf("GET %s by staff of the disabled provider, on the node that disabled it: %d %s", path, r.Status, r.Body)
		}
	}
	// A new sign-in is refused with a clear answer, on both nodes at once.
	for _, base := range []string{a.URL, b.URL} {
		r := signIn(base, "doomed_clerk")
		p := r.Problem()
		if r.Status != 403 || r.Code() != "forbidden" || !strings.Contains(p["detail"].(string), "provider") || !strings.Contains(p["detail_zh"].(string), "服务商") {
			t.Fatalf("sign-in of staff of a disabled provider: %d %s", r.Status, r.Body)
		}
	}
	// A wrong password is still just a wrong password (nothing told).
	if r := nodetest.NewClient(a.URL, "").Do(t, "POST", "/v1/auth/staff", map[string]string{"user": "doomed_clerk", "password": "wrong password"}); r.Status != 401 || r.Code() != "unauthorized" {
		t.Fatalf("wrong password of staff of a disabled provider: %d %s", r.Status, r.Body)
	}
	// Others unaffected.
	if st := takings(a.URL, otherTok, other.ID); st != 200 {
		t.Fatalf("staff of another provider after the disable: %d", st)
	}
	token(signIn(a.URL, "other_clerk"))
	op.JSON(t, "GET", "/v1/providers", nil, 200, nil)

	// On b: within the token cache's bound.
	time.Sleep(2*time.Second + 300*time.Millisecond)
	if st := takings(b.URL, clerkB, doomed.ID); st != 401 {
		t.Fatalf("staff of the disabled provider still served by the other node after 2 s: %d", st)
	}
	if st := takings(b.URL, otherTok, other.ID); st != 200 {
		t.Fatalf("staff of another provider on the other node: %d", st)
	}

	// The disable is audited, once, naming the provider.
	if rows := auditRows(t, a, "disable_provider", doomed.ID); len(rows) != 1 {
		t.Fatalf("disable_provider audited %d times: %+v", len(rows), rows)
	}
}
