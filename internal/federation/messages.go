package federation

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emmansun/gmsm/sm3"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/scan"
)

// Message modes.
const (
	ModeOnline     = "online"     // the home city may decline
	ModeGuaranteed = "guaranteed" // accepted offline within the risk limit: the home city books it
	ModeVoid       = "void"       // the sender gave up: reverse or refuse the charge
	// ModeRefund: the sender gives back an earlier charge (Refunds) whose
	// day was already settled when the sender voided it. A refund is a
	// message of its own, dated when it is made, and counts in that day's
	// statement (the sender owes it); the settled day keeps the charge.
	ModeRefund = "refund"
)

// Envelope kinds.
const (
	KindCharge    = "charge"    // one Charge, answered at once (online authorisation)
	KindMessages  = "messages"  // a batch of Charges from the outbox
	KindList      = "list"      // reconciliation: list your messages with me
	KindStatement = "statement" // settlement: countersign this statement
	KindAnswer    = "answer"
)

// Charge is a clearing message: the sender (city B) tells the home city
// (A) that A's resident owes Amount to B. The resident is named by the
// card token of an e-code (Subject), or for a physical card by
// "card:" + the card number (CardSubject): card numbers are printed on
// the card and not secret, and B never learns more about the holder.
type Charge struct {
	ID        string `json:"id"`
	Mode      string `json:"mode"`
	Subject   string `json:"sub"`
	AmountFen int64  `json:"amount_fen"`
	Medical   bool   `json:"medical,omitempty"`
	Scenario  string `json:"scenario"`
	// PIN is the holder's PIN as an older sender sent it; a sender now
	// sends PINSealed instead: the PIN encrypted to the home city's node
	// key (SM2), so that only the home city reads it, whatever carries the
	// message (a proxy, an unencrypted link).
	PIN       string    `json:"pin,omitempty"`
	PINSealed []byte    `json:"pin_sealed,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// ScanAt is set for a scan an offline terminal made (uploaded in a
	// batch): the home city judges the card's status as of then.
	ScanAt time.Time `json:"scan_at,omitzero"`
	// Provider is kept in the sender's own outbox row only (never sent):
	// the provider whose receivable the scan credited, so that a late
	// answer charging another fare can be booked (deliver).
	Provider string `json:"provider,omitempty"`
	// ScanTerminal and ScanKey (sender's row only, never sent) name the
	// scan an online authorisation is for: checkBookings voids the home
	// city's charge when that scan was never booked here.
	ScanTerminal string `json:"scan_terminal,omitempty"`
	ScanKey      string `json:"scan_key,omitempty"`
	// Fares (physical cards, online): B's lower prices for holders with
	// other claims than the adult AmountFen was priced for. A charges the
	// fare its resident's category and flags match and answers them.
	Fares []scan.Fare `json:"fares,omitempty"`
	// Refunds is the id of the charge a refund (ModeRefund) gives back;
	// the refund's id is RefundID(sender, Refunds).
	Refunds string `json:"refunds,omitempty"`
}

// RefundID is the id of city from's refund of its charge id: one refund
// per charge, and every retry carries the same id.
func RefundID(from, id string) string {
	h := sm3.Sum([]byte("yikatong/fed/refund/v1:" + from + ":" + id))
	return from + "." + hex.EncodeToString(h[:16])
}

// CardSubject is the Subject prefix of a charge on a physical card.
const CardSubject = "card:"

// amountOK reports whether amount is one c may have booked: its own, or
// one of its fares.
func amountOK(amount int64, c Charge) bool {
	if amount == c.AmountFen {
		return true
	}
	for _, f := range c.Fares {
		if f.AmountFen == amount {
			return true
		}
	}
	return false
}

// Answer states.
const (
	StateApplied  = "applied"
	StateDeclined = "declined"
	StateVoided   = "voided"
)

// ChargeAnswer is the home city's answer to a Charge.
type ChargeAnswer struct {
	ID         string      `json:"id"`
	State      string      `json:"state"`
	Reason     apperr.Code `json:"reason,omitempty"`
	MedicalFen int64       `json:"medical_fen,omitempty"`
	WalletFen  int64       `json:"wallet_fen,omitempty"`
	CreditFen  int64       `json:"credit_fen,omitempty"`
	Transfers  []string    `json:"transfers,omitempty"`
	// Category and Flags: the holder's claims (a physical card's charge
	// answered online), as an e-code of the card would carry them — never
	// the birth date, name or ID number.
	Category string   `json:"category,omitempty"`
	Flags    []string `json:"flags,omitempty"`
}

type batch struct {
	Messages []Charge `json:"messages"`
}

type batchAnswer struct {
	Results []ChargeAnswer `json:"results"`
}

// MessageID is the clearing message id of a charge by city from for the
// code nonce cti: deterministic, so every retry carries the same id.
func MessageID(from, cti string) string {
	h := sm3.Sum([]byte("yikatong/fed/charge/v1:" + from + ":" + cti))
	return from + "." + hex.EncodeToString(h[:16])
}

// ---- the visiting city (B): scan.Remote ----

// Admit implements scan.Remote: the issuer must be a trusted member, and
// the code's card token or the physical card's number (by its deny-list
// hash) must not be on the issuer's deny list as of at.
func (s *Service) Admit(ctx context.Context, id scan.Identity, at time.Time) error {
	if _, _, ok := s.trusted(id.Issuer); !ok {
		return apperr.Newf(apperr.UnknownIssuer, id.Issuer+" is not a trusted member of this region", "该城市不是本区域受信任成员")
	}
	if id.Token != "" && s.Revoked(id.Issuer, id.Token, at) {
		return apperr.New(apperr.Revoked)
	}
	if id.Token == "" && id.CardNumber != "" && s.CardRevoked(id.Issuer, id.CardNumber, at) {
		return apperr.Newf(apperr.Revoked, "the card is on its home city's deny list", "该卡已被发卡城市列入黑名单")
	}
	return nil
}

// CardIssuer implements scan.CardIssuers: the member city (not this one)
// whose region code the card number starts with (resident.CardRegion).
func (s *Service) CardIssuer(number string) (string, bool) {
	region := resident.CardRegion(number)
	l := s.Members()
	if region == "" || l == nil {
		return "", false
	}
	for _, m := range l.Members {
		if m.City != s.City && resident.RegionCode(m.City) == region {
			return m.City, true
		}
	}
	return "", false
}

// outRow is this node's record of a message it sends.
type outRow struct {
	state  string
	answer []byte
	amount int64
}

func (s *Service) outRow(ctx context.Context, id string) (*outRow, error) {
	var r outRow
	err := s.DB.QueryRow(ctx, `SELECT state, answer, amount_fen FROM fed_messages WHERE id = $1 AND direction = 'out'`, id).Scan(&r.state, &r.answer, &r.amount)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, unavailable(err)
	}
	return &r, nil
}

// approved is the scan's result for an applied answer.
func approved(a ChargeAnswer) scan.RemoteResult {
	return scan.RemoteResult{Approved: true, MedicalFen: a.MedicalFen, WalletFen: a.WalletFen + a.CreditFen,
		Answered: true, AmountFen: a.MedicalFen + a.WalletFen + a.CreditFen, Category: a.Category, Flags: a.Flags}
}

func resultOf(r *outRow) scan.RemoteResult {
	var a ChargeAnswer
	json.Unmarshal(r.answer, &a)
	switch r.state {
	case "acked":
		return approved(a)
	case "pending":
		return scan.RemoteResult{Approved: true, Queued: true}
	case "declined":
		if a.Reason == "" {
			a.Reason = apperr.HomeUnreachable
		}
		return scan.RemoteResult{Reason: a.Reason}
	}
	return scan.RemoteResult{Reason: apperr.HomeUnreachable}
}

// ExposureSQL sums a card's offline acceptances not yet cleared with its
// home city (not a refund on its way). Its terms match the partial index
// fed_messages_subject.
const ExposureSQL = `SELECT COALESCE(SUM(amount_fen), 0) FROM fed_messages
	WHERE direction = 'out' AND peer = $1 AND subject = $2 AND state = 'pending' AND kind = 'charge'`

// Authorize implements scan.Remote: the online authorisation by the home
// city, or the offline acceptance under the card's risk limit.
func (s *Service) Authorize(ctx context.Context, home string, req scan.RemoteCharge) (scan.RemoteResult, error) {
	m, err := s.member(home)
	if err != nil {
		return scan.RemoteResult{Reason: apperr.UnknownIssuer}, nil
	}
	subject := req.Subject
	if req.CardNumber != "" {
		subject = CardSubject + req.CardNumber
	}
	cti := req.CTI
	if cti == "" {
		// A physical card scanned without a known key: a fresh id.
		var nb [16]byte
		rand.Read(nb[:])
		cti = "card:" + hex.EncodeToString(nb[:])
	}
	id := MessageID(s.City, cti)
	prev, err := s.outRow(ctx, id)
	if err != nil {
		return scan.RemoteResult{}, err
	}
	if prev != nil && prev.state != "sending" {
		return resultOf(prev), nil
	}
	now := s.Now()
	c := Charge{ID: id, Mode: ModeOnline, Subject: subject, AmountFen: req.AmountFen, Medical: req.Medical, Scenario: req.Scenario,
		PIN: req.PIN, CreatedAt: now.UTC().Truncate(time.Millisecond), Fares: req.Fares}
	if req.Offline {
		c.ScanAt = req.At.UTC().Truncate(time.Millisecond)
	}
	sent := c // what goes to the home city: the PIN sealed to it
	if c.PIN != "" {
		k, err := ecode.PublicKeyFromJWK(m.NodeKey)
		if err == nil {
			sent.PINSealed, err = k.EncryptTo([]byte(c.PIN))
		}
		if err != nil {
			return scan.RemoteResult{}, apperr.Wrap(apperr.Internal, err)
		}
		sent.PIN = ""
	}
	if prev == nil {
		stored := c
		stored.PIN, stored.Provider = "", req.Provider
		// An online scan's booking is checked after BookingGrace
		// (checkBookings); an offline record's batch is re-sent by its
		// terminal until it is booked, however late.
		var checkAt int64
		if !req.Offline && req.Terminal != "" && req.Key != "" {
			stored.ScanTerminal, stored.ScanKey = req.Terminal, req.Key
			checkAt = now.Add(s.cfg.BookingGrace).UnixMilli()
		}
		body, _ := json.Marshal(stored)
		// Not awaited: the row only lets the outbox void an authorisation
		// this process abandons mid-flight; if it is lost in a crash, the
		// scan's retry asks again under the same id and reconciliation
		// lists a charge the home city applied alone. Every later state
		// change of the row is awaited (and queued after this insert).
		s.w.execAsync(`INSERT INTO fed_messages(id, direction, peer, kind, subject, amount_fen, created_at, state, body, updated_at, check_booking_at)
			VALUES ($1, 'out', $2, 'charge', $3, $4, $5, 'sending', $6, $7, $8) ON CONFLICT (id, direction) DO NOTHING`,
			id, home, subject, req.AmountFen, c.CreatedAt.UnixMilli(), body, now.UnixMilli(), checkAt)
	}
	var ans ChargeAnswer
	var pe *peerError
	if req.Offline && s.downRecently(home) {
		// An uploaded batch: the home city did not answer a moment ago;
		// the rest of the batch does not wait for it record by record.
		err = errors.New("the home city did not answer an earlier record")
	} else {
		actx, cancel := context.WithTimeout(ctx, s.cfg.AuthTimeout)
		err = s.call(actx, m, KindCharge, sent, &ans)
		cancel()
		if err != nil && !errors.As(err, &pe) && ctx.Err() == nil {
			// (A caller that gave up is not the home city being down.)
			s.markDown(home)
		} else {
			s.markUp(home)
		}
	}
	if err == nil && ans.ID == id && ans.State == StateApplied && !amountOK(ans.MedicalFen+ans.WalletFen+ans.CreditFen, c) {
		// The home city says it charged an amount we never asked for (a
		// bug or a compromised peer): not an answer we book. The charge
		// is voided at home like an abandoned authorisation.
		s.Log.Warn("federation: the home city charged an amount not asked for; voiding", "peer", home, "id", id,
			"asked_fen", c.AmountFen, "charged_fen", ans.MedicalFen+ans.WalletFen+ans.CreditFen)
		defer s.Kick()
		return s.setState(ctx, id, "voiding", nil, "the home city charged an amount not asked for", scan.RemoteResult{Reason: apperr.HomeUnreachable})
	}
	switch {
	case err == nil && ans.ID == id && ans.State == StateApplied:
		b, _ := json.Marshal(ans)
		return s.setAcked(ctx, id, b, ans.MedicalFen+ans.WalletFen+ans.CreditFen, approved(ans))
	case err == nil && ans.ID == id && ans.State == StateDeclined:
		b, _ := json.Marshal(ans)
		return s.setState(ctx, id, "declined", b, "", scan.RemoteResult{Reason: ans.Reason})
	case errors.As(err, &pe) && pe.status < 500:
		// The home city refused the request itself. A refusal is not
		// signed, so it cannot be trusted to mean that nothing was booked
		// there (a proxy could answer it after passing the charge on):
		// the scan is declined and the charge voided at home, which is a
		// no-op if it was never booked.
		defer s.Kick()
		return s.setState(ctx, id, "voiding", nil, pe.Error(), scan.RemoteResult{Reason: apperr.HomeUnreachable})
	}
	// No usable answer in time: the home city may or may not have applied it.
	why := "no answer"
	if err != nil {
		why = err.Error()
	}
	if req.OfflineAllowed {
		// Accepting without the home city vouches for the card against the
		// home city's deny list as this node holds it (as of the scan);
		// past that data's expiry (when the home city's codes are refused
		// too) it cannot.
		at := req.At
		if at.IsZero() {
			at = now
		}
		if _, exp, ok := s.trusted(home); !ok || at.After(exp) {
			reason := apperr.TrustExpired
			if !ok {
				reason = apperr.UnknownIssuer
			}
			defer s.Kick()
			return s.setState(ctx, id, "voiding", nil, why, scan.RemoteResult{Reason: reason})
		}
		// One card's offline acceptances are decided one at a time (the
		// records of an uploaded batch are evaluated concurrently), so
		// that the limit holds.
		mu := &s.risk[riskStripe(subject)]
		mu.Lock()
		defer mu.Unlock()
		// Another call for this message may have decided it meanwhile (its
		// own amount would then count in the exposure below).
		if r, err := s.outRow(ctx, id); err != nil {
			return scan.RemoteResult{}, err
		} else if r != nil && r.state != "sending" {
			return resultOf(r), nil
		}
		var exposure int64
		if err := s.DB.QueryRow(ctx, ExposureSQL, home, subject).Scan(&exposure); err != nil {
			return scan.RemoteResult{}, unavailable(err)
		}
		if exposure+req.AmountFen <= s.cfg.RiskLimitFen {
			res, err := s.setState(ctx, id, "pending", nil, why, scan.RemoteResult{Approved: true, Queued: true})
			if err == nil && res.Queued {
				s.Log.Info("federation: accepted offline, charge queued", "peer", home, "id", id, "amount_fen", req.AmountFen)
			}
			return res, err
		}
		defer s.Kick()
		return s.setState(ctx, id, "voiding", nil, why, scan.RemoteResult{Reason: apperr.RiskLimit})
	}
	defer s.Kick()
	return s.setState(ctx, id, "voiding", nil, why, scan.RemoteResult{Reason: apperr.HomeUnreachable})
}

// riskStripes is the number of risk-limit locks.
const riskStripes = 64

// riskStripe picks the risk-limit lock of a card.
func riskStripe(subject string) int {
	h := fnv.New32a()
	h.Write([]byte(subject))
	return int(h.Sum32() % riskStripes)
}

// decide moves an authorisation out of "sending" and returns result, or,
// when another call decided the same message first, what that call
// decided. Two calls for one message can be in flight at once (a terminal
// retrying a scan while its first attempt still waits on the home city, a
// batch re-sent during its first upload, the sweep voiding an old
// "sending" row); only the first decision stands, so this node never books
// a fare whose charge it then voids, or voids one it acknowledged.
func (s *Service) decide(ctx context.Context, id string, update func() (int64, error), result scan.RemoteResult) (scan.RemoteResult, error) {
	n, err := update()
	if err != nil {
		return scan.RemoteResult{}, unavailable(err)
	}
	if n == 1 {
		return result, nil
	}
	r, err := s.outRow(ctx, id)
	if err != nil {
		return scan.RemoteResult{}, err
	}
	switch {
	case r == nil:
		// The row's insert (not awaited) was lost: nothing competes with
		// this call's decision.
		return result, nil
	case r.state == "sending":
		return scan.RemoteResult{}, apperr.Newf(apperr.Unavailable, "the authorisation is still being decided; try again", "授权仍在处理中，请重试")
	}
	return resultOf(r), nil
}

// setState moves an authorisation out of "sending" (decide).
func (s *Service) setState(ctx context.Context, id, state string, answer []byte, lastErr string, result scan.RemoteResult) (scan.RemoteResult, error) {
	return s.decide(ctx, id, func() (int64, error) {
		return s.w.execN(ctx, `UPDATE fed_messages SET state = $1, answer = COALESCE($2, answer), last_error = $3, updated_at = $4, next_at = $4
			WHERE id = $5 AND direction = 'out' AND state = 'sending'`, state, answer, truncate(lastErr, 200), s.Now().UnixMilli(), id)
	}, result)
}

// setAcked records an applied answer and the amount the home city booked
// (a physical card's fare may be lower than the amount asked), so both
// sides list the message with the same amount (decide).
func (s *Service) setAcked(ctx context.Context, id string, answer []byte, amount int64, result scan.RemoteResult) (scan.RemoteResult, error) {
	return s.decide(ctx, id, func() (int64, error) {
		return s.w.execN(ctx, `UPDATE fed_messages SET state = 'acked', answer = $1, amount_fen = $2, last_error = '', updated_at = $3, next_at = $3
			WHERE id = $4 AND direction = 'out' AND state = 'sending'`, answer, amount, s.Now().UnixMilli(), id)
	}, result)
}

// downFor is how many AuthTimeouts an uploaded batch's records skip
// asking a home city that did not answer (AuthTimeout each otherwise: a
// batch of a thousand records would wait minutes). An answer from the city
// (an online charge, or an outbox delivery) ends it at once.
const downFor = 4

func (s *Service) markDown(city string) {
	s.mu.Lock()
	if s.down == nil {
		s.down = map[string]time.Time{}
	}
	s.down[city] = s.Now().Add(downFor * s.cfg.AuthTimeout)
	s.mu.Unlock()
}

func (s *Service) markUp(city string) {
	s.mu.RLock()
	_, ok := s.down[city]
	s.mu.RUnlock()
	if ok {
		s.mu.Lock()
		delete(s.down, city)
		s.mu.Unlock()
	}
}

func (s *Service) downRecently(city string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.Now().Before(s.down[city])
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// peerError is a problem answer from a peer.
type peerError struct {
	status int
	code   string
	detail string
}

func (e *peerError) Error() string {
	return fmt.Sprintf("peer answered %d %s: %s", e.status, e.code, e.detail)
}

// call sends a signed envelope to a member and opens its signed answer.
func (s *Service) call(ctx context.Context, m Member, kind string, body, out any) error {
	env, err := Seal(s.City, m.City, kind, s.Now(), body, s.Node())
	if err != nil {
		return err
	}
	url := strings.TrimRight(m.BaseURL, "/") + "/v1/federation/" + kind
	req, err := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(env))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		var p struct {
			Code   string `json:"code"`
			Detail string `json:"detail"`
		}
		json.Unmarshal(data, &p)
		return &peerError{status: resp.StatusCode, code: p.Code, detail: p.Detail}
	}
	ans, err := Open(data, s.City, KindAnswer, s.Members(), s.Now())
	if err != nil {
		return fmt.Errorf("the answer of %s does not verify: %w", m.City, err)
	}
	if ans.From != m.City {
		return fmt.Errorf("the answer comes from %s, not %s", ans.From, m.City)
	}
	return json.Unmarshal(ans.Body, out)
}

// ---- the home city (A): applying charges ----

// HandleCharge opens a charge envelope, applies it and returns the signed
// answer envelope.
func (s *Service) HandleCharge(ctx context.Context, data []byte) ([]byte, error) {
	env, c, err := openRequest[Charge](s, data, KindCharge)
	if err != nil {
		return nil, err
	}
	a, err := s.apply(ctx, env.From, c)
	if err != nil {
		return nil, err
	}
	return Seal(s.City, env.From, KindAnswer, s.Now(), a, s.Node())
}

// HandleMessages applies a batch of outbox messages.
func (s *Service) HandleMessages(ctx context.Context, data []byte) ([]byte, error) {
	env, b, err := openRequest[batch](s, data, KindMessages)
	if err != nil {
		return nil, err
	}
	if len(b.Messages) > MaxBatch {
		return nil, apperr.Invalid("messages", fmt.Sprintf("at most %d messages per batch", MaxBatch), fmt.Sprintf("每批最多 %d 条消息", MaxBatch))
	}
	res, err := s.applyMany(ctx, env.From, b.Messages)
	if err != nil {
		return nil, err
	}
	out := batchAnswer{Results: res}
	return Seal(s.City, env.From, KindAnswer, s.Now(), out, s.Node())
}

// MaxBatch bounds an outbox batch.
const MaxBatch = 1000

// applyParallel bounds the concurrent applications of one batch.
const applyParallel = 128

func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return apperr.Newf(apperr.ValidationFailed, "the message body is not valid: "+err.Error(), "消息内容无效")
	}
	return nil
}

// ---- the outbox ----

// checkBookings voids the online authorisations whose scan was never
// booked here: the home city charged its resident, but the scan's row
// (and its clr:<home> → provider transfer, written together) does not
// exist BookingGrace after the authorisation, e.g. because the database
// went away at the booking and the terminal gave up, or retried after
// the code expired and was declined. Without the void the home city would
// keep money this city never credited to its provider. A booked scan's
// row is accepted; the check is then cleared.
func (s *Service) checkBookings(ctx context.Context, now time.Time) error {
	rows, err := s.DB.R.QueryContext(ctx, `SELECT id, state, body FROM fed_messages
		WHERE check_booking_at > 0 AND check_booking_at <= $1 AND direction = 'out' LIMIT 1000`, now.UnixMilli())
	if err != nil {
		return err
	}
	type due struct {
		id, state string
		body      []byte
	}
	var list []due
	for rows.Next() {
		var d due
		if err := rows.Scan(&d.id, &d.state, &d.body); err != nil {
			rows.Close()
			return err
		}
		list = append(list, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	voided := false
	for _, d := range list {
		var c Charge
		json.Unmarshal(d.body, &c)
		booked := true
		if (d.state == "acked" || d.state == "pending") && c.ScanTerminal != "" {
			var decision string
			err := s.DB.R.QueryRowContext(ctx, `SELECT decision FROM scans WHERE terminal_id = $1 AND idem_key = $2`, c.ScanTerminal, c.ScanKey).Scan(&decision)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				booked = false
			case err != nil:
				return err
			default:
				booked = decision == scan.Accepted
			}
		}
		if booked {
			if err := s.w.exec(ctx, `UPDATE fed_messages SET check_booking_at = 0 WHERE id = $1 AND direction = 'out'`, d.id); err != nil {
				return err
			}
			continue
		}
		n, err := s.w.execN(ctx, `UPDATE fed_messages SET state = 'voiding', check_booking_at = 0, next_at = $2, updated_at = $2,
			last_error = 'the scan was never booked here' WHERE id = $1 AND direction = 'out' AND state = $3`, d.id, now.UnixMilli(), d.state)
		if err != nil {
			return err
		}
		if n == 1 {
			voided = true
			s.Log.Warn("federation: an authorised scan was never booked; voiding the home city's charge", "id", d.id, "terminal", c.ScanTerminal)
		}
	}
	if voided {
		s.Kick()
	}
	return nil
}

// DrainOutbox sends every due queued message (guaranteed charges and
// voids), batched per peer, and records the acknowledgements. It returns
// how many messages were acknowledged.
func (s *Service) DrainOutbox(ctx context.Context) (int, error) {
	now := s.Now()
	// Authorisations abandoned mid-flight (this process stopped while
	// asking) become voids.
	if err := s.w.exec(ctx, `UPDATE fed_messages SET state = 'voiding' WHERE direction = 'out' AND state = 'sending' AND updated_at < $1`,
		now.Add(-time.Minute).UnixMilli()); err != nil {
		return 0, err
	}
	if err := s.checkBookings(ctx, now); err != nil {
		return 0, err
	}
	rows, err := s.DB.R.QueryContext(ctx, `SELECT id, peer, state, kind, attempts, body FROM fed_messages
		WHERE direction = 'out' AND state IN ('pending', 'voiding') AND next_at <= $1 ORDER BY next_at LIMIT 5000`, now.UnixMilli())
	if err != nil {
		return 0, err
	}
	byPeer := map[string][]due{}
	for rows.Next() {
		var id, peer, state, kind string
		var attempts int
		var body []byte
		if err := rows.Scan(&id, &peer, &state, &kind, &attempts, &body); err != nil {
			rows.Close()
			return 0, err
		}
		var c Charge
		if err := json.Unmarshal(body, &c); err != nil {
			continue
		}
		switch {
		case kind == kindRefund:
			c.Mode = ModeRefund
		case state == "voiding":
			c.Mode = ModeVoid
		default:
			c.Mode = ModeGuaranteed
		}
		byPeer[peer] = append(byPeer[peer], due{c, attempts, state})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	// Each peer's batches go out up to InFlight at a time, so that the
	// peer's signature checks and JSON work overlap its commits.
	var acked atomic.Int64
	var firstErr error
	var emu sync.Mutex
	sem := make(chan struct{}, InFlight)
	var wg sync.WaitGroup
	for peer, list := range byPeer {
		m, err := s.member(peer)
		if err != nil {
			continue // no longer a member: kept, listed by reconciliation
		}
		for start := 0; start < len(list); start += MaxBatch {
			part := list[start:min(start+MaxBatch, len(list))]
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				n, err := s.deliver(ctx, m, part)
				acked.Add(int64(n))
				if err != nil {
					emu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					emu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	return int(acked.Load()), firstErr
}

// InFlight bounds the outbox batches in flight to one peer.
const InFlight = 4

// due is an outbox message to deliver.
type due struct {
	c        Charge
	attempts int
	state    string
}

// deliver sends one batch to m and records the answers.
func (s *Service) deliver(ctx context.Context, m Member, part []due) (int, error) {
	b := batch{Messages: make([]Charge, len(part))}
	for i, d := range part {
		b.Messages[i] = d.c
		b.Messages[i].Provider = ""
	}
	var ans batchAnswer
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	err := s.call(cctx, m, KindMessages, b, &ans)
	cancel()
	if err != nil {
		s.backoff(ctx, part[0].attempts, ids(b.Messages), err.Error())
		return 0, nil
	}
	s.markUp(m.City)
	byID := map[string]ChargeAnswer{}
	for _, a := range ans.Results {
		byID[a.ID] = a
	}
	var updates []outUpdate
	refunds := 0
	for _, d := range part {
		a, ok := byID[d.c.ID]
		if !ok {
			continue
		}
		st := "acked"
		amount := int64(-1) // unchanged
		switch {
		case d.c.Mode == ModeVoid && a.State == StateVoided:
			st = "voided"
		case d.c.Mode == ModeVoid && a.State == StateDeclined && a.Reason == apperr.DaySettled:
			// The home city keeps the charge: the day's statement, which
			// both cities signed, counts it. The charge stands here too
			// (refunded), and a refund dated today gives the money back.
			if err := s.refundLater(ctx, m.City, d.c, a); err != nil {
				s.Log.Warn("federation: queueing the refund of a charge on a settled day failed; retried with the next delivery", "peer", m.City, "id", d.c.ID, "err", err)
				continue
			}
			s.Log.Warn("federation: the home city refused a void on a settled day; the charge is refunded in a new message", "peer", m.City, "id", d.c.ID)
			refunds++
			continue
		case d.c.Mode == ModeRefund:
			switch a.State {
			case StateApplied:
			case StateVoided:
				// The home city had voided the charge itself: nothing to
				// give back, and the charge is void on both sides.
				st = "voided"
				ab, _ := json.Marshal(a)
				updates = append(updates, outUpdate{d.c.Refunds, "voided", ab, -1})
			default:
				s.Log.Error("federation: the home city refused a refund", "peer", m.City, "id", d.c.ID, "charge", d.c.Refunds, "reason", a.Reason)
				st = "failed"
			}
		case d.c.Mode == ModeGuaranteed && a.State == StateApplied:
			if charged := a.MedicalFen + a.WalletFen + a.CreditFen; charged != d.c.AmountFen {
				// The home city had applied our online request after we
				// gave up and queued the charge: it charged the fare its
				// resident's claims match (a card's concession), not the
				// adult fare we booked. Book the difference with the
				// provider, so the clearing accounts mirror.
				if err := s.adjust(ctx, m.City, d.c, charged); err != nil {
					s.Log.Warn("federation: booking a late answer's fare failed; retried with the next delivery", "peer", m.City, "id", d.c.ID, "err", err)
					continue
				}
				amount = charged
			}
		case d.c.Mode == ModeGuaranteed && a.State == StateDeclined:
			// The home city does not owe it (not its card, over the risk
			// limit, a scan time out of bounds): this city accepted it at
			// its own risk. Its booking moves from the clearing account to
			// the loss account, so the clearing accounts still mirror.
			if err := s.writeOff(ctx, m.City, d.c); err != nil {
				s.Log.Warn("federation: writing off a refused guaranteed charge failed; retried with the next delivery", "peer", m.City, "id", d.c.ID, "err", err)
				continue
			}
			s.Log.Warn("federation: the home city refused a guaranteed charge; written off", "peer", m.City, "id", d.c.ID, "reason", a.Reason, "amount_fen", d.c.AmountFen)
			st = "failed"
		default:
			st = "failed"
		}
		ab, _ := json.Marshal(a)
		updates = append(updates, outUpdate{d.c.ID, st, ab, amount})
	}
	if err := s.applyUpdates(ctx, updates); err != nil {
		return 0, err
	}
	if refunds > 0 {
		s.Kick()
	}
	return len(updates) + refunds, nil
}

// kindRefund is the kind of a refund's fed_messages rows (else "charge").
const kindRefund = "refund"

// refundLater handles the home city's refusal (day_settled) of our void
// of charge c: the day of c is settled, its statement — signed by both
// cities — counts c, and the home city keeps it booked. So does this
// city: the row becomes "refunded" (still counted in c's day, never sent
// again, and a retried scan of it is not approved). What the void was to
// give back goes in a refund (ModeRefund, RefundID), a new message dated
// now, delivered from the outbox like a guaranteed charge and counted in
// today's statement, where this city owes it. This city booked nothing
// for c (a void is only ever sent for a charge whose scan was not booked
// here), so the refund moves no money here either; at home it reverses
// the charge (the same reversal keys as a void: never both). The row's
// change and the refund's row commit together.
func (s *Service) refundLater(ctx context.Context, peer string, c Charge, a ChargeAnswer) error {
	now := s.Now()
	ans, _ := json.Marshal(a)
	return s.DB.Tx(ctx, func(tx *sql.Tx) error {
		var state string
		var amount int64
		err := tx.QueryRowContext(ctx, `SELECT state, amount_fen FROM fed_messages WHERE id = $1 AND direction = 'out'`, c.ID).Scan(&state, &amount)
		if err != nil || state != "voiding" {
			return err // handled by an earlier answer
		}
		if amount > 0 { // (a free fare has nothing to give back)
			r := Charge{ID: RefundID(s.City, c.ID), Mode: ModeRefund, Refunds: c.ID, Subject: c.Subject, AmountFen: amount,
				Scenario: c.Scenario, CreatedAt: now.UTC().Truncate(time.Millisecond)}
			body, _ := json.Marshal(r)
			if _, err := tx.ExecContext(ctx, `INSERT INTO fed_messages(id, direction, peer, kind, subject, amount_fen, created_at, state, body, updated_at, next_at)
				VALUES ($1, 'out', $2, '`+kindRefund+`', $3, $4, $5, 'pending', $6, $7, $7) ON CONFLICT (id, direction) DO NOTHING`,
				r.ID, peer, r.Subject, r.AmountFen, r.CreatedAt.UnixMilli(), body, now.UnixMilli()); err != nil {
				return err
			}
		}
		_, err = tx.ExecContext(ctx, `UPDATE fed_messages SET state = 'refunded', answer = $1, updated_at = $2,
			last_error = 'the home city refused the void: the day is settled; refunded in a new message'
			WHERE id = $3 AND direction = 'out' AND state = 'voiding'`, ans, now.UnixMilli(), c.ID)
		return err
	})
}

type outUpdate struct {
	id, state string
	answer    []byte
	amount    int64 // the amount booked, if it changed (else -1)
}

// adjust books, once, the difference between the fare the home city
// charged for c and the amount c booked here (clearing ↔ provider).
func (s *Service) adjust(ctx context.Context, peer string, c Charge, charged int64) error {
	if c.Provider == "" || !amountOK(charged, c) {
		return fmt.Errorf("cannot book %d fen for %s (asked %d, provider %q)", charged, c.ID, c.AmountFen, c.Provider)
	}
	req := ledger.TransferRequest{Key: "fed:adjust:" + c.ID, Kind: "fed_adjust",
		Memo: "cross-city fare corrected by the home city's late answer / 异地消费按归属地迟到应答调整",
		Meta: map[string]string{"message": c.ID, "peer": peer}}
	if charged < c.AmountFen {
		req.Debit, req.Credit, req.Amount = ledger.ReceivableID(c.Provider), ledger.ClearingID(peer), c.AmountFen-charged
	} else {
		req.Debit, req.Credit, req.Amount = ledger.ClearingID(peer), ledger.ReceivableID(c.Provider), charged-c.AmountFen
	}
	_, err := s.Ledger.Transfer(ctx, req)
	return err
}

// writeOff books, once, a guaranteed charge the home city refused as this
// city's loss: loss account → clearing, undoing the claim on the peer.
func (s *Service) writeOff(ctx context.Context, peer string, c Charge) error {
	_, err := s.Ledger.Transfer(ctx, ledger.TransferRequest{Key: "fed:loss:" + c.ID, Debit: FedLossAccount, Credit: ledger.ClearingID(peer),
		Amount: c.AmountFen, Kind: "fed_loss",
		Memo: "cross-city charge refused by the home city, accepted here at our risk / 归属地拒付的异地消费，由本市承担",
		Meta: map[string]string{"message": c.ID, "peer": peer}})
	return err
}

func (s *Service) applyUpdates(ctx context.Context, ups []outUpdate) error {
	if len(ups) == 0 {
		return nil
	}
	now := s.Now().UnixMilli()
	return s.DB.Tx(ctx, func(tx *sql.Tx) error {
		for _, u := range ups {
			if _, err := tx.ExecContext(ctx, `UPDATE fed_messages SET state = $1, answer = $2, updated_at = $3, last_error = '',
				amount_fen = CASE WHEN CAST($5 AS BIGINT) >= 0 THEN CAST($5 AS BIGINT) ELSE amount_fen END WHERE id = $4 AND direction = 'out'`,
				u.state, u.answer, now, u.id, u.amount); err != nil {
				return err
			}
		}
		return nil
	})
}

func ids(cs []Charge) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.ID
	}
	return out
}

func (s *Service) backoff(ctx context.Context, attempts int, ids []string, why string) {
	d := s.cfg.OutboxEvery << min(attempts, 10)
	if d > s.cfg.MaxBackoff {
		d = s.cfg.MaxBackoff
	}
	next := s.Now().Add(d).UnixMilli()
	err := s.DB.Tx(ctx, func(tx *sql.Tx) error {
		for _, id := range ids {
			if _, err := tx.ExecContext(ctx, `UPDATE fed_messages SET attempts = attempts + 1, next_at = $1, last_error = $2 WHERE id = $3 AND direction = 'out'`,
				next, truncate(why, 200), id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.Log.Warn("federation: recording a failed delivery", "err", err)
	}
}
