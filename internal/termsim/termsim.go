// Package termsim is a simulated scanning terminal (a metro gate, a bus
// reader, a canteen POS) that talks to a city node the way a real one does.
// `yikatong terminal` and the load generator use it.
//
// Online, a scan is POST /v1/scans and the node decides.
//
// Offline, the terminal decides alone, as Shanghai's "doubly offline" metro
// gates do:
//
//   - It pins the node's public key (GET /v1/trust/node-key, or a JWK given
//     at provisioning) the first time and keeps it: every trust bundle it
//     later downloads (GET /v1/trust) must carry a valid signature under
//     that key, so a man in the middle cannot swap in its own issuer keys.
//   - It refreshes the bundle when it is older than TrustRefresh and the
//     node is reachable; when the node is not, it keeps using the bundle it
//     has until the bundle's expires_at. After that it refuses every code
//     and card with trust_expired: it never accepts on stale trust. A
//     terminal whose clock is more than ecode.ClockSkew before the bundle's
//     issued_at (a reset clock) refuses with not_yet_valid: its deny list
//     "as of now" would miss the cards lost since. A bundle older than the
//     one held (also the one in the state file after a restart) is refused.
//   - The bundle also states, signed, which of the city's scenarios may
//     run offline (trust.Bundle.CheckScenario): one that may not
//     (offline_allowed false: medical settlement, payouts, fees) is refused
//     at the gate with forbidden, a disabled one with scenario_disabled, an
//     unknown one with not_found — the node would reject or decline their
//     records. It holds with the node down, as the bundle does.
//   - A code is checked with internal/trust (issuer key, signature, expiry,
//     deny list as of the scan); a physical card against the bundle's card
//     deny list. A code's cti is remembered until the code expires, so the
//     same code is refused "replayed" at this terminal even offline.
//   - Accepted scans become records (terminal.Record) queued in the state
//     file; Upload signs them as batches (UploadBatchSize records at most)
//     with the terminal's Ed25519 batch key and posts them to
//     /v1/terminals/{id}/batches, then drops the
//     records the node reported (applied, declined, duplicate or rejected —
//     all final) from the queue. A failed batch and those after it stay
//     queued; re-sending is safe because the node applies each record id
//     once. A clock set back more than scan.OfflineClockBack before the
//     latest record is refused offline (clock_back), as the node would
//     reject its record.
//
// The state file is JSON written atomically (temp file + rename), so a
// crash between scans loses nothing already printed as accepted.
package termsim

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/terminal"
	"github.com/yikatong/yikatong/internal/trust"
)

// Config describes one terminal.
type Config struct {
	Node     string // base URL, e.g. http://127.0.0.1:8080
	Token    string // bearer token
	ID       string // terminal id (needed for batch uploads)
	Scenario string
	// BatchKey is the base64url Ed25519 seed that signs offline batches.
	BatchKey string
	// StatePath is the state file (pinned key, bundle, seen codes, queue).
	StatePath string
	// NodeKey, if set, is the pinned node key; otherwise the key is fetched
	// and pinned on first use (trust on first use).
	NodeKey *ecode.PublicKey
	// TrustRefresh is how old a bundle may get before it is re-downloaded
	// when the node is reachable (default 1 minute).
	TrustRefresh time.Duration
	// AfterSeq: a replacement device (credentials reissued, offline_seq
	// N) numbers its offline records after N. A state file already
	// numbered beyond it is left as it is.
	AfterSeq int64
	HTTP     *http.Client
	Now      func() time.Time
}

// State is what an offline terminal keeps between scans.
type State struct {
	Terminal  string          `json:"terminal"`
	NodeKey   *ecode.JWK      `json:"node_key,omitempty"`
	Bundle    json.RawMessage `json:"bundle,omitempty"`
	FetchedAt time.Time       `json:"fetched_at"`
	Seq       int64           `json:"seq"`
	// LastAt is the time of the terminal's latest record (the node's mark
	// for it once uploaded): a record dated more than
	// scan.OfflineClockBack before it would be rejected clock_back.
	LastAt time.Time         `json:"last_at"`
	Seen   map[string]int64  `json:"seen,omitempty"` // cti → expiry (Unix seconds)
	Queue  []terminal.Record `json:"queue"`
}

// Terminal is a simulated terminal.
type Terminal struct {
	cfg    Config
	state  State
	bundle *trust.Bundle
}

// Decision is what the terminal shows (online: the node's answer; offline:
// its own).
type Decision struct {
	Mode     string         `json:"mode" doc:"online | offline"`
	Decision string         `json:"decision"`
	Reason   apperr.Code    `json:"reason,omitempty"`
	Charged  *int64         `json:"charged_fen,omitempty"`
	View     map[string]any `json:"view,omitempty"`
	RecordID string         `json:"record_id,omitempty" doc:"offline: the queued record"`
	Queued   int            `json:"queued,omitempty" doc:"offline: records waiting for upload"`
	// Message and MessageZh say why an offline scan was declined.
	Message   string `json:"message,omitempty" doc:"offline: why declined (English)"`
	MessageZh string `json:"message_zh,omitempty" doc:"offline: why declined (Chinese)"`
}

// decline sets d's reason (and its texts) from err.
func (d *Decision) decline(err error) Decision {
	e := apperr.As(err)
	d.Decision, d.Reason = scan.Declined, e.Code
	d.Message, d.MessageZh = e.Text()
	return *d
}

// New opens a terminal, loading its state file if there is one.
func New(cfg Config) (*Terminal, error) {
	if cfg.HTTP == nil {
		cfg.HTTP = &http.Client{Timeout: 30 * time.Second}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TrustRefresh <= 0 {
		cfg.TrustRefresh = time.Minute
	}
	cfg.Node = strings.TrimRight(cfg.Node, "/")
	t := &Terminal{cfg: cfg, state: State{Terminal: cfg.ID, Seen: map[string]int64{}}}
	if cfg.StatePath != "" {
		b, err := os.ReadFile(cfg.StatePath)
		switch {
		case err == nil:
			if err := json.Unmarshal(b, &t.state); err != nil {
				return nil, fmt.Errorf("state file %s: %w", cfg.StatePath, err)
			}
			if t.state.Seen == nil {
				t.state.Seen = map[string]int64{}
			}
			if cfg.ID != "" && t.state.Terminal != "" && t.state.Terminal != cfg.ID {
				return nil, fmt.Errorf("state file %s belongs to terminal %s, not %s", cfg.StatePath, t.state.Terminal, cfg.ID)
			}
			if t.state.Terminal == "" {
				t.state.Terminal = cfg.ID
			}
			if n := len(t.state.Queue); n > 0 && t.state.LastAt.IsZero() {
				t.state.LastAt = t.state.Queue[n-1].At // a state file from before LastAt
			}
		case errors.Is(err, os.ErrNotExist):
		default:
			return nil, err
		}
	}
	t.state.Seq = max(t.state.Seq, cfg.AfterSeq)
	if cfg.NodeKey != nil {
		j := cfg.NodeKey.JWK()
		if t.state.NodeKey != nil && t.state.NodeKey.Kid != j.Kid {
			return nil, fmt.Errorf("the given node key differs from the one pinned in %s", cfg.StatePath)
		}
		t.state.NodeKey = &j
	}
	return t, nil
}

// State returns a copy of the terminal's state.
func (t *Terminal) State() State { return t.state }

// Save writes the state file atomically.
func (t *Terminal) Save() error {
	if t.cfg.StatePath == "" {
		return nil
	}
	b, err := json.MarshalIndent(t.state, "", " ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(t.cfg.StatePath), 0o700); err != nil {
		return err
	}
	tmp := t.cfg.StatePath + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, t.cfg.StatePath)
}

// call sends one JSON request and decodes a 2xx answer into out; a problem
// answer becomes its *apperr.Error; a transport failure is unavailable.
func (t *Terminal) call(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, t.cfg.Node+path, rd)
	if err != nil {
		return apperr.Wrap(apperr.Unavailable, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if t.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+t.cfg.Token)
	}
	resp, err := t.cfg.HTTP.Do(req)
	if err != nil {
		return apperr.Wrap(apperr.Unavailable, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return apperr.Wrap(apperr.Unavailable, err)
	}
	if resp.StatusCode/100 != 2 {
		return ProblemError(resp.StatusCode, data)
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = append((*raw)[:0], data...)
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return apperr.Wrap(apperr.Internal, fmt.Errorf("decoding %s %s: %w", method, path, err))
	}
	return nil
}

// ProblemError turns a problem+json answer into an *apperr.Error.
func ProblemError(status int, body []byte) error {
	var p struct {
		Code     apperr.Code `json:"code"`
		Detail   string      `json:"detail"`
		DetailZh string      `json:"detail_zh"`
	}
	if json.Unmarshal(body, &p) != nil || p.Code == "" {
		return apperr.Newf(apperr.Unavailable, fmt.Sprintf("HTTP %d from the node", status), fmt.Sprintf("节点返回 HTTP %d", status))
	}
	return apperr.Newf(p.Code, p.Detail, p.DetailZh)
}

// NewRequestKey returns a fresh idempotency key: the time in Unix
// milliseconds (12 hex digits) and 64 random bits, so that keys sort by
// when they were made. The node keeps scans under (key, terminal); keys
// that grow with time land at the end of that index whichever terminal
// sent them, where random keys would each cost a page of their own
// (docs/trust-bundle.md, "Idempotency keys").
func NewRequestKey(prefix string) string {
	return fmt.Sprintf("%s%012x%s", prefix, time.Now().UnixMilli(), randomHex(16))
}

// randomHex returns n random hex digits.
func randomHex(n int) string {
	b := make([]byte, (n+1)/2)
	rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// ScanOnline posts one scan to the node.
func (t *Terminal) ScanOnline(ctx context.Context, key, code, card string, amount int64) (Decision, error) {
	if key == "" {
		key = NewRequestKey("sim-")
	}
	var r scan.Response
	err := t.call(ctx, http.MethodPost, "/v1/scans", scan.Request{IdempotencyKey: key, Scenario: t.cfg.Scenario, Code: code, CardNumber: card, AmountFen: amount}, &r)
	if err != nil {
		return Decision{}, err
	}
	return Decision{Mode: "online", Decision: r.Decision, Reason: r.Reason, Charged: r.ChargedFen, View: r.View}, nil
}

// RefreshTrust downloads the bundle if it is older than TrustRefresh (or
// force), checking it against the pinned node key (pinning it first if
// none is pinned). A failure to reach the node is not an error when a
// bundle is already held: the terminal carries on offline with it.
func (t *Terminal) RefreshTrust(ctx context.Context, force bool) error {
	now := t.cfg.Now()
	if !force && t.state.Bundle != nil && now.Sub(t.state.FetchedAt) < t.cfg.TrustRefresh {
		return t.loadBundle()
	}
	err := t.download(ctx)
	if err != nil && apperr.CodeOf(err) == apperr.Unavailable && t.state.Bundle != nil {
		return t.loadBundle()
	}
	if err == nil {
		t.resumeNumbering(ctx)
	}
	return err
}

// resumeNumbering: a terminal with no record of its own yet (a new state
// file: a device whose storage was wiped, or replaced with the same
// credentials) asks the node for its offline mark (GET
// /v1/terminals/{id}) and numbers its next records after it; numbered
// from 1, they would be rejected out_of_order. A failure is left for the
// next refresh (the terminal is still new then).
func (t *Terminal) resumeNumbering(ctx context.Context) {
	if t.state.Seq != 0 || len(t.state.Queue) != 0 || t.cfg.Token == "" || t.state.Terminal == "" {
		return
	}
	var v struct {
		OfflineSeq int64     `json:"offline_seq"`
		OfflineAt  time.Time `json:"offline_at"`
	}
	if err := t.call(ctx, http.MethodGet, "/v1/terminals/"+t.state.Terminal, nil, &v); err != nil || v.OfflineSeq <= 0 {
		return
	}
	t.state.Seq = max(t.state.Seq, v.OfflineSeq)
	if v.OfflineAt.After(t.state.LastAt) {
		t.state.LastAt = v.OfflineAt
	}
}

func (t *Terminal) download(ctx context.Context) error {
	if t.state.NodeKey == nil {
		var j ecode.JWK
		if err := t.call(ctx, http.MethodGet, "/v1/trust/node-key", nil, &j); err != nil {
			return err
		}
		if _, err := ecode.PublicKeyFromJWK(j); err != nil {
			return apperr.Newf(apperr.BadTrustBundle, "the node key is not a valid JWK: "+err.Error(), "节点公钥无效")
		}
		t.state.NodeKey = &j
	}
	var raw json.RawMessage
	if err := t.call(ctx, http.MethodGet, "/v1/trust", nil, &raw); err != nil {
		return err
	}
	nk, err := ecode.PublicKeyFromJWK(*t.state.NodeKey)
	if err != nil {
		return apperr.Newf(apperr.BadTrustBundle, "the pinned node key is not valid", "固定的节点公钥无效")
	}
	b, err := trust.Parse(raw, &nk)
	if err != nil {
		return err
	}
	if t.bundle == nil && t.state.Bundle != nil {
		// After a restart the held bundle is only in the state file: load
		// it, so that the newest-bundle rule below survives restarts (a
		// held bundle that no longer checks is simply replaced).
		t.loadBundle()
	}
	if t.bundle != nil && b.IssuedAt.Before(t.bundle.IssuedAt) {
		// An older bundle than the one held (a replay by whoever answers
		// the fetch) would bring back keys and drop recent deny entries.
		return apperr.Newf(apperr.BadTrustBundle, "the node sent an older trust bundle than the one held; keeping the held one",
			"节点发来的信任列表比已持有的旧，保留已持有的版本")
	}
	t.state.Bundle, t.state.FetchedAt, t.bundle = raw, t.cfg.Now(), b
	return nil
}

// loadBundle parses the held bundle (checking its signature again: the
// state file is not trusted more than the network).
func (t *Terminal) loadBundle() error {
	if t.bundle != nil {
		return nil
	}
	if t.state.Bundle == nil || t.state.NodeKey == nil {
		return apperr.Newf(apperr.TrustExpired, "no trust bundle yet: connect to the node once", "尚无信任列表，请先联网下载")
	}
	nk, err := ecode.PublicKeyFromJWK(*t.state.NodeKey)
	if err != nil {
		return apperr.Newf(apperr.BadTrustBundle, "the pinned node key is not valid", "固定的节点公钥无效")
	}
	b, err := trust.Parse(t.state.Bundle, &nk)
	if err != nil {
		return err
	}
	t.bundle = b
	return nil
}

// Bundle returns the trust bundle in use (nil before the first refresh).
func (t *Terminal) Bundle() *trust.Bundle { return t.bundle }

// DecideOffline decides a scan alone as of now and, if accepted, queues
// its record. amount is the terminal's amount (0 = the scenario's fare,
// which the node applies on upload).
func (t *Terminal) DecideOffline(code, card string, amount int64) Decision {
	now := t.cfg.Now()
	d := Decision{Mode: "offline", Decision: scan.Declined}
	if t.state.Terminal == "" {
		return d.decline(apperr.Invalid("id", "the terminal id is needed offline", "脱机受理需要终端编号"))
	}
	if err := t.loadBundle(); err != nil {
		return d.decline(err)
	}
	b := t.bundle
	if now.After(b.ExpiresAt) {
		return d.decline(apperr.New(apperr.TrustExpired))
	}
	// A scenario the node takes no offline records of (or has disabled):
	// refused at the gate, not accepted and then rejected on upload.
	if err := b.CheckScenario(t.cfg.Scenario); err != nil {
		return d.decline(err)
	}
	if now.Add(ecode.ClockSkew).Before(b.IssuedAt) {
		// The terminal's clock is behind the bundle's issue time (a reset
		// clock): its deny list "as of now" would miss cards lost since,
		// and its expiry would be judged on the wrong day. Refuse.
		return d.decline(apperr.Newf(apperr.NotYetValid, "the terminal's clock is before the trust bundle's issue time: set the clock",
			"终端时钟早于信任列表的签发时间，请校准时钟"))
	}
	if !t.state.LastAt.IsZero() && now.Before(t.state.LastAt.Add(-scan.OfflineClockBack)) {
		// The clock went back since the last record: the node would
		// reject this record (clock_back) and never charge it.
		return d.decline(apperr.New(apperr.ClockBack))
	}
	// Forget codes that have expired anyway.
	for k, exp := range t.state.Seen {
		if exp < now.Unix()-int64(ecode.ClockSkew/time.Second) {
			delete(t.state.Seen, k)
		}
	}
	code = strings.TrimSpace(code)
	if code != "" {
		if n := resident.NormalizeCardNumber(code); len(n) == 16 && resident.ValidCardNumber(n) {
			code, card = "", n
		}
	}
	rec := terminal.Record{Scenario: t.cfg.Scenario, At: now.UTC(), AmountFen: amount}
	switch {
	case card != "":
		n := resident.NormalizeCardNumber(card)
		if !resident.ValidCardNumber(n) {
			return d.decline(apperr.Newf(apperr.Malformed, "the card number is not valid", "卡号无效"))
		}
		if err := b.CheckCard(n, now); err != nil {
			return d.decline(err)
		}
		rec.CardNumber = n
	case strings.HasPrefix(code, ecode.Scheme+":"):
		cl, err := b.VerifyCode(code, now)
		if err != nil {
			return d.decline(err)
		}
		cti := cl.Issuer + ":" + hex.EncodeToString(cl.CTI)
		if _, seen := t.state.Seen[cti]; seen {
			return d.decline(apperr.New(apperr.Replayed))
		}
		t.state.Seen[cti] = cl.ExpiresAt.Unix()
		rec.Code = code
	case code == "":
		return d.decline(apperr.Invalid("code", "give a code or a card number", "请提供电子码或卡号"))
	default:
		// Other schemes (TC1 …) need the node's bindings: not offline.
		return d.decline(apperr.Newf(apperr.UnsupportedScheme, "only YK1 codes and cards are accepted offline", "脱机仅受理 YK1 电子码和实体卡"))
	}
	t.state.Seq++
	rec.Seq = t.state.Seq
	rec.ID = fmt.Sprintf("%d-%s", rec.Seq, randomHex(8))
	t.state.Queue = append(t.state.Queue, rec)
	t.state.LastAt = rec.At
	d.Decision, d.RecordID, d.Queued = scan.Accepted, rec.ID, len(t.state.Queue)
	if amount > 0 {
		d.Charged = &amount
	}
	return d
}

// UploadBatchSize is the most records Upload puts in one batch: a queue
// longer than that (a terminal offline for long) goes up as several
// batches, oldest first, each well under terminal.MaxBatchRecords and the
// node's body limit.
const UploadBatchSize = 10_000

// Upload signs the queued records as batches of at most UploadBatchSize
// and uploads them in order; records the node reported on leave the
// queue. It stops at the first failed batch (the records of the batches
// before it have left the queue; the rest stay for the next upload). The
// report sums the batches' reports (batch_id: the last batch's).
func (t *Terminal) Upload(ctx context.Context) (scan.BatchReport, error) {
	total := scan.BatchReport{Terminal: t.state.Terminal, Items: []scan.RecordReport{}}
	if len(t.state.Queue) == 0 {
		return total, nil
	}
	if t.state.Terminal == "" {
		return scan.BatchReport{}, apperr.Invalid("id", "the terminal id is needed to upload", "上传批次需要终端编号")
	}
	key, err := terminal.ParseBatchKey(t.cfg.BatchKey)
	if err != nil {
		return scan.BatchReport{}, err
	}
	done := map[string]bool{}
	queue := t.state.Queue
	for off := 0; off < len(queue) && err == nil; off += UploadBatchSize {
		chunk := queue[off:min(off+UploadBatchSize, len(queue))]
		var rep scan.BatchReport
		rep, err = UploadRecords(ctx, t.cfg.HTTP, t.cfg.Node, t.cfg.Token, t.state.Terminal, key, chunk, t.cfg.Now())
		if err != nil {
			break
		}
		total.BatchID = rep.BatchID
		total.Records += rep.Records
		total.Applied += rep.Applied
		total.Declined += rep.Declined
		total.Duplicates += rep.Duplicates
		total.Rejected += rep.Rejected
		total.ChargedFen += rep.ChargedFen
		total.DebtFen += rep.DebtFen
		total.Items = append(total.Items, rep.Items...)
		for _, it := range rep.Items {
			done[it.ID] = true
		}
	}
	kept := make([]terminal.Record, 0, len(queue)-len(done))
	for _, r := range queue {
		if !done[r.ID] {
			kept = append(kept, r)
		}
	}
	t.state.Queue = kept
	return total, err
}

// UploadRecords signs records as one batch of terminal id and posts it.
func UploadRecords(ctx context.Context, hc *http.Client, node, token, id string, key ed25519.PrivateKey, recs []terminal.Record, now time.Time) (scan.BatchReport, error) {
	b := terminal.Batch{Terminal: id, ID: NewRequestKey("b-"), CreatedAt: now.UTC(), Records: recs}
	sb, err := terminal.SignBatch(b, key)
	if err != nil {
		return scan.BatchReport{}, err
	}
	t := &Terminal{cfg: Config{Node: strings.TrimRight(node, "/"), Token: token, HTTP: hc}}
	var rep scan.BatchReport
	err = t.call(ctx, http.MethodPost, "/v1/terminals/"+id+"/batches", sb, &rep)
	return rep, err
}
