package web_test

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

var staffPwRe = regexp.MustCompile(`id="new-staff-password">([^<]+)<`)

// TestConsoleProviderStaff: the operator creates a provider's staff user
// from the console (the generated password is shown once, works on the
// API's sign-in, and is in no other page nor the audit log), a duplicate
// user name and a disabled provider are refused in plain words, and
// disabling the user from the console ends their token at once.
func TestConsoleProviderStaff(t *testing.T) {
	eachBackend(t, 3, func(t *testing.T, tn *nodetest.Node) {
		ctx := t.Context()
		api := tn.Client(tn.Demo.Staff["operator"].Token)
		var bus, gone terminal.Provider
		api.JSON(t, "POST", "/v1/providers", map[string]any{"name": "员工测试公交 Staff Bus", "kind": "transit", "scenarios": []string{"transit.bus"}}, 201, &bus)
		api.JSON(t, "POST", "/v1/providers", map[string]any{"name": "Gone Co", "kind": "transit", "scenarios": []string{"transit.bus"}}, 201, &gone)
		if r := api.Do(t, "POST", "/v1/providers/"+gone.ID+"/disable", nil); r.Status != 200 {
			t.Fatalf("disable provider: %d %s", r.Status, r.Body)
		}
		page := "/console/providers/" + bus.ID + "/staff"

		op := newBrowser(t, tn.URL).staffAs(tn, "operator")
		// The terminals page links to the provider's staff.
		if _, list, _ := op.do("GET", "/console/terminals", nil); !strings.Contains(list, `href="`+page+`"`) {
			t.Fatal("the terminals page does not link to the provider's staff")
		}
		tok := op.csrf(page)
		st, body, h := op.do("POST", page, url.Values{"csrf": {tok}, "username": {"busclerk"}, "display_name": {"公交 职员"}})
		m := staffPwRe.FindStringSubmatch(body)
		if st != 200 || m == nil {
			t.Fatalf("create staff: %d %.800s", st, body)
		}
		if h.Get("Cache-Control") != "no-store" {
			t.Fatalf("the password page may be cached: %q", h.Get("Cache-Control"))
		}
		pw := m[1]
		if len(pw) != auth.GeneratedPasswordLen {
			t.Fatalf("password %q", pw)
		}
		// Listed, and the password is not shown again nor audited.
		_, list, _ := op.do("GET", page, nil)
		if strings.Contains(list, pw) || !strings.Contains(list, "busclerk") || !strings.Contains(list, "公交 职员") || !strings.Contains(list, "员工测试公交 Staff Bus") {
			t.Fatalf("staff list: password shown again, or the user missing: %.2000s", list)
		}
		made := audited(t, tn, "create_staff", "")
		if len(made) == 0 {
			t.Fatal("create_staff not audited")
		}
		for _, e := range made {
			if strings.Contains(e.Detail, pw) {
				t.Fatal("the password is in the audit log")
			}
		}
		// A duplicate user name, and a disabled provider: refused in words.
		if st, body, _ := op.do("POST", page, url.Values{"csrf": {tok}, "username": {"busclerk"}, "display_name": {"x"}}); st != http.StatusConflict || !strings.Contains(errorText(body), "已存在") || staffPwRe.MatchString(body) {
			t.Fatalf("duplicate user name: %d %q", st, errorText(body))
		}
		if st, body, _ := op.do("POST", "/console/providers/"+gone.ID+"/staff", url.Values{"csrf": {tok}, "username": {"goneclerk"}}); st != http.StatusForbidden || !strings.Contains(errorText(body), "已停用") {
			t.Fatalf("disabled provider: %d %q", st, errorText(body))
		}
		en := newBrowser(t, tn.URL)
		en.do("GET", "/lang?l=en", nil)
		en.staffAs(tn, "operator")
		if st, body, _ := en.do("POST", page, url.Values{"csrf": {en.csrf(page)}, "username": {"busclerk"}}); st != http.StatusConflict || !strings.Contains(errorText(body), "already exists") {
			t.Fatalf("duplicate user name in English: %d %q", st, errorText(body))
		}
		// No CSRF token: refused.
		if st, _, _ := op.do("POST", page, url.Values{"username": {"nocsrf"}}); st != http.StatusForbidden {
			t.Fatalf("create without CSRF: %d", st)
		}

		// The password signs in on the API.
		r := tn.Client("").Do(t, "POST", "/v1/auth/staff", map[string]string{"user": "busclerk", "password": pw})
		var out struct{ Token, Role string }
		if r.Status != 200 {
			t.Fatalf("sign-in with the shown password: %d %s", r.Status, r.Body)
		}
		r.Decode(t, &out)
		if p, err := tn.Auth.Authenticate(ctx, out.Token); err != nil || p.Role != auth.RoleProvider || p.ProviderID != bus.ID {
			t.Fatalf("the new user's token: %+v %v", p, err)
		}
		// Another provider's user, or a city staff user, is not disabled here.
		if st, _, _ := op.do("POST", page+"/disable", url.Values{"csrf": {tok}, "username": {tn.Demo.Staff["hr_admin"].User}}); st != http.StatusNotFound {
			t.Fatalf("disabling a city staff user from a provider's page: %d", st)
		}
		// The disable button asks about the staff user, not a terminal.
		if _, list, _ := op.do("GET", page, nil); !strings.Contains(list, "确定停用该工作人员账号") || strings.Contains(list, "确定停用该终端") {
			t.Fatal("the staff user's disable button does not ask about a staff user")
		}
		// Disabling from the console ends the token at once.
		if st, body, h := op.do("POST", page+"/disable", url.Values{"csrf": {tok}, "username": {"busclerk"}}); st != http.StatusSeeOther || !strings.HasPrefix(h.Get("Location"), page) {
			t.Fatalf("disable: %d %.300s", st, body)
		}
		if r := tn.Client(out.Token).Do(t, "GET", "/v1/providers/"+bus.ID+"/takings", nil); r.Status != http.StatusUnauthorized {
			t.Fatalf("a disabled user's token still works: %d %s", r.Status, r.Body)
		}
		if r := tn.Client("").Do(t, "POST", "/v1/auth/staff", map[string]string{"user": "busclerk", "password": pw}); r.Status == 200 {
			t.Fatal("a disabled user signs in")
		}
		if _, list, _ := op.do("GET", page+"?m=staff_disabled", nil); !strings.Contains(list, "工作人员已停用") || strings.Contains(list, "disable-staff") {
			t.Fatalf("after disabling: %.2000s", list)
		}
		if len(audited(t, tn, "disable_staff", "")) == 0 {
			t.Fatal("disable_staff not audited")
		}
	})
}

// TestConsoleProviderStaffRoles: only the operator manages provider
// staff; hr_admin, finance and the provider's own staff get 403.
func TestConsoleProviderStaffRoles(t *testing.T) {
	eachBackend(t, 3, func(t *testing.T, tn *nodetest.Node) {
		prov := tn.Demo.Terminals[0].Provider
		if _, err := tn.Auth.CreateStaff(t.Context(), "roleclerk", "clerk", auth.RoleProvider, "correct horse battery", prov); err != nil {
			t.Fatal(err)
		}
		page := "/console/providers/" + prov + "/staff"
		browsers := map[string]*browser{
			"hr_admin": newBrowser(t, tn.URL).staffAs(tn, "hr_admin"),
			"finance":  newBrowser(t, tn.URL).staffAs(tn, "finance"),
		}
		pb := newBrowser(t, tn.URL)
		pb.staffLogin("roleclerk", "correct horse battery")
		browsers["provider"] = pb
		for role, b := range browsers {
			if st, _, _ := b.do("GET", page, nil); st != http.StatusForbidden {
				t.Errorf("%s reading provider staff: %d", role, st)
			}
			tok := b.csrf("/console/")
			if st, body, _ := b.do("POST", page, url.Values{"csrf": {tok}, "username": {"sneaky_" + role}}); st != http.StatusForbidden || staffPwRe.MatchString(body) {
				t.Errorf("%s creating provider staff: %d", role, st)
			}
			if st, _, _ := b.do("POST", page+"/disable", url.Values{"csrf": {tok}, "username": {"roleclerk"}}); st != http.StatusForbidden {
				t.Errorf("%s disabling provider staff: %d", role, st)
			}
		}
		if _, _, err := tn.Auth.StaffByUsername(t.Context(), "sneaky_hr_admin"); err == nil {
			t.Error("hr_admin created a provider staff user")
		}
		// The provider's own staff see no link to staff management.
		if _, list, _ := pb.do("GET", "/console/terminals", nil); strings.Contains(list, "provider-staff") {
			t.Error("a provider sees the staff management link")
		}
		if u, _, err := tn.Auth.StaffByUsername(t.Context(), "roleclerk"); err != nil || u.Disabled {
			t.Errorf("the provider's user was disabled: %+v %v", u, err)
		}
	})
}
