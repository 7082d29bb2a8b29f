package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/trust"
)

const codeUsage = `usage: yikatong code verify --trust FILE [--at RFC3339] [--node-key JWKFILE] CODE

Verifies an e-code (YK1:…) offline against a trust bundle file (the JSON of
GET /v1/trust or 'yikatong trust export') and prints one JSON object.
CODE "-" reads the code from standard input. Flags may come before or
after CODE. Quote CODE on a command line: Base45 has a space among its
characters.

  --trust FILE       the trust bundle (required)
  --at RFC3339       verify as of this instant (default: now)
  --node-key FILE    the node's public key as a JWK; when given, the
                     bundle's signature is checked against it

Exit status: 0 valid, 1 invalid, 2 usage error or unusable trust bundle.
`

// invalidCodeJSON is the answer for a code that does not verify.
type invalidCodeJSON struct {
	Valid bool        `json:"valid"`
	Error apperr.JSON `json:"error"`
}

// validCodeJSON keeps "flags" present (as []) on valid answers.
type validCodeJSON struct {
	Valid     bool     `json:"valid"`
	Scheme    string   `json:"scheme"`
	Issuer    string   `json:"issuer"`
	Kid       string   `json:"kid"`
	Alg       string   `json:"alg"`
	Subject   string   `json:"subject"`
	IssuedAt  string   `json:"issued_at"`
	ExpiresAt string   `json:"expires_at"`
	Category  string   `json:"category"`
	Flags     []string `json:"flags"`
}

// cmdCode implements `yikatong code verify`; args are the words after "code".
func cmdCode(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 1 && isHelp(args[0]) {
		fmt.Fprint(stdout, codeUsage)
		return 0
	}
	if len(args) == 0 || args[0] != "verify" {
		fmt.Fprint(stderr, codeUsage)
		return 2
	}
	fs := flag.NewFlagSet("code verify", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	trustFile := fs.String("trust", "", "")
	atFlag := fs.String("at", "", "")
	nodeKeyFile := fs.String("node-key", "", "")
	// Go's flag package stops at the first non-flag: parse again after each
	// positional so flags may follow CODE.
	var positional []string
	rest := args[1:]
	for {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprint(stdout, codeUsage)
				return 0
			}
			fmt.Fprintf(stderr, "yikatong code verify: %v\n\n%s", err, codeUsage)
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if *trustFile == "" || len(positional) != 1 {
		hint := ""
		if len(positional) > 1 && strings.Contains(positional[0], ":") {
			// Base45 has a space among its characters: an unquoted code
			// reaches us in pieces.
			hint = "a code may contain spaces (Base45): quote it ('YK1:…'), or pass - and send it on standard input\n" +
				"码中可能含有空格（Base45）：请用引号括起，或用 - 从标准输入读入\n"
		}
		fmt.Fprint(stderr, "yikatong code verify: need --trust FILE and exactly one CODE\n"+hint+"\n"+codeUsage)
		return 2
	}
	at := time.Now()
	if *atFlag != "" {
		t, err := time.Parse(time.RFC3339, *atFlag)
		if err != nil {
			fmt.Fprintf(stderr, "yikatong code verify: --at %q is not an RFC 3339 time (e.g. 2024-03-01T08:00:00Z)\n", *atFlag)
			return 2
		}
		at = t
	}
	code := positional[0]
	if code == "-" {
		b, err := io.ReadAll(io.LimitReader(stdin, 64<<10))
		if err != nil {
			fmt.Fprintf(stderr, "yikatong code verify: reading the code from stdin: %v\n", err)
			return 2
		}
		code = string(b)
	}
	code = strings.TrimSpace(code)

	var nodeKey *ecode.PublicKey
	if *nodeKeyFile != "" {
		b, err := os.ReadFile(*nodeKeyFile)
		if err != nil {
			fmt.Fprintf(stderr, "yikatong code verify: %v\n", err)
			return 2
		}
		var j ecode.JWK
		if err := json.Unmarshal(b, &j); err != nil {
			fmt.Fprintf(stderr, "yikatong code verify: %s is not a JWK: %v\n", *nodeKeyFile, err)
			return 2
		}
		k, err := ecode.PublicKeyFromJWK(j)
		if err != nil {
			fmt.Fprintf(stderr, "yikatong code verify: %s: %v\n", *nodeKeyFile, err)
			return 2
		}
		nodeKey = &k
	}
	data, err := os.ReadFile(*trustFile)
	if err != nil {
		fmt.Fprintf(stderr, "yikatong code verify: reading the trust bundle: %v\n", err)
		return 2
	}
	bundle, err := trust.Parse(data, nodeKey)
	if err != nil {
		writeCodeResult(stdout, stderr, invalidCodeJSON{Error: apperr.ToJSON(err)})
		fmt.Fprintf(stderr, "yikatong code verify: %s: %v\n", *trustFile, err)
		return 2
	}
	claims, hdr, err := bundle.VerifyCodeHeader(code, at)
	if err != nil {
		writeCodeResult(stdout, stderr, invalidCodeJSON{Error: apperr.ToJSON(err)})
		return 1
	}
	flags := claims.Flags
	if flags == nil {
		flags = []string{}
	}
	writeCodeResult(stdout, stderr, validCodeJSON{
		Valid: true, Scheme: ecode.Scheme, Issuer: claims.Issuer,
		Kid: ecode.PublicKey{Kid: hdr.Kid}.KidString(), Alg: hdr.Alg.String(),
		Subject: claims.Subject, IssuedAt: claims.IssuedAt.UTC().Format(time.RFC3339),
		ExpiresAt: claims.ExpiresAt.UTC().Format(time.RFC3339), Category: claims.Category, Flags: flags,
	})
	return 0
}

func writeCodeResult(stdout, stderr io.Writer, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintln(stderr, "yikatong code verify:", err)
		return
	}
	fmt.Fprintf(stdout, "%s\n", b)
}
