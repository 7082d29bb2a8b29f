package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/trust"
)

func TestCmdCodeVerify(t *testing.T) {
	t0 := time.Date(2024, 3, 1, 8, 0, 0, 0, time.UTC)
	node, _ := ecode.GenerateSM2()
	issuer, _ := ecode.GenerateSM2()
	other, _ := ecode.GenerateEd25519()
	_, bundleJSON, err := trust.Build(trust.BuildInput{
		Issuer: "CN-410100", Keys: []ecode.PublicKey{issuer.Public()},
		Deny:     []trust.Revocation{{Subject: "tok_lost", At: t0.Add(20 * time.Second)}},
		IssuedAt: t0, TTL: time.Hour,
	}, node)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bundleFile := filepath.Join(dir, "trust.json")
	os.WriteFile(bundleFile, bundleJSON, 0o644)
	nodeKeyFile := filepath.Join(dir, "node.jwk")
	nk, _ := json.Marshal(node.Public().JWK())
	os.WriteFile(nodeKeyFile, nk, 0o644)
	wrongKeyFile := filepath.Join(dir, "wrong.jwk")
	wk, _ := json.Marshal(other.Public().JWK())
	os.WriteFile(wrongKeyFile, wk, 0o644)
	brokenFile := filepath.Join(dir, "broken.json")
	os.WriteFile(brokenFile, []byte("{not json"), 0o644)

	mk := func(s ecode.Signer, sub string, flags []string) string {
		c, err := ecode.Issue(s, ecode.Claims{Issuer: "CN-410100", Subject: sub, IssuedAt: t0, Category: ecode.CategoryInsuredNonlocal, Flags: flags})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	good := mk(issuer, "tok_a", []string{"senior_65"})
	noFlags := mk(issuer, "tok_b", nil)
	lost := mk(issuer, "tok_lost", nil)
	foreign := mk(other, "tok_a", nil)
	at := "2024-03-01T08:00:30Z"

	cases := []struct {
		name  string
		args  []string
		stdin string
		exit  int
		error string // expected error code, "" when valid or usage
	}{
		{"valid", []string{"verify", "--trust", bundleFile, "--at", at, good}, "", 0, ""},
		{"flags after code", []string{"verify", good, "--trust", bundleFile, "--at", at}, "", 0, ""},
		{"stdin", []string{"verify", "--trust", bundleFile, "--at", at, "-"}, "  " + good + "\r\n", 0, ""},
		{"pinned node key", []string{"verify", "--trust", bundleFile, "--node-key", nodeKeyFile, "--at", at, good}, "", 0, ""},
		{"no flags claim", []string{"verify", "--trust", bundleFile, "--at", at, noFlags}, "", 0, ""},
		{"expired", []string{"verify", "--trust", bundleFile, "--at", "2024-03-01T08:01:00Z", good}, "", 1, "expired"},
		{"not yet valid", []string{"verify", "--trust", bundleFile, "--at", "2024-03-01T07:59:00Z", good}, "", 1, "not_yet_valid"},
		{"revoked", []string{"verify", "--trust", bundleFile, "--at", at, lost}, "", 1, "revoked"},
		{"lost after scan", []string{"verify", "--trust", bundleFile, "--at", "2024-03-01T08:00:10Z", lost}, "", 0, ""},
		{"unknown key", []string{"verify", "--trust", bundleFile, "--at", at, foreign}, "", 1, "unknown_key"},
		{"malformed", []string{"verify", "--trust", bundleFile, "--at", at, good[:50]}, "", 1, "malformed"},
		{"bad signature", []string{"verify", "--trust", bundleFile, "--at", at, flipLast(good)}, "", 1, ""},
		{"scheme", []string{"verify", "--trust", bundleFile, "--at", at, "HC1:ABC"}, "", 1, "unsupported_scheme"},
		{"trust expired", []string{"verify", "--trust", bundleFile, "--at", "2024-03-01T09:00:01Z", good}, "", 1, "trust_expired"},
		{"wrong pinned key", []string{"verify", "--trust", bundleFile, "--node-key", wrongKeyFile, "--at", at, good}, "", 2, "bad_trust_bundle"},
		{"broken bundle", []string{"verify", "--trust", brokenFile, "--at", at, good}, "", 2, "bad_trust_bundle"},
		{"no trust", []string{"verify", good}, "", 2, ""},
		{"no code", []string{"verify", "--trust", bundleFile}, "", 2, ""},
		{"two codes", []string{"verify", "--trust", bundleFile, good, good}, "", 2, ""},
		{"bad at", []string{"verify", "--trust", bundleFile, "--at", "yesterday", good}, "", 2, ""},
		{"missing file", []string{"verify", "--trust", filepath.Join(dir, "nope.json"), good}, "", 2, ""},
		{"no subcommand", nil, "", 2, ""},
		{"unknown flag", []string{"verify", "--trust", bundleFile, "--frobnicate", good}, "", 2, ""},
	}
	t.Run("unquoted code with spaces", func(t *testing.T) {
		var out, errb bytes.Buffer
		// Base45 codes contain spaces; a shell splits an unquoted one.
		if exit := cmdCode(append([]string{"verify", "--trust", bundleFile}, strings.Fields("YK1:AB CD EF")...), strings.NewReader(""), &out, &errb); exit != 2 {
			t.Fatalf("exit %d", exit)
		}
		if !strings.Contains(errb.String(), "quote it") || !strings.Contains(errb.String(), "引号") {
			t.Fatalf("no hint about quoting: %q", errb.String())
		}
	})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			exit := cmdCode(c.args, strings.NewReader(c.stdin), &out, &errb)
			if exit != c.exit {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q", exit, c.exit, out.String(), errb.String())
			}
			if exit == 2 && c.error == "" {
				if out.Len() != 0 || errb.Len() == 0 {
					t.Fatalf("usage error: stdout %q stderr %q", out.String(), errb.String())
				}
				return
			}
			if strings.Count(out.String(), "\n") != 1 {
				t.Fatalf("want exactly one JSON line, got %q", out.String())
			}
			var v map[string]any
			if err := json.Unmarshal(out.Bytes(), &v); err != nil {
				t.Fatal(err)
			}
			if exit == 0 {
				if v["valid"] != true || v["scheme"] != "YK1" || v["issuer"] != "CN-410100" || v["alg"] != "SM2" ||
					v["kid"] != issuer.Public().KidString() || v["issued_at"] != "2024-03-01T08:00:00Z" ||
					v["expires_at"] != "2024-03-01T08:01:00Z" || v["category"] != "insured_nonlocal" {
					t.Fatalf("valid answer %v", v)
				}
				if _, ok := v["flags"].([]any); !ok {
					t.Fatalf("flags must be a list: %v", v)
				}
				return
			}
			e, _ := v["error"].(map[string]any)
			if v["valid"] != false || e == nil || e["message"] == "" || e["message_zh"] == "" {
				t.Fatalf("invalid answer %v", v)
			}
			if c.error != "" && e["code"] != c.error {
				t.Fatalf("error code %v, want %s", e["code"], c.error)
			}
			if c.name == "bad signature" && e["code"] != "bad_signature" && e["code"] != "malformed" {
				t.Fatalf("bit flip gave %v", e["code"])
			}
		})
	}
}

// flipLast changes the last Base45 character, which lies in the signature.
func flipLast(code string) string {
	last := code[len(code)-1]
	r := byte('0')
	if last == '0' {
		r = '1'
	}
	return code[:len(code)-1] + string(r)
}
