package main

import (
	"bytes"
	"os"
	"sort"
	"strings"
	"testing"
)

// TestEveryHelpExitsZero: -h and --help of yikatong, of every command and
// of every subcommand print the usage on stdout (nothing on stderr) and
// exit 0, and do nothing else (no node is opened, no key written).
func TestEveryHelpExitsZero(t *testing.T) {
	cases := [][]string{{}}
	var names []string
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		cases = append(cases, []string{name})
	}
	for _, sub := range [][]string{
		{"code", "verify"}, {"id", "check"}, {"keys", "rotate"}, {"ledger", "check"}, {"trust", "export"},
		{"region", "keygen"}, {"region", "sign"}, {"region", "up"}, {"region", "simulate"},
		{"staff", "add"}, {"staff", "list"}, {"staff", "disable"}, {"staff", "enable"}, {"staff", "password"},
		{"terminal", "upload"},
	} {
		if _, ok := commands[sub[0]]; !ok {
			t.Fatalf("no command %s", sub[0])
		}
		cases = append(cases, sub)
	}
	dir := t.TempDir()
	t.Chdir(dir) // a help that acted anyway would write here
	for _, c := range cases {
		for _, h := range []string{"-h", "--help"} {
			args := append(append([]string{}, c...), h)
			var out, errb bytes.Buffer
			code := run(args, strings.NewReader(""), &out, &errb)
			if code != 0 || !strings.Contains(strings.ToLower(out.String()), "usage") || errb.Len() != 0 {
				t.Errorf("yikatong %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out.String(), errb.String())
			}
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("a help wrote %v", ents)
	}
}
