package node_test

import (
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

// The operator who onboards a provider gives it staff accounts over the
// API: the generated password is shown once and works; the provider's
// staff list holds them (no password hashes); disabling one ends their
// session at once. The operator cannot reach the city's own staff this
// way, other roles cannot use it, and a disabled provider gets no new
// staff. Each change is audited as the host's `yikatong staff` does.
func TestOperatorManagesProviderStaff(t *testing.T) {
	n := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 5})
	op := n.Client(n.Demo.Staff["operator"].Token)
	var bus, gone terminal.Provider
	op.JSON(t, "POST", "/v1/providers", map[string]any{"name": "Line 9 Bus Co", "kind": "transit", "scenarios": []string{"transit.bus"}}, 201, &bus)
	op.JSON(t, "POST", "/v1/providers", map[string]any{"name": "Closed Canteen", "kind": "school", "scenarios": []string{"campus.canteen"}}, 201, &gone)

	var made struct {
		User     auth.StaffUser `json:"user"`
		Password string         `json:"password"`
	}
	r := op.Do(t, "POST", "/v1/providers/"+bus.ID+"/staff", map[string]string{"username": "bus_zhao", "display_name": "赵师傅"})
	if r.Status != 201 || r.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	r.Decode(t, &made)
	if made.User.Role != auth.RoleProvider || made.User.ProviderID != bus.ID || len(made.Password) < 16 {
		t.Fatalf("created %+v", made)
	}
	var signed struct {
		Token string `json:"token"`
	}
	nodetest.NewClient(n.URL, "").JSON(t, "POST", "/v1/auth/staff", map[string]string{"user": "bus_zhao", "password": made.Password}, 200, &signed)
	staff := n.Client(signed.Token)
	staff.JSON(t, "GET", "/v1/providers/"+bus.ID+"/terminals", nil, 200, nil)
	if r := staff.Do(t, "GET", "/v1/providers/"+gone.ID+"/terminals", nil); r.Status != 403 {
		t.Fatalf("another provider's terminals: %d", r.Status)
	}

	var list []map[string]any
	op.JSON(t, "GET", "/v1/providers/"+bus.ID+"/staff", nil, 200, &list)
	if len(list) != 1 || list[0]["username"] != "bus_zhao" || strings.Contains(string(op.Do(t, "GET", "/v1/providers/"+bus.ID+"/staff", nil).Body), "hash") {
		t.Fatalf("staff list %v", list)
	}

	// Refusals: a name taken, a disabled provider, another role, the
	// city's own staff, an unknown provider.
	if r := op.Do(t, "POST", "/v1/providers/"+bus.ID+"/staff", map[string]string{"username": "bus_zhao"}); r.Code() != "already_exists" {
		t.Fatalf("same name again: %s", r.Body)
	}
	op.JSON(t, "POST", "/v1/providers/"+gone.ID+"/disable", nil, 200, nil)
	if r := op.Do(t, "POST", "/v1/providers/"+gone.ID+"/staff", map[string]string{"username": "cook_li"}); r.Code() != "forbidden" {
		t.Fatalf("staff for a disabled provider: %s", r.Body)
	}
	if r := n.Client(n.Demo.Staff["hr_admin"].Token).Do(t, "POST", "/v1/providers/"+bus.ID+"/staff", map[string]string{"username": "hr_made"}); r.Status != 403 {
		t.Fatalf("hr_admin creating provider staff: %d", r.Status)
	}
	if r := op.Do(t, "POST", "/v1/providers/"+bus.ID+"/staff/"+n.Demo.Staff["finance"].User+"/disable", nil); r.Code() != "not_found" {
		t.Fatalf("the operator disabling the city's finance user: %s", r.Body)
	}
	if r := op.Do(t, "POST", "/v1/providers/prv_nope/staff", map[string]string{"username": "ghost"}); r.Code() != "not_found" {
		t.Fatalf("unknown provider: %s", r.Body)
	}
	n.Client(n.Demo.Staff["finance"].Token).JSON(t, "GET", "/v1/ledger/check", nil, 200, nil)

	// Disabled: the session ends at once, and the password no longer
	// signs in.
	var off auth.StaffUser
	op.JSON(t, "POST", "/v1/providers/"+bus.ID+"/staff/bus_zhao/disable", nil, 200, &off)
	if !off.Disabled {
		t.Fatalf("disabled: %+v", off)
	}
	if r := staff.Do(t, "GET", "/v1/providers/"+bus.ID+"/terminals", nil); r.Status != 401 {
		t.Fatalf("the disabled user's session: %d", r.Status)
	}
	if r := nodetest.NewClient(n.URL, "").Do(t, "POST", "/v1/auth/staff", map[string]string{"user": "bus_zhao", "password": made.Password}); r.Status == 200 {
		t.Fatalf("a disabled user signed in")
	}
	entries, err := n.Auth.AuditLog(t.Context(), made.User.ID, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	actions := map[string]bool{}
	for _, e := range entries {
		actions[e.Action] = true
		if strings.Contains(e.Detail, made.Password) {
			t.Fatalf("the password in the audit log: %+v", e)
		}
	}
	if !actions["create_staff"] || !actions["disable_staff"] {
		t.Fatalf("audit of the staff user: %+v", entries)
	}
}
