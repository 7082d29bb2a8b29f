package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// staffCmd runs `yikatong staff ARGS…` with stdin, returning the exit
// status, stdout and stderr apart (stdout must hold only a password).
func staffCmd(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb strings.Builder
	code := run(append([]string{"staff"}, args...), strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

var generatedPassword = regexp.MustCompile(`^[a-hjkmnp-z2-9]{20}\n$`)

// signIn signs user in over HTTP; it returns the token, or "" and the
// answer's status.
func signIn(t *testing.T, n *nodetest.Node, user, pw string) (string, int) {
	t.Helper()
	r := n.Client("").Do(t, "POST", "/v1/auth/staff", map[string]string{"user": user, "password": pw})
	if r.Status != 200 {
		return "", r.Status
	}
	var tok struct{ Token, Role string }
	r.Decode(t, &tok)
	return tok.Token, 200
}

func mustSignIn(t *testing.T, n *nodetest.Node, user, pw string) string {
	t.Helper()
	tok, status := signIn(t, n, user, pw)
	if status != 200 {
		t.Fatalf("sign-in of %s: %d", user, status)
	}
	return tok
}

// revokedWithin waits until GET path with tok answers 401 and fails if
// that takes longer than the serving node's token cache may trust it.
func revokedWithin(t *testing.T, n *nodetest.Node, tok, path string) {
	t.Helper()
	bound := n.Auth.CacheTTL + time.Second
	start := time.Now()
	for {
		r := n.Client(tok).Do(t, "GET", path, nil)
		if r.Status == 401 {
			return
		}
		if time.Since(start) > bound {
			t.Fatalf("GET %s with a revoked token still answers %d after %v", path, r.Status, bound)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCmdStaff: a real city, started on an empty directory, gets its
// staff from `yikatong staff` run beside the running node: users sign in
// over HTTP with the printed password and work (an operator onboards a
// provider, an hr_admin enrols a resident, a provider user sees their
// provider); disabling ends a user's sessions and sign-ins, enabling
// restores sign-in; a password reset ends the old password and sessions
// and a sign-in lock; refusals are clear in both languages; every change
// is in the audit log with the administrator as actor. Both backends.
func TestCmdStaff(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		n := nodetest.Start(t, nodetest.Options{DB: dsn})
		node := []string{"--data", n.Dir, "--db", dsn}
		staff := func(stdin string, args ...string) (int, string, string) {
			t.Helper()
			return staffCmd(t, stdin, append(args, node...)...)
		}

		// A new city has no one to sign in.
		code, out, msg := staff("", "list", "--json")
		if code != 0 || strings.TrimSpace(out) != "[]" {
			t.Fatalf("list of a new city: exit %d %q %s", code, out, msg)
		}

		// An operator, with a generated password: stdout holds it alone.
		code, out, msg = staff("", "add", "--user", "op", "--role", "operator", "--name", "运营 王")
		if code != 0 || !generatedPassword.MatchString(out) {
			t.Fatalf("add operator: exit %d stdout %q stderr %s", code, out, msg)
		}
		opPW := strings.TrimSpace(out)
		if strings.Contains(msg, opPW) {
			t.Fatalf("the password is on stderr too: %s", msg)
		}
		opTok := mustSignIn(t, n, "op", opPW)
		var prov struct{ ID string }
		n.Client(opTok).JSON(t, "POST", "/v1/providers", map[string]any{"name": "Bus Co", "kind": "transit", "scenarios": []string{"transit.bus"}}, 201, &prov)
		var provs []struct{ ID string }
		n.Client(opTok).JSON(t, "GET", "/v1/providers", nil, 200, &provs)
		if len(provs) != 1 || provs[0].ID != prov.ID {
			t.Fatalf("providers %+v", provs)
		}

		// An hr_admin with a password from stdin: nothing on stdout.
		const hrPW = "chosen password 1"
		code, out, msg = staff(hrPW+"\n", "add", "--user", "hr", "--role", "hr_admin", "--password-stdin")
		if code != 0 || out != "" {
			t.Fatalf("add hr_admin: exit %d stdout %q stderr %s", code, out, msg)
		}
		hrTok := mustSignIn(t, n, "hr", hrPW)
		n.Client(hrTok).JSON(t, "POST", "/v1/residents", map[string]any{"name": "李四", "id_number": "11010519491231002X", "category": "local", "pin": "258036"}, 201, nil)

		// Provider users need an existing provider; others have none.
		for _, c := range []struct {
			args []string
			want []string
		}{
			{[]string{"--user", "clerk", "--role", "provider"}, []string{"validation_failed", "provider staff need a provider", "服务商用户须指定服务商"}},
			{[]string{"--user", "clerk", "--role", "provider", "--provider", "prv_nope"}, []string{"validation_failed", `no provider "prv_nope"`, "不存在服务商"}},
			{[]string{"--user", "fin", "--role", "finance", "--provider", prov.ID}, []string{"validation_failed", "only provider staff", "不能指定服务商"}},
			{[]string{"--user", "op", "--role", "finance"}, []string{"already_exists", `"op" already exists`, "已存在"}},
			{[]string{"--user", "boss", "--role", "admin"}, []string{"validation_failed", "role must be", "角色须为"}},
			{[]string{"--user", "wang wei", "--role", "finance"}, []string{"validation_failed", "without spaces", "不含空格"}},
		} {
			code, out, msg := staff("", append([]string{"add"}, c.args...)...)
			if code != 1 || out != "" {
				t.Fatalf("add %v: exit %d stdout %q stderr %s", c.args, code, out, msg)
			}
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Fatalf("add %v: %q lacks %q", c.args, msg, w)
				}
			}
		}
		if code, _, msg := staff("short\n", "add", "--user", "fin", "--role", "finance", "--password-stdin"); code != 1 || !strings.Contains(msg, "at least 8") {
			t.Fatalf("short password from stdin: exit %d %s", code, msg)
		}
		if code, _, msg := staff("", "add", "--user", "fin", "--role", "finance", "--password-stdin"); code != 1 || !strings.Contains(msg, "no password") {
			t.Fatalf("empty stdin: exit %d %s", code, msg)
		}
		if code, _, _ := staff("", "add", "--role", "finance"); code != 2 {
			t.Fatalf("add without --user: exit %d", code)
		}
		code, out, msg = staff("", "add", "--user", "clerk", "--role", "provider", "--provider", prov.ID)
		if code != 0 || !generatedPassword.MatchString(out) {
			t.Fatalf("add provider user: exit %d %q %s", code, out, msg)
		}
		clerkPW := strings.TrimSpace(out)
		n.Client(mustSignIn(t, n, "clerk", clerkPW)).JSON(t, "GET", "/v1/providers", nil, 200, &provs)
		if len(provs) != 1 || provs[0].ID != prov.ID {
			t.Fatalf("the provider user's providers: %+v", provs)
		}

		// The list: every user, never a hash.
		code, out, msg = staff("", "list")
		if code != 0 || strings.Contains(out, "pbkdf2") || !strings.Contains(out, "运营 王") || !strings.Contains(out, prov.ID) || strings.Count(out, "\n") != 4 {
			t.Fatalf("list: exit %d %q %s", code, out, msg)
		}
		checkColumnsAligned(t, out)
		code, out, _ = staff("", "list", "--json")
		var list []map[string]any
		if err := json.Unmarshal([]byte(out), &list); code != 0 || err != nil || len(list) != 3 {
			t.Fatalf("list --json: exit %d %q %v", code, out, err)
		}
		for _, u := range list {
			for _, k := range []string{"id", "username", "display_name", "role", "disabled", "created_at"} {
				if _, ok := u[k]; !ok {
					t.Fatalf("list --json: %v lacks %s", u, k)
				}
			}
			if len(u) > 7 || u["password_hash"] != nil {
				t.Fatalf("list --json: %v", u)
			}
		}

		// Disable: the live (cached) session ends, sign-in is refused.
		n.Client(hrTok).JSON(t, "GET", "/v1/audit", nil, 200, nil) // cached now
		if code, out, msg := staff("", "disable", "--user", "hr"); code != 0 || out != "" || !strings.Contains(msg, "disabled") || !strings.Contains(msg, "hr 已停用") {
			t.Fatalf("disable: exit %d %q %s", code, out, msg)
		}
		revokedWithin(t, n, hrTok, "/v1/audit")
		if _, status := signIn(t, n, "hr", hrPW); status != 401 {
			t.Fatalf("sign-in of a disabled user: %d", status)
		}
		if _, err := n.Auth.Authenticate(context.Background(), opTok); err != nil {
			t.Fatalf("another user's session ended: %v", err)
		}
		// Enable: sign-in works again; the old session stays ended.
		if code, _, msg := staff("", "enable", "--user", "hr"); code != 0 || !strings.Contains(msg, "can sign in again") || !strings.Contains(msg, "hr 可以重新登录") {
			t.Fatalf("enable: exit %d %s", code, msg)
		}
		hrTok2 := mustSignIn(t, n, "hr", hrPW)
		if r := n.Client(hrTok).Do(t, "GET", "/v1/audit", nil); r.Status != 401 {
			t.Fatalf("a session ended by the disable works after the enable: %d", r.Status)
		}
		if code, _, msg := staff("", "disable", "--user", "nobody"); code != 1 || !strings.Contains(msg, "not_found") || !strings.Contains(msg, "不存在") {
			t.Fatalf("disable an unknown user: exit %d %s", code, msg)
		}

		// Password reset: old password and session end, the new one works.
		n.Client(opTok).JSON(t, "GET", "/v1/providers", nil, 200, nil)
		code, out, msg = staff("", "password", "--user", "op")
		if code != 0 || !generatedPassword.MatchString(out) || strings.TrimSpace(out) == opPW || !strings.Contains(msg, "new password for op") || !strings.Contains(msg, "op 的密码已重置") {
			t.Fatalf("password: exit %d %q %s", code, out, msg)
		}
		opPW2 := strings.TrimSpace(out)
		revokedWithin(t, n, opTok, "/v1/providers")
		if _, status := signIn(t, n, "op", opPW); status != 401 {
			t.Fatalf("the old password after a reset: %d", status)
		}
		n.Client(mustSignIn(t, n, "op", opPW2)).JSON(t, "GET", "/v1/providers", nil, 200, nil)

		// A reset clears a sign-in lock.
		for i := 0; i < auth.MaxStaffFails; i++ {
			signIn(t, n, "clerk", "wrong password")
		}
		if _, status := signIn(t, n, "clerk", clerkPW); status != 429 {
			t.Fatalf("a locked name: %d", status)
		}
		if code, out, msg := staff("new clerk password\r\n", "password", "--user", "clerk", "--password-stdin"); code != 0 || out != "" {
			t.Fatalf("password from stdin: exit %d %q %s", code, out, msg)
		}
		mustSignIn(t, n, "clerk", "new clerk password")

		// The audit log names the administrator for every change.
		var log []auth.AuditEntry
		n.Client(hrTok2).JSON(t, "GET", "/v1/audit?limit=500", nil, 200, &log)
		seen := map[string]int{}
		for _, e := range log {
			if e.ActorRole == auth.RoleAdmin {
				if !strings.Contains(e.Actor, "@") {
					t.Fatalf("audit actor %q", e.Actor)
				}
				seen[e.Action]++
			}
			for _, pw := range []string{opPW, opPW2, hrPW, clerkPW, "new clerk password"} {
				if strings.Contains(e.Detail, pw) {
					t.Fatalf("a password in the audit log: %+v", e)
				}
			}
		}
		for action, want := range map[string]int{"create_staff": 3, "disable_staff": 1, "enable_staff": 1, "reset_staff_password": 2, "list_staff": 3} {
			if seen[action] != want {
				t.Fatalf("audit: %d %s by the administrator, want %d (%v)", seen[action], action, want, seen)
			}
		}

		// A database behind this version's schema is refused, not migrated.
		if _, err := n.DB.W.ExecContext(context.Background(), `DELETE FROM schema_migrations WHERE name = (SELECT MAX(name) FROM schema_migrations)`); err != nil {
			t.Fatal(err)
		}
		if code, out, msg := staff("", "add", "--user", "late", "--role", "finance"); code != 1 || out != "" || !strings.Contains(msg, "lacks 1 migration") {
			t.Fatalf("a database behind: exit %d %q %s", code, out, msg)
		}
	})
}

// TestCmdStaffNeedsANode: without a node's database the commands refuse
// and create nothing; usage errors exit 2.
func TestCmdStaffNeedsANode(t *testing.T) {
	dir := t.TempDir()
	code, out, msg := staffCmd(t, "", "add", "--user", "op", "--role", "operator", "--data", dir)
	if code != 1 || out != "" || !strings.Contains(msg, "holds no SQLite database") {
		t.Fatalf("add on an empty directory: exit %d %q %s", code, out, msg)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("staff add wrote into an empty directory: %v", ents)
	}
	if code, _, msg := staffCmd(t, "", "add", "--user", "op", "--role", "operator", "--data", filepath.Join(dir, "none")); code != 1 || !strings.Contains(msg, "no node data") {
		t.Fatalf("add on a missing directory: exit %d %s", code, msg)
	}
	for _, args := range [][]string{{}, {"frobnicate"}, {"list", "extra"}, {"disable"}, {"password"}, {"add", "--user", "x"}} {
		if code, _, _ := staffCmd(t, "", args...); code != 2 {
			t.Fatalf("staff %v: exit %d, want 2", args, code)
		}
	}
	if code, out, _ := staffCmd(t, "", "help"); code != 0 || !strings.Contains(out, "--password-stdin") {
		t.Fatalf("staff help: exit %d %q", code, out)
	}
}

// checkColumnsAligned fails unless every column of a table (cells two or
// more spaces apart) starts at the same terminal column on every line,
// counting a Han character as two columns.
func checkColumnsAligned(t *testing.T, table string) {
	t.Helper()
	cell := regexp.MustCompile(`\S+(?: \S+)*`)
	cols := func(line string) []int {
		var starts []int
		for _, m := range cell.FindAllStringIndex(line, -1) {
			w := 0
			for _, r := range line[:m[0]] {
				if unicode.Is(unicode.Han, r) {
					w += 2
				} else {
					w++
				}
			}
			starts = append(starts, w)
		}
		return starts
	}
	lines := strings.Split(strings.TrimRight(table, "\n"), "\n")
	want := cols(lines[0])
	for _, l := range lines[1:] {
		if got := cols(l); !slices.Equal(got, want) {
			t.Fatalf("columns out of line: %v, the header's %v:\n%s", got, want, table)
		}
	}
}

func TestDisplayWidthTable(t *testing.T) {
	for s, want := range map[string]int{"": 0, "wang": 4, "王芳": 4, "运营 王": 7, "ＡＢ": 4, "é": 1, "e\u0301": 1} {
		if got := displayWidth(s); got != want {
			t.Errorf("displayWidth(%q) = %d, want %d", s, got, want)
		}
	}
	var b strings.Builder
	if err := writeTable(&b, [][]string{{"USER", "NAME", "ROLE"}, {"wang", "王芳芳", "finance"}, {"li", "-", "operator"}, {"x", "a\tb", "provider"}}); err != nil {
		t.Fatal(err)
	}
	want := "USER  NAME    ROLE\nwang  王芳芳  finance\nli    -       operator\nx     a b     provider\n"
	if b.String() != want {
		t.Fatalf("table:\n%s\nwant:\n%s", b.String(), want)
	}
	checkColumnsAligned(t, b.String())
}
