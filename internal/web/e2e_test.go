package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	_ "image/png"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/makiuchi-d/gozxing"
	zxqr "github.com/makiuchi-d/gozxing/qrcode"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/idnum"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// browserTools finds chromium, node and playwright-core, or says what is
// missing.
func browserTools() (chromium, nodeBin, missing string) {
	chromium = os.Getenv("CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromium); err != nil {
		return "", "", "chromium (" + chromium + ")"
	}
	nodeBin, err := exec.LookPath("node")
	if err != nil {
		return "", "", "node"
	}
	if _, err := os.Stat(filepath.Join(repoRoot(), "e2e", "node_modules", "playwright-core")); err != nil {
		return "", "", "e2e/node_modules/playwright-core (run npm install in e2e/)"
	}
	return chromium, nodeBin, ""
}

// enrolCSV writes a CSV with three good rows (one with HTML in the name)
// and three bad ones: a wrong check digit, a missing name, a bare quote.
func enrolCSV(t *testing.T, dir string) string {
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	id := func(kind, region string) string {
		birth := time.Date(1960+rng.IntN(40), time.Month(1+rng.IntN(12)), 1+rng.IntN(28), 0, 0, 0, 0, time.UTC)
		return idnum.Generate(rng, kind, region, birth, "F")
	}
	good1, good2, good3 := id(idnum.KindCitizen, "410105"), id(idnum.KindCitizen, "320102"), id(idnum.KindPermanentResident, "410000")
	bad := id(idnum.KindCitizen, "410105")
	last := bad[17]
	repl := byte('0')
	if last == '0' {
		repl = '1'
	}
	bad = bad[:17] + string(repl)
	var b strings.Builder
	b.WriteString("name,id_number,category,pin\n")
	fmt.Fprintf(&b, "测试甲,%s,local,\n", good1)
	fmt.Fprintf(&b, "<b>Bold</b>,%s,insured_nonlocal,\n", good2)
	fmt.Fprintf(&b, "Maria Rossi,%s,permanent_resident,\n", good3)
	fmt.Fprintf(&b, "测试乙,%s,local,\n", bad)
	fmt.Fprintf(&b, ",%s,local,\n", id(idnum.KindCitizen, "410105"))
	fmt.Fprintf(&b, "Jo\"hn,%s,local,\n", id(idnum.KindCitizen, "410105"))
	p := filepath.Join(dir, "enrol.csv")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBrowser drives the pages in headless Chromium (e2e/web.spec.mjs):
// a resident signs in and sees a QR that decodes to a valid code, the gate
// accepts it and then refuses it as replayed, staff report the card lost
// and the resident's next code is refused, a CSV enrolment with bad rows.
// Screenshots land in docs/screenshots/ with YIKATONG_SCREENSHOTS=1.
func TestBrowser(t *testing.T) {
	t.Parallel()
	chromium, nodeBin, missing := browserTools()
	if missing != "" {
		t.Skip("SKIPPING the browser tests: " + missing + " is not installed (scripts/test.sh installs it)")
	}
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 40})
	demoPath := filepath.Join(tn.Dir, "demo.json")
	if len(tn.Demo.Terminals) == 0 {
		// An older demo without terminals: add a bus gate.
		ctx := context.Background()
		p, err := tn.CreateProvider(ctx, "E2E Bus Company", "transit", []string{"transit.bus"})
		if err != nil {
			t.Fatal(err)
		}
		id, tok, _, err := tn.CreateTerminal(ctx, p.ID, "Bus 1 gate", nil)
		if err != nil {
			t.Fatal(err)
		}
		tn.Demo.Terminals = append(tn.Demo.Terminals, node.DemoTerminal{ID: id, Token: tok, Provider: p.ID, Scenario: "transit.bus"})
		b, _ := json.Marshal(tn.Demo)
		demoPath = filepath.Join(t.TempDir(), "demo.json")
		if err := os.WriteFile(demoPath, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out := t.TempDir()
	csvPath := enrolCSV(t, out)
	// Screenshots go to a temp dir, or to docs/screenshots when
	// YIKATONG_SCREENSHOTS=1 (to refresh the ones the README shows).
	shots := filepath.Join(out, "screenshots")
	if os.Getenv("YIKATONG_SCREENSHOTS") != "" {
		shots = filepath.Join(repoRoot(), "docs", "screenshots")
	}
	os.MkdirAll(shots, 0o755)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, nodeBin, filepath.Join(repoRoot(), "e2e", "web.spec.mjs"), tn.URL, demoPath, csvPath, out, shots)
	cmd.Env = append(os.Environ(), "CHROMIUM="+chromium)
	outb, err := cmd.CombinedOutput()
	t.Logf("e2e output:\n%s", outb)
	if err != nil {
		t.Fatalf("e2e/web.spec.mjs failed: %v", err)
	}

	// The QR image the resident saw decodes to the code shown under it,
	// and that code is a well-formed YK1 e-code of this city.
	f, err := os.Open(filepath.Join(out, "qr.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, _, err := image.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	bmp, _ := gozxing.NewBinaryBitmapFromImage(img)
	res, err := zxqr.NewQRCodeReader().Decode(bmp, nil)
	if err != nil {
		t.Fatalf("decoding the QR the page showed: %v", err)
	}
	want, _ := os.ReadFile(filepath.Join(out, "code.txt"))
	if res.GetText() != strings.TrimSpace(string(want)) {
		t.Fatalf("the QR says %q, the text under it %q", res.GetText(), want)
	}
	d, err := ecode.Decode(res.GetText())
	if err != nil {
		t.Fatalf("the QR's code does not decode: %v", err)
	}
	if d.Claims.Issuer != tn.City {
		t.Fatalf("issuer %q, want %q", d.Claims.Issuer, tn.City)
	}
}
