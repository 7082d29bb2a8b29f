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
//     scans table, stored with the SM3 hash of the request; the same key and
//     body returns the stored answer, another body is idempotency_conflict.
//   - One use per code: the code's nonce (cti) has a UNIQUE index in the
//     scans table, so a second scan of the same code is declined replayed in
//     any node process sharing the database.
//   - Money: the scan row is written first (pending, with its plan of ledger
//     transfers and the claimed cti), then the ledger applies the plan as one
//     linked set under keys derived from the scan's key, then the row is
//     finalised. A crash in between leaves a pending row; the retry of the
//     same key re-drives the same plan, which the ledger applies at most
//     once. So a scan is never charged twice and a claimed code is never
//     charged without a scan row.
//   - Writes are group-committed (writer): concurrent scans share one
//     transaction, and the ledger batches its own writes the same way, so a
//     charging scan costs two shared commits, not two private ones.
//   - Answers carry only the scenario's view fields (catalog.View); a full
//     ID number is never among them. Stored answers are sealed by the vault.
package scan

import (
	"context"
	"crypto/sha256"
	"encoding/json"
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
	Terminals *terminal.Service
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
	w *writer

	mu    sync.Mutex
	cache map[string]cachedResident
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
	return &Service{Deps: d, w: newWriter(d.DB, d.Log), cache: map[string]cachedResident{}}, nil
}

// Close waits for queued writes and stops the writer.
func (s *Service) Close() { s.w.close() }

func requestHash(req Request) []byte {
	h := sha256.New()
	for _, p := range []string{"scan-v1", req.Scenario, req.Code, req.CardNumber, strconv.FormatInt(req.AmountFen, 10), req.PIN} {
		h.Write([]byte(strconv.Itoa(len(p))))
		h.Write([]byte{':'})
		h.Write([]byte(p))
	}
	return h.Sum(nil)
}

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
	if err := requiredField("scenario", req.Scenario); err != nil {
		return err
	}
	if (req.Code == "") == (req.CardNumber == "") {
		return apperr.Invalid("code", "send exactly one of code and card_number", "code 与 card_number 须且只能提供一个")
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
	if err := req.Validate(); err != nil {
		return Response{}, err
	}
	hash := requestHash(req)
	if rec, err := lookup(ctx, s.DB, t.ID, req.IdempotencyKey); err != nil {
		return Response{}, err
	} else if rec != nil {
		return s.again(ctx, rec, hash)
	}
	sc, err := s.Catalog.Scenario(ctx, req.Scenario)
	if err != nil {
		return Response{}, err
	}
	now := s.Now()
	rec := &record{terminal: t.ID, key: req.IdempotencyKey, hash: hash, provider: t.ProviderID, scenario: sc.ID, at: now.UnixMilli()}
	e := s.evaluate(ctx, sc, t, req.Code, req.CardNumber, req.AmountFen, req.PIN, now)
	if e.err != nil {
		if apperr.CodeOf(e.err) == apperr.Unavailable || apperr.CodeOf(e.err) == apperr.Internal {
			return Response{}, e.err
		}
		return s.decline(ctx, rec, sc, e, apperr.CodeOf(e.err))
	}
	rec.residentID, rec.cti, rec.decision = e.res.ID, e.id.CTI, Accepted
	rec.charged = e.dec.Amount
	all := s.facts(sc, e)
	if len(e.plan) == 0 {
		rec.state = stateFinal
		resp := finish(sc, all, Accepted, "", e)
		rec.answer = s.seal(rec, resp)
		return s.claim(ctx, rec, sc, resp)
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
