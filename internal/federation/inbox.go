package federation

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/catalog"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/scan"
)

// The home city (A) applying a peer's charges: the inbox.
//
// A message's inbox row and the money it moves commit in one database
// transaction: the row rides in the ledger's group-commit batch that
// applies the transfers (ledger.Attach, the inbox Attacher in bulk.go).
// So there is never money without its row, nor a row saying applied
// without the money. The Attacher's Claim, inside that transaction,
// refuses a message that already has a row — in particular one a void
// marked voided — and nothing is moved for it.
//
// A void marks the row voided first (an upsert that never moves a row out
// of voided) and then looks up the ledger for the message's transfer keys
// (fed:in:<id>:m, :w, :credit) and reverses whatever exists (reversal keys
// fed:void:<id>:<leg>, so a repeated void is a replay). Whichever of the
// booking's commit and the void's mark comes first, the resident ends up
// not charged: the booking's Claim sees the mark, or the void sees the
// booking's transfers (on PostgreSQL a row the void inserts after Claim
// read makes the batch's INSERT fail with a unique violation, and the
// ledger re-runs the batch, whose Claim then sees it).
//
// Booking runs detached from the caller's context (context.WithoutCancel
// with bookTimeout): the peer disconnecting (its authorisation timed out)
// must not abandon a booking whose ledger batch is already queued. If the
// ledger's answer is lost anyway (unavailable), the row and the money are
// still all or nothing, and a retry or a void finds out which.

// bookTimeout bounds the booking of one message or batch.
const bookTimeout = time.Minute

func detach(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), bookTimeout)
}

func busy(id string) error {
	return apperr.Newf(apperr.Unavailable, "message "+id+" is being applied; retry later", "该消息正在处理，请稍后重试")
}

type inRow struct {
	state   string
	answer  []byte
	amount  int64
	subject string
	updated int64
	created int64 // the message's date (statements count it on its day)
}

const inCols = `state, answer, amount_fen, subject, updated_at, created_at`

func (s *Service) inRow(ctx context.Context, id string) (*inRow, error) {
	var r inRow
	err := s.DB.QueryRow(ctx, `SELECT `+inCols+` FROM fed_messages WHERE id = $1 AND direction = 'in'`, id).
		Scan(&r.state, &r.answer, &r.amount, &r.subject, &r.updated, &r.created)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, unavailable(err)
	}
	return &r, nil
}

// openPIN decrypts a PIN a sender sealed to this node's key.
func (s *Service) openPIN(sealed []byte) (string, bool) {
	d, ok := s.Node().(ecode.Decrypter)
	if !ok || len(sealed) > 512 {
		return "", false
	}
	pin, err := d.Decrypt(sealed)
	if err != nil || len(pin) > 16 {
		return "", false
	}
	return string(pin), true
}

// validCharge checks what a message must be for us to consider it at all.
func validCharge(peer string, c Charge) bool {
	if c.ID == "" || len(c.ID) > 80 || !strings.HasPrefix(c.ID, peer+".") {
		return false
	}
	switch c.Mode {
	case ModeOnline, ModeGuaranteed, ModeVoid:
		if c.Refunds != "" {
			return false
		}
	case ModeRefund:
		// One refund per charge, of a charge of the sender's.
		if !strings.HasPrefix(c.Refunds, peer+".") || len(c.Refunds) > 80 || c.ID != RefundID(peer, c.Refunds) || len(c.Fares) > 0 || !c.ScanAt.IsZero() {
			return false
		}
	default:
		return false
	}
	if len(c.Fares) > 32 {
		return false
	}
	for _, f := range c.Fares {
		if f.AmountFen < 0 || f.AmountFen > c.AmountFen || len(f.Category) > 32 || len(f.Flags) > 16 {
			return false
		}
	}
	return c.AmountFen > 0 && c.Subject != "" && len(c.Subject) <= 128 && len(c.Scenario) <= 64
}

// scanAtOK: an offline scan's time decides the card's status (usable),
// so it gets the same clock tolerance as this city's own offline records:
// a backdated scan cannot charge a card reported lost since. The age is
// measured from when the sender accepted the record (created_at, itself
// not in the future), not from delivery: a charge queued while this city
// was down for days is still the record it was, and refusing it would
// leave the sender's booking without its counterpart here.
func (s *Service) scanAtOK(c Charge) bool {
	now := s.Now()
	if c.CreatedAt.After(now.Add(scan.OfflineFutureSkew)) {
		// A message dated in the future would fall in a day that cannot
		// be settled yet (statements count messages by created_at).
		return false
	}
	if c.ScanAt.IsZero() {
		return true
	}
	accepted := c.CreatedAt
	if accepted.IsZero() || accepted.After(now.Add(scan.OfflineFutureSkew)) {
		return false
	}
	return !c.ScanAt.After(accepted.Add(scan.OfflineFutureSkew)) && !c.ScanAt.Before(accepted.Add(-scan.OfflineMaxAge))
}

// refusal is the reason a message is declined before anything is looked
// up or booked ("" if it may go on), for apply and the bulk path alike:
// not a valid message; a time out of bounds; a charge or refund dated on
// a day both cities signed (final, daySettled: DaySettled, which the
// callers answer with onFinalDay, since a message delivered again is
// answered by its row); a guaranteed charge above the region's risk limit
// (a sender accepts without us only within it, so it is not one we owe).
// A void is judged by the day of the charge it voids (void).
func (s *Service) refusal(ctx context.Context, peer string, c Charge) (apperr.Code, error) {
	switch {
	case !validCharge(peer, c):
		return apperr.ValidationFailed, nil
	case !s.scanAtOK(c):
		return apperr.ClockSkew, nil
	}
	if c.Mode != ModeVoid {
		settled, err := s.daySettled(ctx, peer, c.CreatedAt)
		if err != nil {
			return "", err
		}
		if settled {
			return apperr.DaySettled, nil
		}
	}
	if c.Mode == ModeGuaranteed && c.AmountFen > s.cfg.RiskLimitFen {
		return apperr.RiskLimit, nil
	}
	return "", nil
}

// apply books a charge from peer exactly once (its id is the idempotency
// key) and answers. Errors are transient (the sender retries).
func (s *Service) apply(ctx context.Context, peer string, c Charge) (ChargeAnswer, error) {
	if len(c.PINSealed) > 0 {
		pin, ok := s.openPIN(c.PINSealed)
		if !ok || c.PIN != "" {
			return ChargeAnswer{ID: c.ID, State: StateDeclined, Reason: apperr.ValidationFailed}, nil
		}
		c.PIN, c.PINSealed = pin, nil
	}
	reason, err := s.refusal(ctx, peer, c)
	switch {
	case err != nil:
		return ChargeAnswer{}, err
	case reason == apperr.DaySettled:
		prev, err := s.inRow(ctx, c.ID)
		if err != nil {
			return ChargeAnswer{}, err
		}
		return s.onFinalDay(ctx, peer, c, prev)
	case reason != "":
		return ChargeAnswer{ID: c.ID, State: StateDeclined, Reason: reason}, nil
	}
	ctx, cancel := detach(ctx)
	defer cancel()
	// A charge is booked without looking for its row first: nearly every
	// message is new, and a re-sent one is refused by the inbox's Claim in
	// the ledger batch (taken), after which applyAfter answers by its row.
	// A void needs the row's content; a charge with a PIN must not have a
	// re-send check the PIN again (a wrong one would count twice).
	var prev *inRow
	if c.Mode == ModeVoid || c.Mode == ModeRefund || c.PIN != "" {
		var err error
		if prev, err = s.inRow(ctx, c.ID); err != nil {
			return ChargeAnswer{}, err
		}
	}
	return s.applyAfter(ctx, peer, c, prev)
}

// applyAfter applies c given its inbox row as read (nil: none).
func (s *Service) applyAfter(ctx context.Context, peer string, c Charge, prev *inRow) (ChargeAnswer, error) {
	for attempt := 0; attempt < 3; attempt++ {
		if prev != nil {
			if !amountOK(prev.amount, c) || prev.subject != c.Subject {
				// Same id, other content: a forged or corrupted message.
				return ChargeAnswer{ID: c.ID, State: StateDeclined, Reason: apperr.IdempotencyConflict}, nil
			}
			switch c.Mode {
			case ModeVoid:
				return s.void(ctx, peer, c)
			case ModeRefund:
				return s.refund(ctx, peer, c)
			}
			if prev.state != StateDeclined || c.Mode != ModeGuaranteed {
				// Answered from a row the ledger may not have synced yet
				// (SQLite's deferred fsync): make it durable first.
				if err := s.Ledger.Durable(ctx); err != nil {
					return ChargeAnswer{}, err
				}
				return storedAnswer(c.ID, prev), nil
			}
			// Declined online, but then accepted offline by the sender
			// (our answer came too late): we must book it after all. The
			// declined row moved no money; it makes way for the booking's.
			n, err := s.w.execN(ctx, `DELETE FROM fed_messages WHERE id = $1 AND direction = 'in' AND state = 'declined'`, c.ID)
			if err != nil {
				return ChargeAnswer{}, unavailable(err)
			}
			if n == 0 { // changed meanwhile (voided?): look again
				if prev, err = s.inRow(ctx, c.ID); err != nil {
					return ChargeAnswer{}, err
				}
				continue
			}
		}
		switch c.Mode {
		case ModeVoid:
			return s.void(ctx, peer, c)
		case ModeRefund:
			return s.refund(ctx, peer, c)
		}
		a, taken, err := s.book(ctx, peer, c)
		if err != nil || !taken {
			return a, err
		}
		// A row appeared meanwhile (a void overtook the booking, or
		// another delivery booked it): answer by it.
		if prev, err = s.inRow(ctx, c.ID); err != nil {
			return ChargeAnswer{}, err
		}
	}
	return ChargeAnswer{}, busy(c.ID)
}

func storedAnswer(id string, r *inRow) ChargeAnswer {
	var a ChargeAnswer
	json.Unmarshal(r.answer, &a)
	if a.ID == "" {
		a = ChargeAnswer{ID: id, State: r.state}
	}
	return a
}

func inBody(c Charge) []byte {
	c.PIN = ""
	b, _ := json.Marshal(c)
	return b
}

// attach applies legs with c's inbox row in the same transaction (no legs:
// the row alone, answering pre). taken: the message already had a row
// (nothing moved, nothing written). Otherwise the Outcome's Err is the
// ledger's refusal, and m.written tells whether a row was written.
func (s *Service) attach(ctx context.Context, peer string, c Charge, legs []ledger.TransferRequest, pre ChargeAnswer, cl *claims) (m *inMsg, o ledger.Outcome, taken bool, err error) {
	m = newInMsg(c, peer)
	m.pre, m.cl = pre, cl
	o, err = s.Ledger.Attach(ctx, legs, &ledger.Attachment{To: s.inbox, Value: m})
	if err != nil {
		return m, o, false, err
	}
	return m, o, o.Refused != nil, nil
}

// record stores an answer that moved no money.
func (s *Service) record(ctx context.Context, peer string, c Charge, a ChargeAnswer) (ChargeAnswer, bool, error) {
	_, _, taken, err := s.attach(ctx, peer, c, nil, a, nil)
	if err != nil || taken {
		return ChargeAnswer{}, taken, err
	}
	return a, false, nil
}

// onFinalDay answers a charge or refund dated on a day both cities
// signed (refusal: DaySettled). A new one is refused: the day's statement
// is final. One that has a row — delivered again, its answer lost — is
// answered by it as before (a refund's reversals are completed), never
// declined: the sender would write off, or stop counting, a message the
// signed statement counts on both sides.
func (s *Service) onFinalDay(ctx context.Context, peer string, c Charge, prev *inRow) (ChargeAnswer, error) {
	switch {
	case prev == nil:
		return ChargeAnswer{ID: c.ID, State: StateDeclined, Reason: apperr.DaySettled}, nil
	case !amountOK(prev.amount, c) || prev.subject != c.Subject:
		return ChargeAnswer{ID: c.ID, State: StateDeclined, Reason: apperr.IdempotencyConflict}, nil
	case c.Mode == ModeRefund:
		ctx, cancel := detach(ctx)
		defer cancel()
		return s.refund(ctx, peer, c)
	}
	if err := s.Ledger.Durable(ctx); err != nil {
		return ChargeAnswer{}, err
	}
	return storedAnswer(c.ID, prev), nil
}

// void marks a message voided (creating its row if needed) and reverses
// whatever its booking moved.
//
// A charge booked here whose day is settled (daySettled: both cities
// signed the day's statement, which counts it) is not voided: the answer
// is declined, day_settled, and nothing changes; the sender then gives
// the money back in a refund, a new message dated the day it is made
// (refund, refundLater). The check is made again after the mark, and a
// statement is checked against the books after it is saved (stillHolds):
// whichever of a void and a settlement comes second sees the other. If
// the statement saved meanwhile is the books with the mark (it was
// computed after it), the void goes on; otherwise the mark is undone and
// the void refused. Voids (and refunds) of one charge take turns here.
func (s *Service) void(ctx context.Context, peer string, c Charge) (ChargeAnswer, error) {
	mu := &s.voids[riskStripe(c.ID)]
	mu.Lock()
	defer mu.Unlock()
	refused := ChargeAnswer{ID: c.ID, State: StateDeclined, Reason: apperr.DaySettled}
	row, err := s.inRow(ctx, c.ID)
	if err != nil {
		return ChargeAnswer{}, err
	}
	booked := row != nil && row.state == StateApplied
	var day time.Time
	if booked {
		day = time.UnixMilli(row.created)
		settled, err := s.daySettled(ctx, peer, day)
		if err != nil || settled {
			return refused, err
		}
		// Refunded already (its day was settled then): the refund gave
		// the money back; the charge stays in its day.
		if r, err := s.inRow(ctx, RefundID(peer, c.ID)); err != nil || r != nil {
			return refused, err
		}
		s.at(ctx, "void_checked", c.ID)
	}
	a := ChargeAnswer{ID: c.ID, State: StateVoided}
	ans, _ := json.Marshal(a)
	now := s.Now().UnixMilli()
	// Mark first: a booking not yet committed is refused by its Claim
	// after this; one committed before has its transfers found below.
	err = s.w.exec(ctx, `INSERT INTO fed_messages(id, direction, peer, kind, subject, amount_fen, created_at, state, body, answer, updated_at)
		VALUES ($1, 'in', $2, 'charge', $3, $4, $5, 'voided', $6, $7, $8)
		ON CONFLICT (id, direction) DO UPDATE SET state = 'voided', answer = EXCLUDED.answer, updated_at = EXCLUDED.updated_at
		WHERE fed_messages.state <> 'voided'`,
		c.ID, peer, c.Subject, c.AmountFen, c.CreatedAt.UnixMilli(), inBody(c), ans, now)
	if err != nil {
		return ChargeAnswer{}, unavailable(err)
	}
	if booked {
		if settled, err := s.daySettled(ctx, peer, day); err != nil {
			return ChargeAnswer{}, err
		} else if settled {
			signed, ok, err := s.finalStatement(ctx, peer, day)
			if err != nil {
				return ChargeAnswer{}, err
			}
			books, err := s.statement(ctx, peer, day.UTC().Format("2006-01-02"))
			if err != nil {
				return ChargeAnswer{}, err
			}
			if !ok || signed != books {
				if err := s.w.exec(ctx, `UPDATE fed_messages SET state = $1, answer = $2, updated_at = $3 WHERE id = $4 AND direction = 'in' AND state = 'voided'`,
					StateApplied, row.answer, s.Now().UnixMilli(), c.ID); err != nil {
					return ChargeAnswer{}, unavailable(err)
				}
				return refused, nil
			}
		}
	}
	if err := s.reverseAll(ctx, c.ID); err != nil {
		return ChargeAnswer{}, err
	}
	return a, nil
}

// refund gives back, at home, a charge (c.Refunds) that the sender voided
// after its day was settled (refundLater): the charge stays booked in
// its day, and the reversal of what it moved is the refund's, counted in
// the refund's own day (messagesWith). The reversal keys are the void's
// (fed:void:<charge>:<leg>), so a charge is never given back twice, by a
// void and a refund or by two deliveries. The money moves first and the
// refund's row is written after it: a statement never counts a refund
// whose money has not moved (a retry completes both). A charge voided
// here after all is answered voided (nothing to give back).
func (s *Service) refund(ctx context.Context, peer string, c Charge) (ChargeAnswer, error) {
	mu := &s.voids[riskStripe(c.Refunds)]
	mu.Lock()
	defer mu.Unlock()
	orig, err := s.inRow(ctx, c.Refunds)
	if err != nil {
		return ChargeAnswer{}, err
	}
	declined := ChargeAnswer{ID: c.ID, State: StateDeclined}
	switch {
	case orig == nil || orig.state == StateDeclined:
		declined.Reason = apperr.NotFound
		return declined, nil
	case orig.amount != c.AmountFen || orig.subject != c.Subject:
		declined.Reason = apperr.IdempotencyConflict
		return declined, nil
	case orig.state == StateVoided:
		return ChargeAnswer{ID: c.ID, State: StateVoided}, nil
	}
	moved, err := s.movedLegs(ctx, []string{c.Refunds})
	if err != nil {
		return ChargeAnswer{}, err
	}
	a := ChargeAnswer{ID: c.ID, State: StateApplied}
	for _, name := range legNames {
		for _, l := range moved[c.Refunds] {
			if l.leg != name {
				continue
			}
			t, err := s.Ledger.Reverse(ctx, "fed:void:"+c.Refunds+":"+l.leg, l.transfer, l.amount)
			if err != nil {
				return ChargeAnswer{}, err
			}
			switch l.leg {
			case "m":
				a.MedicalFen += l.amount
			case "w":
				a.WalletFen += l.amount
			case "credit":
				a.CreditFen += l.amount
			}
			a.Transfers = append(a.Transfers, t.ID)
		}
	}
	ans, _ := json.Marshal(a)
	if err := s.w.exec(ctx, `INSERT INTO fed_messages(id, direction, peer, kind, subject, amount_fen, created_at, state, body, answer, updated_at)
		VALUES ($1, 'in', $2, '`+kindRefund+`', $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id, direction) DO NOTHING`,
		c.ID, peer, c.Subject, c.AmountFen, c.CreatedAt.UnixMilli(), StateApplied, inBody(c), ans, s.Now().UnixMilli()); err != nil {
		return ChargeAnswer{}, unavailable(err)
	}
	return a, nil
}

// Ledger keys of a message's legs at home.
var legNames = []string{"m", "w", "credit"}

func legKey(id, leg string) string { return "fed:in:" + id + ":" + leg }

type movedLeg struct {
	leg      string
	transfer string
	amount   int64
}

// movedLegs looks up, by their idempotency keys, the transfers the
// bookings of the messages ids made. It reads the ledger's journal by its
// unique key column (the ledger has no look-up by key).
func (s *Service) movedLegs(ctx context.Context, ids []string) (map[string][]movedLeg, error) {
	out := map[string][]movedLeg{}
	for start := 0; start < len(ids); start += 300 {
		part := ids[start:min(start+300, len(ids))]
		var q strings.Builder
		q.WriteString(`SELECT idem_key, seq, amount FROM ledger_journal WHERE idem_key IN (`)
		args := make([]any, 0, len(part)*len(legNames))
		for _, id := range part {
			for _, l := range legNames {
				if len(args) > 0 {
					q.WriteString(", ")
				}
				args = append(args, legKey(id, l))
				q.WriteString(s.ph(len(args)))
			}
		}
		q.WriteString(`)`)
		rows, err := s.DB.R.QueryContext(ctx, q.String(), args...)
		if err != nil {
			return nil, unavailable(err)
		}
		for rows.Next() {
			var key string
			var seq, amount int64
			if err := rows.Scan(&key, &seq, &amount); err != nil {
				rows.Close()
				return nil, unavailable(err)
			}
			rest := strings.TrimPrefix(key, "fed:in:")
			i := strings.LastIndexByte(rest, ':')
			id, leg := rest[:i], rest[i+1:]
			out[id] = append(out[id], movedLeg{leg: leg, transfer: ledger.TransferID(seq), amount: amount})
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, unavailable(err)
		}
	}
	return out, nil
}

func answerFrom(id string, legs []movedLeg) ChargeAnswer {
	a := ChargeAnswer{ID: id, State: StateApplied}
	for _, l := range legs {
		switch l.leg {
		case "m":
			a.MedicalFen = l.amount
		case "w":
			a.WalletFen = l.amount
		case "credit":
			a.CreditFen = l.amount
		}
	}
	// In leg order, like a fresh booking's answer.
	for _, name := range legNames {
		for _, l := range legs {
			if l.leg == name {
				a.Transfers = append(a.Transfers, l.transfer)
			}
		}
	}
	return a
}

// reverseAll reverses every transfer the bookings of message id made
// (idempotent: the reversal keys derive from the message and the leg).
func (s *Service) reverseAll(ctx context.Context, id string) error {
	moved, err := s.movedLegs(ctx, []string{id})
	if err != nil {
		return err
	}
	for _, l := range moved[id] {
		if _, err := s.Ledger.Reverse(ctx, "fed:void:"+id+":"+l.leg, l.transfer, l.amount); err != nil {
			return err
		}
	}
	return nil
}

// book moves the money at home — the resident's medical account (medical
// charges, first) and wallet → our clearing account for the peer — with
// the message's inbox row in the same transaction, and answers. A ledger
// refusal is a declined answer for an online charge; a guaranteed charge
// the wallet cannot cover is booked from FedCreditAccount. taken: the
// message already had a row (nothing moved). Errors are transient.
func (s *Service) book(ctx context.Context, peer string, c Charge) (a ChargeAnswer, taken bool, err error) {
	defer s.at(ctx, "booked", c.ID)
	declined := ChargeAnswer{ID: c.ID, State: StateDeclined}
	clr := ledger.ClearingID(peer)
	card, err := s.holderCard(ctx, c.Subject)
	ok := false
	if err == nil {
		if ok, err = s.usable(ctx, card, c); err != nil {
			return ChargeAnswer{}, false, err
		}
	}
	var resID string
	switch {
	case err == nil && ok:
		resID = card.ResidentID
	case c.Mode == ModeGuaranteed && apperr.CodeOf(err) == apperr.NotFound:
		// No such card or token was ever issued here: the sender accepted
		// something that is not our card, at its own risk (a genuine
		// code's token always exists; a card number is only checked for
		// its form offline).
		declined.Reason = apperr.UnknownHolder
		return s.record(ctx, peer, c, declined)
	case err == nil || apperr.CodeOf(err) == apperr.NotFound:
		if c.Mode == ModeOnline {
			declined.Reason = apperr.Revoked
			if strings.HasPrefix(c.Subject, CardSubject) {
				declined.Reason = apperr.CardNotActive
			}
			if err != nil {
				declined.Reason = apperr.UnknownHolder
			} else if card.Status == resident.StatusActive && card.Locked {
				declined.Reason = apperr.CardLocked
			}
			return s.record(ctx, peer, c, declined)
		}
	default:
		return ChargeAnswer{}, false, unavailable(err)
	}
	var cl *claims
	if resID != "" && c.Mode == ModeOnline && strings.HasPrefix(c.Subject, CardSubject) {
		// A physical card carries no claims: answer them, and charge the
		// fare of B's they match (equal treatment, 同城待遇).
		if cl, err = s.claimsOf(ctx, resID, c); err != nil {
			return ChargeAnswer{}, false, err
		}
		if fare := cl.fare(c); fare != c.AmountFen {
			c.AmountFen = fare
		} else {
			cl = nil // no concession applies: the holder's claims stay at home
		}
	}
	if resID != "" && c.Mode == ModeOnline && c.PIN != "" {
		if _, err := s.Residents.VerifyPIN(ctx, card.Number, c.PIN); err != nil {
			if code := apperr.CodeOf(err); code == apperr.Unavailable || code == apperr.Internal {
				return ChargeAnswer{}, false, err
			}
			declined.Reason = apperr.CodeOf(err)
			return s.record(ctx, peer, c, declined)
		}
	}
	if cl != nil && c.AmountFen == 0 {
		// A free fare for these claims (e.g. 65 and over): nothing moves.
		return s.record(ctx, peer, c, ChargeAnswer{ID: c.ID, State: StateApplied, Category: cl.category, Flags: cl.flags})
	}
	meta := map[string]string{"peer": peer, "message": c.ID, "scenario": c.Scenario}
	if resID != "" {
		var legs []ledger.TransferRequest
		m, w := int64(0), c.AmountFen
		if c.Medical {
			mb, err := s.Ledger.Balance(ctx, ledger.MedicalID(resID))
			if err != nil && apperr.CodeOf(err) != apperr.UnknownAccount {
				return ChargeAnswer{}, false, err
			}
			m, w = catalog.SplitMedical(c.AmountFen, mb.Available)
		}
		if m > 0 {
			legs = append(legs, ledger.TransferRequest{Key: legKey(c.ID, "m"), Debit: ledger.MedicalID(resID), Credit: clr, Amount: m, Kind: "fed_medical", Meta: meta})
		}
		if w > 0 {
			legs = append(legs, ledger.TransferRequest{Key: legKey(c.ID, "w"), Debit: ledger.WalletID(resID), Credit: clr, Amount: w, Kind: "fed_charge", Meta: meta})
		}
		s.at(ctx, "before_ledger", c.ID)
		msg, o, taken, err := s.attach(ctx, peer, c, legs, ChargeAnswer{}, cl)
		s.at(ctx, "after_ledger", c.ID)
		switch {
		case err != nil || taken:
			return ChargeAnswer{}, taken, err
		case o.Err == nil || msg.written:
			return msg.answer, false, nil // applied, or declined (online) and recorded
		case apperr.CodeOf(o.Err) == apperr.IdempotencyConflict:
			return s.resume(ctx, peer, c)
		}
		// Guaranteed, and the wallet cannot pay: the credit account
		// advances it.
	}
	// Guaranteed: the sender accepted within the region's risk limit; we
	// owe it whatever our resident's wallet holds. The resident's debt is
	// advanced by the credit account.
	msg, o, taken, err := s.attach(ctx, peer, c, []ledger.TransferRequest{creditLeg(peer, c, meta)}, ChargeAnswer{}, nil)
	switch {
	case err != nil || taken:
		return ChargeAnswer{}, taken, err
	case o.Err == nil:
		return msg.answer, false, nil
	case apperr.CodeOf(o.Err) == apperr.IdempotencyConflict:
		return s.resume(ctx, peer, c)
	}
	return ChargeAnswer{}, false, o.Err
}

// resume handles a message whose ledger keys were used before without a
// row (a booking by an earlier version of this code that stopped between
// its transfer and its row): it answers what they moved, and records it.
func (s *Service) resume(ctx context.Context, peer string, c Charge) (ChargeAnswer, bool, error) {
	moved, err := s.movedLegs(ctx, []string{c.ID})
	if err != nil {
		return ChargeAnswer{}, false, err
	}
	legs := moved[c.ID]
	if len(legs) == 0 {
		return ChargeAnswer{}, false, apperr.Newf(apperr.Internal, "the ledger keys of "+c.ID+" conflict but hold no transfer", "消息的账本幂等键冲突")
	}
	return s.record(ctx, peer, c, answerFrom(c.ID, legs))
}

func creditLeg(peer string, c Charge, meta map[string]string) ledger.TransferRequest {
	return ledger.TransferRequest{Key: legKey(c.ID, "credit"), Debit: FedCreditAccount, Credit: ledger.ClearingID(peer), Amount: c.AmountFen, Kind: "fed_credit", Meta: meta}
}

func (s *Service) at(ctx context.Context, stage, id string) {
	if s.hook != nil {
		s.hook(ctx, stage, id)
	}
}

// holderCard finds the card a charge names: by token (an e-code's
// subject) or, for a physical card, by number (CardSubject + number).
// not_found for a card this city does not know.
func (s *Service) holderCard(ctx context.Context, subject string) (resident.Card, error) {
	if n, ok := strings.CutPrefix(subject, CardSubject); ok {
		c, err := s.Residents.Card(ctx, n)
		if apperr.CodeOf(err) == apperr.ValidationFailed {
			return c, apperr.Newf(apperr.NotFound, "no card with this number", "未找到该卡")
		}
		return c, err
	}
	return s.Residents.CardByToken(ctx, subject)
}

// usable reports whether card may be charged by c. Online, it must be
// active and not locked. A scan an offline terminal made (ScanAt set) is
// judged as of the scan, as this city judges its own offline records: a
// card reported lost or cancelled after it is still charged, one lost at
// the scan's time is not, even if found (or lost again) since (its
// history tells), and the PIN lock does not matter (no PIN was asked).
func (s *Service) usable(ctx context.Context, card resident.Card, c Charge) (bool, error) {
	if c.ScanAt.IsZero() {
		return card.Status == resident.StatusActive && !card.Locked, nil
	}
	if card.IssuedAt.After(c.ScanAt) {
		return false, nil // the card did not exist yet at the scan's time
	}
	if !card.StatusChangedAt.After(c.ScanAt) {
		return card.Status == resident.StatusActive, nil
	}
	then, ok, err := s.Residents.StatusAt(ctx, card.Number, c.ScanAt)
	if err != nil {
		return false, apperr.Wrap(apperr.Unavailable, err)
	}
	return !ok || then == resident.StatusActive, nil
}

// claims are a resident's category and concession flags, as an e-code of
// the card would carry them.
type claims struct {
	category string
	flags    []string
}

func (s *Service) claimsOf(ctx context.Context, residentID string, c Charge) (*claims, error) {
	r, err := s.Residents.Get(ctx, residentID)
	if err != nil {
		if code := apperr.CodeOf(err); code == apperr.NotFound {
			return nil, apperr.Newf(apperr.Internal, "the card's resident is missing", "卡片对应的居民不存在")
		}
		return nil, unavailable(err)
	}
	at := s.Now()
	if !c.ScanAt.IsZero() {
		at = c.ScanAt
	}
	cl := &claims{category: r.Category}
	if s.HolderFlags != nil {
		cl.flags = s.HolderFlags(r, at)
	}
	return cl, nil
}

// fare is what c costs a holder with these claims: the lowest of B's
// fares whose claims are exactly these, else c's amount.
func (cl *claims) fare(c Charge) int64 {
	amount := c.AmountFen
	for _, f := range c.Fares {
		if f.Category == cl.category && slices.Equal(f.Flags, cl.flags) && f.AmountFen >= 0 && f.AmountFen < amount {
			amount = f.AmountFen
		}
	}
	return amount
}
