package web_test

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// TestStaffPasswordPage: a staff user changes the password handed to them
// on /console/password: a mismatch or a wrong current password is said
// on the page in its language, the change signs out their other console
// sessions and keeps this one, and only the new password signs in.
func TestStaffPasswordPage(t *testing.T) {
	eachBackend(t, 2, func(t *testing.T, tn *nodetest.Node) {
		ctx := t.Context()
		op := tn.Demo.Staff["operator"]
		b := newBrowser(t, tn.URL).staffAs(tn, "operator")
		other := newBrowser(t, tn.URL).staffAs(tn, "operator")
		_, page, _ := b.do("GET", "/console/", nil)
		if !strings.Contains(page, `href="/console/password"`) {
			t.Fatal("no way to the password page from the console")
		}
		tok := b.csrf("/console/password")
		post := func(cur, next, again string) (int, string, http.Header) {
			return b.do("POST", "/console/password", url.Values{"csrf": {tok}, "current_password": {cur}, "new_password": {next}, "new_password2": {again}})
		}
		if st, body, _ := post(op.Password, "brand-new-password", "brand-new-passw0rd"); st == http.StatusSeeOther || !strings.Contains(body, "两次输入的新密码不一致") {
			t.Fatalf("mismatch: %d %.400s", st, body)
		}
		if st, body, _ := post("not-the-password", "brand-new-password", "brand-new-password"); st == http.StatusSeeOther || !strings.Contains(body, "当前密码错误") {
			t.Fatalf("wrong current password: %d %.400s", st, body)
		}
		st, _, h := post(op.Password, "brand-new-password", "brand-new-password")
		if st != http.StatusSeeOther || h.Get("Location") != "/console/?m=password_changed" {
			t.Fatalf("change: %d %s", st, h.Get("Location"))
		}
		if _, home, _ := b.do("GET", "/console/?m=password_changed", nil); !strings.Contains(home, "密码已修改") {
			t.Fatalf("no confirmation: %.400s", home)
		}
		if st, _, h := other.do("GET", "/console/terminals", nil); st != http.StatusSeeOther || !strings.HasPrefix(h.Get("Location"), "/console/login") {
			t.Fatalf("the other session after the change: %d %s", st, h.Get("Location"))
		}
		if _, _, err := tn.Auth.LoginStaff(ctx, op.User, op.Password, time.Hour); apperr.CodeOf(err) != apperr.Unauthorized {
			t.Fatalf("old password: %v", err)
		}
		if _, _, err := tn.Auth.LoginStaff(ctx, op.User, "brand-new-password", time.Hour); err != nil {
			t.Fatalf("new password: %v", err)
		}
		if len(audited(t, tn, "change_own_password", "")) != 1 {
			t.Fatal("change not audited once")
		}
	})
}

// TestLanguageSwitchAfterAForm: on the answer to a form (a POST-only
// path) the language switch leads back to the page the form was on, not
// to the POST path (which a GET would not find).
func TestLanguageSwitchAfterAForm(t *testing.T) {
	eachBackend(t, 1, func(t *testing.T, tn *nodetest.Node) {
		b := newBrowser(t, tn.URL).staffAs(tn, "operator")
		tok := b.csrf("/console/password")
		post := func(referer string) string {
			form := url.Values{"csrf": {tok}, "current_password": {"x"}, "new_password": {"y"}, "new_password2": {"z"}}
			req, _ := http.NewRequest("POST", tn.URL+"/console/password", strings.NewReader(form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if referer != "" {
				req.Header.Set("Referer", referer)
			}
			resp, err := b.c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var sb strings.Builder
			if _, err := io.Copy(&sb, resp.Body); err != nil {
				t.Fatal(err)
			}
			return sb.String()
		}
		if page := post(tn.URL + "/console/password?from=menu"); !strings.Contains(page, `next=%2fconsole%2fpassword%3ffrom%3dmenu"`) {
			t.Fatalf("with the form's page as referer: %.2000s", page)
		}
		if page := post(""); !strings.Contains(page, `next=%2fconsole%2f"`) {
			t.Fatalf("without a referer: %.2000s", page)
		}
		if page := post("https://elsewhere.example/console/evil"); !strings.Contains(page, `next=%2fconsole%2f"`) {
			t.Fatalf("another site's referer: %.2000s", page)
		}
	})
}
