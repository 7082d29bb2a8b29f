package web_test

import (
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/idnum"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// TestConsoleHolderFlags: the staff resident page shows the holder flags
// in words and lets hr_admin set them with a CSRF-protected form; the
// change is audited (without naming the flags) and stored; other roles,
// forms without the token and unknown flags change nothing; the
// enrolment form takes flags too.
func TestConsoleHolderFlags(t *testing.T) {
	eachBackend(t, 3, func(t *testing.T, tn *nodetest.Node) {
		ctx := t.Context()
		rid := residentID(t, tn, tn.Demo.Residents[0].CardNumber)
		page := "/console/residents/" + rid
		flagsOf := func() []string {
			t.Helper()
			r, err := tn.Residents.Get(ctx, rid)
			if err != nil {
				t.Fatal(err)
			}
			return r.Flags
		}
		hr := newBrowser(t, tn.URL).staffAs(tn, "hr_admin")

		_, body, _ := hr.do("GET", page, nil)
		flags := contentOf(body)
		flags = flags[strings.Index(flags, `id="flags"`):]
		mustContain(t, "the flags box", flags, "身份标记", `id="flags-now"`, "无", `action="/console/residents/`+rid+`/flags"`,
			`name="flag" value="student"`, "学生", "教师", "残疾人", "退役军人", `name="csrf"`)
		mustNotContain(t, "the flags box", flags, `checked`, ">student<", ">disabled<")

		// Without the token, or by finance: refused, nothing changes.
		if st, _, _ := hr.do("POST", page+"/flags", url.Values{"flag": {"student"}}); st != http.StatusForbidden {
			t.Fatalf("no CSRF token: %d", st)
		}
		fin := newBrowser(t, tn.URL).staffAs(tn, "finance")
		if st, _, _ := fin.do("POST", page+"/flags", url.Values{"csrf": {fin.csrf("/console/ledger")}, "flag": {"student"}}); st != http.StatusForbidden {
			t.Fatalf("finance: %d", st)
		}
		if f := flagsOf(); f != nil {
			t.Fatalf("flags %q after refused forms", f)
		}

		// Set two.
		st, _, h := hr.do("POST", page+"/flags", url.Values{"csrf": {hr.csrf(page)}, "flag": {"student", "disabled"}})
		if st != http.StatusSeeOther || h.Get("Location") != page+"?m=flags" {
			t.Fatalf("set: %d %s", st, h.Get("Location"))
		}
		if f := flagsOf(); !slices.Equal(f, []string{"disabled", "student"}) {
			t.Fatalf("stored flags %q", f)
		}
		_, body, _ = hr.do("GET", h.Get("Location"), nil)
		mustContain(t, "the page after saving", body, "身份标记已保存", `data-flag="student">学生<`, `data-flag="disabled">残疾人<`,
			`value="student" checked`, `value="disabled" checked`, `id="flags-set"`)
		mustNotContain(t, "the page after saving", body, `value="teacher" checked`)
		// Saved and audited by the node's SetResidentFlags, as the API's
		// PUT /v1/residents/{id}/flags does: one row naming how many flags,
		// not which, and the setter sealed with the flags.
		rows := audited(t, tn, "set_flags", rid)
		if len(rows) != 1 || rows[0].ActorRole != "hr_admin" || rows[0].Detail != "flags=2" {
			t.Fatalf("audit rows %+v", rows)
		}
		if r, err := tn.Residents.Get(ctx, rid); err != nil || r.FlagsSetBy != "hr_admin:"+rows[0].Actor {
			t.Fatalf("flags set by %q, want hr_admin:%s (%v)", r.FlagsSetBy, rows[0].Actor, err)
		}
		// The page names the setter and the card's history its actors in
		// words, as the audit page does (not role:id, not "enrolment").
		mustContain(t, "the page after saving", body, "人社管理员 · "+rows[0].Actor, "建档")
		mustNotContain(t, "the page after saving", body, "hr_admin:"+rows[0].Actor, ">enrolment<")
		other := residentID(t, tn, tn.Demo.Residents[1].CardNumber)
		if _, err := tn.SetResidentFlags(ctx, auth.Principal{Kind: auth.KindStaff, Subject: rows[0].Actor, Role: auth.RoleHRAdmin}, other, []string{"student", "disabled"}); err != nil {
			t.Fatal(err)
		}
		if api := audited(t, tn, "set_flags", other); len(api) != 1 || api[0].Detail != rows[0].Detail || api[0].Actor != rows[0].Actor {
			t.Fatalf("the node's audit rows %+v, the console's %+v", api, rows)
		}
		hr.do("GET", "/lang?l=en", nil)
		_, body, _ = hr.do("GET", page, nil)
		mustContain(t, "the English page", body, "Holder flags", `data-flag="student">Student<`, `data-flag="disabled">Disabled<`)
		hr.do("GET", "/lang?l=zh", nil)

		// An unknown flag: the page again, with the reason; nothing stored.
		st, body, _ = hr.do("POST", page+"/flags", url.Values{"csrf": {hr.csrf(page)}, "flag": {"student", "wizard"}})
		if st != http.StatusUnprocessableEntity || !strings.Contains(body, `id="error"`) || !strings.Contains(body, "未知的身份标记") {
			t.Fatalf("unknown flag: %d %.2000s", st, contentOf(body))
		}
		if f := flagsOf(); !slices.Equal(f, []string{"disabled", "student"}) {
			t.Fatalf("flags %q after a refused form", f)
		}

		// None checked: none.
		if st, _, _ := hr.do("POST", page+"/flags", url.Values{"csrf": {hr.csrf(page)}}); st != http.StatusSeeOther {
			t.Fatalf("clear: %d", st)
		}
		if f := flagsOf(); f != nil {
			t.Fatalf("flags %q after clearing", f)
		}
		if n := len(audited(t, tn, "set_flags", rid)); n != 2 {
			t.Fatalf("%d set_flags audit rows, want 2", n)
		}

		// Enrolment with a flag.
		num := idnum.Generate(rand.New(rand.NewPCG(5, 6)), idnum.KindCitizen, "410105", time.Now().AddDate(-50, 0, 0), "M")
		st, body, h = hr.do("POST", "/console/enrol", url.Values{"csrf": {hr.csrf("/console/enrol")}, "name": {"吴老兵"}, "id_number": {num},
			"category": {"local"}, "issue_card": {"1"}, "flag": {"veteran"}})
		if st != http.StatusSeeOther {
			t.Fatalf("enrol: %d %.1500s", st, contentOf(body))
		}
		newID := strings.TrimPrefix(strings.TrimSuffix(h.Get("Location"), "?m=enrolled"), "/console/residents/")
		r, err := tn.Residents.Get(ctx, newID)
		if err != nil || !slices.Equal(r.Flags, []string{"veteran"}) {
			t.Fatalf("enrolled %+v %v", r, err)
		}
	})
}
