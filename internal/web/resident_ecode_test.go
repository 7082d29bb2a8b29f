package web

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

// The e-code page's script (static/app.js) run under node with a small
// fake DOM, clock and fetch: what a resident at a gate sees when the
// renewal fails, hangs or is refused.

const ecodeHarness = `// usage: node harness.js app.js scenario
const fs = require('fs');
const src = fs.readFileSync(process.argv[2], 'utf8');
const scenario = process.argv[3];
let now = Date.parse('2026-03-10T04:00:00Z');
const realNow = Date.now;
Date.now = () => now;
function el(id, ds) { return { id, dataset: ds || {}, style: {}, textContent: '', value: '', src: '' }; }
const els = {
  countdown: el('countdown', { expires: new Date(now + 60000).toISOString().replace(/\.\d+Z$/, 'Z'), seconds: '60' }),
  qr: el('qr'), 'code-text': el('code-text'), 'code-status': el('code-status', { renewing: '正在刷新……', failed: '刷新失败，请重新登录。', offline: '网络连接失败，正在重试……', expired: '电子码已过期，正在重新获取……' }),
};
els['code-text'].value = 'YK1:OLD';
els.qr.src = 'data:old';
const body = { dataset: {} };
global.document = { getElementById: id => els[id] || null, querySelectorAll: () => [], body };
global.window = { confirm: () => true, location: { href: '/r/', assign(u) { this.href = u; } } };
const intervals = [];
global.setInterval = (f) => { intervals.push(f); return intervals.length; };
global.setTimeout = (f) => 0;
let fetches = 0;
const plan = { responses: [] };
global.fetch = (url, opts) => {
  fetches++;
  const r = plan.responses.shift() || { kind: 'hang' };
  if (r.kind === 'neterr') return Promise.reject(new TypeError('Failed to fetch'));
  if (r.kind === 'hang') return new Promise(() => {});
  return Promise.resolve({ ok: r.status === 200, status: r.status, json: () => Promise.resolve(r.body) });
};
const flush = () => new Promise(r => setImmediate(r));
async function advance(ms) { // one tick per second
  for (let t = 0; t < ms; t += 1000) { now += 1000; intervals.forEach(f => f()); for (let i = 0; i < 5; i++) await flush(); }
}
const fresh = () => ({ kind: 'ok', status: 200, body: { code: 'YK1:NEW', qr: 'data:new', expires_at: new Date(now + 60000 + 60000).toISOString(), seconds: 60 } });
function state() { return { fetches, count: els.countdown.textContent, status: els['code-status'].textContent, text: els['code-text'].value, src: els.qr.src, opacity: els.qr.style.opacity || '', visibility: els.qr.style.visibility || '', display: els.qr.style.display || '', location: window.location.href }; }
(async () => {
  new Function(src)();
  for (let i = 0; i < 5; i++) await flush();
  const out = {};
  if (scenario === 'recover') {
    plan.responses.push({ kind: 'neterr' });
    await advance(52000); // 8 s left: the renewal fails (network)
    out.failed = state();
    plan.responses.push({ kind: 'ok', status: 200, body: { code: 'YK1:NEW', qr: 'data:new', expires_at: new Date(now + 3000 + 60000).toISOString(), seconds: 60 } });
    await advance(3000);
    out.renewed = state();
  } else if (scenario === 'hang') {
    await advance(70000); // renewal never answers; the code expired 10 s ago
    out.expired = state();
  } else if (scenario === 'gone') {
    plan.responses.push({ kind: 'ok', status: 401, body: { error: '会话已过期或长时间未操作，请重新登录。' } });
    await advance(53000);
    out.gone = state();
    await advance(10000);
    out.later = state();
  }
  console.log(JSON.stringify(out));
})();
`

type jsState struct {
	Fetches    int    `json:"fetches"`
	Count      string `json:"count"`
	Status     string `json:"status"`
	Text       string `json:"text"`
	Src        string `json:"src"`
	Opacity    string `json:"opacity"`
	Visibility string `json:"visibility"`
	Location   string `json:"location"`
}

func runECodeScript(t *testing.T, scenario string) map[string]jsState {
	t.Helper()
	nodeBin, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed")
	}
	dir := t.TempDir()
	h := filepath.Join(dir, "harness.js")
	if err := os.WriteFile(h, []byte(ecodeHarness), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(nodeBin, h, filepath.Join("static", "app.js"), scenario).CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	var m map[string]jsState
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return m
}

func qrVisible(s jsState) bool {
	return s.Visibility != "hidden" && (s.Opacity == "" || s.Opacity == "1")
}

var latin = regexp.MustCompile(`[A-Za-z]`)

// A renewal that fails on the network says so in Chinese (not the
// browser's "Failed to fetch", not "sign in again"), and the code renewed
// a few seconds later is shown at full strength, not left dimmed.
func TestECodeRecoversFromANetworkError(t *testing.T) {
	m := runECodeScript(t, "recover")
	f, r := m["failed"], m["renewed"]
	if latin.MatchString(f.Status) || f.Status == "" {
		t.Errorf("after a network error the Chinese page says %q", f.Status)
	}
	if r.Text != "YK1:NEW" || r.Src != "data:new" || !qrVisible(r) {
		t.Errorf("the renewed code is not shown plainly: %+v", r)
	}
}

// A renewal that never answers: once the code has expired it is no longer
// shown as if valid (no QR, no code text), and the page tries again.
func TestECodeExpiresWhileTheRenewalHangs(t *testing.T) {
	e := runECodeScript(t, "hang")["expired"]
	if e.Count != "0" {
		t.Fatalf("countdown %q", e.Count)
	}
	if qrVisible(e) || e.Text != "" {
		t.Errorf("an expired code is still shown as valid: %+v", e)
	}
	if e.Fetches < 2 {
		t.Errorf("a hung renewal is never retried (%d fetches)", e.Fetches)
	}
}

// The server refuses (session ended, card stopped): the old code goes at
// once, the page stops asking every second, and a 401 goes to sign-in.
func TestECodeRefusedBySignedOutSession(t *testing.T) {
	m := runECodeScript(t, "gone")
	g, l := m["gone"], m["later"]
	if qrVisible(g) || g.Text != "" {
		t.Errorf("a refused renewal leaves the old code: %+v", g)
	}
	if l.Fetches != 1 {
		t.Errorf("%d renewals after a 401", l.Fetches)
	}
	if l.Location == "/r/" {
		t.Errorf("a signed-out page stays: %+v", l)
	}
}
