// Package scan is the scan path of a city node: a terminal sends a code or a
// card number for one of its scenarios, and the node answers accepted or
// declined, charging or paying out through the ledger.
//
// Design decisions:
//
//   - Many codes, one scan (多码融合): a Registry maps a code's prefix to its
//     Verifier — YK1 e-codes (internal/ecode, this node's issuer keys), bare
//     16-digit Luhn numbers as physical cards, and TC1, a transit company's
//     own code whose accounts are bound to residents' cards. Every scheme
//     resolves to the same resident and the same wallet.
//   - Declines are answers, not errors: anything about the holder or the
//     code (bad signature, expired, replayed, lost card, not eligible,
//     insufficient funds …) is decision "declined" with the apperr code as
//     reason. Problems are for the caller's own mistakes.
//   - Idempotency: (terminal, idempotency_key) is the primary key of the
//     scans table, stored with a hash of the request (its PIN keyed by the
//     vault, requestHashes); the same key and body returns the stored
//     answer, another body is idempotency_conflict.
//   - One use per code: the code's nonce (cti) has a UNIQUE index in the
//     scans table, so a second scan of the same code is declined replayed in
//     any node process sharing the database.
//   - Money, and one commit per scan: a scan's row (its key, the code's
//     nonce, the sealed answer) is written in the same database
//     transaction as its ledger transfers, through the ledger's
//     attachments (ledger.Attach; rows.go is the scans table's Attacher).
//     Concurrent scans share that group-commit transaction, so a charging
//     scan costs one shared commit, and there is no pending state: a scan
//     is charged exactly when its row exists. A fare the ledger refuses is
//     stored as a declined scan with the ledger's reason. Scans that move
//     no money ride the same way with no transfers. (Rows left pending by
//     an older version are still re-driven by a retry of their key.)
//   - Hot reads are cached (cards.go): cards by number and token, and
//     residents. The card's status is re-checked in the transaction that
//     writes the scan (one query per batch); a scan decided on a stale
//     status is decided again, so a card reported lost in any process is
//     refused at once.
//   - Offline batches are applied in bulk (bulk.go): signatures verified
//     on every core first, then one ledger submission for all records.
//     Online keys must not start with "off:" (offline records' keys).
//   - "Ride first, pay later": an offline charge the wallet cannot cover
//     takes what is left and advances the rest from CreditAccount, up to
//     the scenario's credit limit counting the resident's outstanding
//     debt (checked in the ledger batch that writes it, so it holds under
//     concurrency). The split is decided once and committed with the
//     record's row; re-sends replay it. The debt is kept on the scan rows
//     (debt_fen) and collected from the wallet after later top-ups
//     (collect.go: Collector), oldest first, each collection written in
//     the ledger batch of its transfer so it happens exactly once.
//   - Another city's code: the idempotency key is checked before the home
//     city is asked to charge (remote.go).
//   - Answers carry only the scenario's view fields (catalog.View); a full
//     ID number is never among them. Stored answers are sealed by the vault.
package scan

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/catalog"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/terminal"
	"github.com/yikatong/yikatong/internal/vault"
)

// Request is a scan (CONTRACT.md POST /v1/scans).
type Request struct {
	IdempotencyKey string `json:"idempotency_key"`
	Scenario       string `json:"scenario"`
	Code           string `json:"code,omitempty" doc:"YK1:… e-code, TC1:… transit code, or a 16-digit card number"`
	CardNumber     string `json:"card_number,omitempty"`
	AmountFen      int64  `json:"amount_fen,omitempty"`
	PIN            string `json:"pin,omitempty" doc:"the holder's PIN, when the scenario asks for it above its threshold"`
}

// Response is the decision.
type Response struct {
	Decision   string         `json:"decision" doc:"accepted | declined"`
	Reason     apperr.Code    `json:"reason,omitempty"`
	ChargedFen *int64         `json:"charged_fen,omitempty"`
	View       map[string]any `json:"view"`
}

// Decisions.
const (
	Accepted = "accepted"
	Declined = "declined"
)

// MaxKeyLen bounds idempotency keys (the ledger keys derived from them must
// fit ledger.MaxKeyLen).
const MaxKeyLen = 64

// CreditAccount is the external account that advances "ride first, pay
// later" credit to providers when an offline charge finds the wallet short;
// the resident's debt is kept on the scan row.
const CreditAccount = "ext:scan_credit"

// Deps are what the scan service needs.
type Deps struct {
	DB        *store.DB
	Vault     *vault.Vault
	Catalog   *catalog.Catalog
	Residents *resident.Service
	Ledger    *ledger.Ledger
	Terminals *terminal.Service // offline batches read each terminal's mark
	Registry  *Registry
	City      string
	Now       func() time.Time
	Log       *slog.Logger

	// Remote, if set, handles codes of other cities (see remote.go).
	Remote Remote
}

// Service runs scans. It is safe for concurrent use.
type Service struct {
	Deps
	w     *writer
	rows  *rows     // the scans table's rows in ledger batches (rows.go)
	cards cardCache // cards by number and token (cards.go)

	mu    sync.Mutex
	cache map[string]cachedResident

	// replayCutover: codes issued before it may have their nonce stored
	// under the old key (replay.go).
	replayCutover time.Time

	// uploads runs one offline upload of a terminal at a time (offline.go).
	uploads termLocks
	// batchHooks are set by tests only (export_test.go).
	batchHooks batchHooks
}

type cachedResident struct {
	r     resident.Resident
	until time.Time
}

// New starts the scan service (its group-commit writer).
func New(ctx context.Context, d Deps) (*Service, error) {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	if d.Ledger != nil {
		if _, err := d.Ledger.CreateAccount(ctx, ledger.Account{ID: CreditAccount, Kind: ledger.KindExternal, Label: "ride first, pay later credit"}); err != nil {
			return nil, err
		}
	}
	s := &Service{Deps: d, w: newWriter(d.DB, d.Log), cache: map[string]cachedResident{}}
	if d.Residents != nil {
		// A resident whose flags change is read afresh by the next scan.
		d.Residents.OnChange(s.forgetResident)
	}
	s.loadReplayCutover(ctx)
	if d.Ledger != nil {
		r, err := newRows(ctx, s)
		if err != nil {
			s.w.close()
			return nil, err
		}
		s.rows = r
	}
	return s, nil
}

// Close waits for queued writes and stops the writer. The ledger must
// still be open (Close it after the scan service).
func (s *Service) Close() {
	s.w.close()
	if s.rows != nil {
		s.rows.close()
	}
}

// requestHashes returns the hash of a scan request stored with its row
// (same key, other hash: idempotency_conflict) and, for a request with a
// PIN, the hash an older version stored. The PIN enters the stored hash
// only as a keyed hash (vault): the other inputs (card number, scenario,
// amount) can be read from the database, so a plain hash of the PIN among
// them would give the PIN away to anyone holding a copy of the database
// by trying all million of them. The older form is only compared with,
// so a retry that spans an upgrade is still recognised.
func (s *Service) requestHashes(req Request) (hash, legacy []byte) {
	if req.PIN == "" {
		return requestHash(req), nil
	}
	legacy = requestHash(req)
	req.PIN = "k:" + s.Vault.LookupHash("scan_pin", req.PIN)
	return requestHash(req), legacy
}

func requestHash(req Request) []byte {
	h := sha256.New()
	for _, p := range []string{"scan-v1", req.Scenario, req.Code, req.CardNumber, strconv.FormatInt(req.AmountFen, 10), req.PIN} {
		h.Write([]byte(strconv.Itoa(len(p))))
		h.Write([]byte{':'})
		h.Write([]byte(p))
	}
	return h.Sum(nil)
}

// offlinePrefix starts the keys of offline records in the scans table
// ("off:<record id>"); online keys must not start with it, so the two
// never share a key.
const offlinePrefix = "off:"

func validKey(k string) bool {
	if k == "" || len(k) > MaxKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] <= ' ' || k[i] > '~' {
			return false
		}
	}
	return true
}

// Validate checks a request's shape (the caller's own errors).
func (req Request) Validate() error {
	if !validKey(req.IdempotencyKey) {
		return apperr.Invalid("idempotency_key", "idempotency_key must be 1-64 printable ASCII characters", "幂等键须为1至64个可打印ASCII字符")
	}
	if strings.HasPrefix(req.IdempotencyKey, offlinePrefix) {
		return apperr.Invalid("idempotency_key", "idempotency_key must not start with \"off:\" (reserved for offline records)", "幂等键不能以“off:”开头（离线记录专用）")
	}
	if err := requiredField("scenario", req.Scenario); err != nil {
		return err
	}
	if (req.Code == "") == (req.CardNumber == "") {
		return apperr.Invalid("code", "send exactly one of code and card_number", "请提供码（code）或卡号（card_number）二者之一")
	}
	if len(req.Code) > 2048 || len(req.CardNumber) > 32 {
		return apperr.Invalid("code", "the code is too long", "码过长")
	}
	if req.AmountFen < 0 {
		return apperr.Newf(apperr.InvalidAmount, "amount_fen must not be negative", "金额不能为负数")
	}
	if len(req.PIN) > 16 {
		return apperr.Invalid("pin", "the PIN is too long", "密码过长")
	}
	return nil
}

func requiredField(name, v string) error {
	if strings.TrimSpace(v) == "" {
		e := apperr.Newf(apperr.ValidationFailed, "field "+strconv.Quote(name)+" is required", "缺少必填字段 "+strconv.Quote(name))
		e.Field = name
		return e
	}
	return nil
}

// Scan runs one online scan for terminal t (already authorised for
// req.Scenario). Errors are the caller's problems (validation_failed,
// idempotency_conflict, not_found, unavailable); everything else is an
// answer.
func (s *Service) Scan(ctx context.Context, t terminal.Terminal, req Request) (Response, error) {
	for attempt := 0; ; attempt++ {
		resp, err := s.scanOnce(ctx, t, req)
		if !errors.Is(err, errStaleCard) {
			return resp, err
		}
		// The card changed (e.g. reported lost) after this scan read it:
		// it has been forgotten; decide again on its current state.
		if attempt == 3 {
			return Response{}, apperr.Newf(apperr.Unavailable, "the card keeps changing; try again", "卡片状态正在变化，请重试")
		}
	}
}

func (s *Service) scanOnce(ctx context.Context, t terminal.Terminal, req Request) (Response, error) {
	if err := req.Validate(); err != nil {
		return Response{}, err
	}
	hash, legacy := s.requestHashes(req)
	// A retry is found by the insert itself (ON CONFLICT on the key returns
	// the stored row), so the first attempt of a scan — nearly every scan —
	// skips a read. Only a request carrying a PIN looks first, so that a
	// retry never counts a wrong PIN twice toward the lock-out.
	if req.PIN != "" {
		if rec, err := lookup(ctx, s.DB, t.ID, req.IdempotencyKey); err != nil {
			return Response{}, err
		} else if rec != nil {
			return s.again(ctx, rec, hash, legacy)
		}
	}
	sc, err := s.Catalog.Scenario(ctx, req.Scenario)
	if err != nil {
		return Response{}, err
	}
	now := s.Now()
	rec := &record{terminal: t.ID, key: req.IdempotencyKey, hash: hash, legacyHash: legacy, provider: t.ProviderID, scenario: sc.ID, at: now.UnixMilli()}
	e := s.evaluate(ctx, sc, t, req.Code, req.CardNumber, req.AmountFen, req.PIN, now)
	if e.remote {
		// Another city's code: the home city is asked to charge only once
		// the key is known to be new (a reused key with another body is
		// idempotency_conflict, and a retry gets the stored answer, without
		// the home city hearing of it). A PIN request looked already.
		if req.PIN == "" {
			if ex, err := lookup(ctx, s.DB, t.ID, req.IdempotencyKey); err != nil {
				return Response{}, err
			} else if ex != nil {
				return s.again(ctx, ex, hash, legacy)
			}
		}
		e = s.evaluateRemoteKey(ctx, sc, t, e.id, req.IdempotencyKey, req.AmountFen, req.PIN, now, remoteOpts{})
	}
	if e.err != nil {
		if apperr.CodeOf(e.err) == apperr.Unavailable || apperr.CodeOf(e.err) == apperr.Internal {
			return Response{}, e.err
		}
		return s.decline(ctx, rec, sc, e, apperr.CodeOf(e.err))
	}
	rec.residentID, rec.decision = e.res.ID, Accepted
	rec.cti, rec.legacyCTI = s.replayKeys(e.id)
	rec.charged = e.dec.Amount
	rec.card = e.card
	all := s.facts(sc, e)
	if len(e.plan) == 0 {
		rec.state = stateFinal
		resp := finish(sc, all, Accepted, "", e)
		rec.answer = s.seal(rec, resp)
		return s.claim(ctx, rec, sc, resp)
	}
	if s.rows != nil {
		// One commit: the scan row rides in the ledger batch of its fare.
		return s.charge(ctx, rec, sc, e.plan, all)
	}
	rec.state = statePending
	b, _ := json.Marshal(e.plan)
	rec.plan = string(b)
	rec.answer = s.seal(rec, all)
	resp, done, err := s.claimPending(ctx, rec, sc)
	if err != nil || done {
		return resp, err
	}
	return s.settle(ctx, rec, sc, e.plan, all)
}
