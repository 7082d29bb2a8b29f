package federation

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"math/bits"
	"strconv"
	"strings"
	"sync"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/store"
)

// applyMany applies a batch of messages from peer (HandleMessages).
//
// New guaranteed charges without a medical part — the outbox's usual
// traffic — take a bulk path: one look-up of the batch's inbox rows, the
// card look-ups (each token once), one Ledger.AttachMany for the wallet
// legs with each message's row riding in the ledger's transaction (the
// inbox Attacher: one commit for the whole batch), and one more for the
// credit legs of those the wallet could not cover. Every other message
// (voids, replays, online or medical charges, and those the Attacher's
// Claim refused because a row appeared meanwhile) takes apply's path,
// concurrently. Exactly once: the row is claimed inside the transaction
// that moves the money, and the ledger keys derive from the message id.
func (s *Service) applyMany(ctx context.Context, peer string, msgs []Charge) ([]ChargeAnswer, error) {
	ctx, cancel := detach(ctx)
	defer cancel()
	out := make([]ChargeAnswer, len(msgs))
	errs := make([]error, len(msgs))
	first := make(map[string]int, len(msgs))
	var ids []string
	final := map[int]bool{} // dated on a settled day: onFinalDay answers
	for i, c := range msgs {
		if reason, err := s.refusal(ctx, peer, c); err != nil {
			errs[i] = err
			continue
		} else if reason == apperr.DaySettled {
			final[i] = true
		} else if reason != "" {
			out[i] = ChargeAnswer{ID: c.ID, State: StateDeclined, Reason: reason}
			continue
		}
		if _, dup := first[c.ID]; dup {
			continue // applied once, answered twice
		}
		first[c.ID] = i
		ids = append(ids, c.ID)
	}
	prev, err := s.inRows(ctx, ids)
	if err != nil {
		return nil, err
	}
	var bulk, single []int
	for _, id := range ids {
		i := first[id]
		if c := msgs[i]; prev[id] == nil && c.Mode == ModeGuaranteed && !c.Medical && !final[i] {
			bulk = append(bulk, i)
		} else {
			single = append(single, i)
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sem := make(chan struct{}, applyParallel)
		var inner sync.WaitGroup
		for _, i := range single {
			inner.Add(1)
			sem <- struct{}{}
			go func(i int) {
				defer func() { <-sem; inner.Done() }()
				if final[i] {
					out[i], errs[i] = s.onFinalDay(ctx, peer, msgs[i], prev[msgs[i].ID])
				} else {
					out[i], errs[i] = s.applyAfter(ctx, peer, msgs[i], prev[msgs[i].ID])
				}
			}(i)
		}
		inner.Wait()
	}()
	s.bookMany(ctx, peer, msgs, bulk, out, errs)
	wg.Wait()
	for i, c := range msgs {
		if j, ok := first[c.ID]; ok && j != i && validCharge(peer, c) {
			out[i], errs[i] = out[j], errs[j]
		}
		if errs[i] != nil {
			return nil, errs[i]
		}
	}
	return out, nil
}

// ph is the nth parameter marker of a many-parameter statement: "$n" on
// PostgreSQL, "?" on SQLite, which resolves each "$n" name through a linear
// list (quadratic in the number of parameters: it was 60 % of the bulk
// path's time).
func (s *Service) ph(n int) string {
	if s.DB.Dialect == store.Postgres {
		return "$" + strconv.Itoa(n)
	}
	return "?"
}

// values appends "(…), (…)" rows of per parameter markers each, with the
// SQL text around each row's markers produced by row.
func (s *Service) values(q *strings.Builder, rows, per int, row func(ph []string) string) {
	n := 0
	ph := make([]string, per)
	for r := 0; r < rows; r++ {
		if r > 0 {
			q.WriteString(", ")
		}
		for k := range ph {
			n++
			ph[k] = s.ph(n)
		}
		q.WriteString(row(ph))
	}
}

// sqlChunk bounds the rows of one multi-row statement (parameters stay far
// below SQLite's and PostgreSQL's limits).
const sqlChunk = 300

// inRows reads the inbox rows of ids, in one query per chunk.
func (s *Service) inRows(ctx context.Context, ids []string) (map[string]*inRow, error) {
	out := make(map[string]*inRow, len(ids))
	for start := 0; start < len(ids); start += sqlChunk {
		part := ids[start:min(start+sqlChunk, len(ids))]
		var q strings.Builder
		q.WriteString(`SELECT id, ` + inCols + ` FROM fed_messages WHERE direction = 'in' AND id IN (`)
		args := make([]any, len(part))
		for k, id := range part {
			if k > 0 {
				q.WriteString(", ")
			}
			q.WriteString(s.ph(k + 1))
			args[k] = id
		}
		q.WriteString(`)`)
		rows, err := s.DB.R.QueryContext(ctx, q.String(), args...)
		if err != nil {
			return nil, unavailable(err)
		}
		for rows.Next() {
			var id string
			var r inRow
			if err := rows.Scan(&id, &r.state, &r.answer, &r.amount, &r.subject, &r.updated, &r.created); err != nil {
				rows.Close()
				return nil, unavailable(err)
			}
			out[id] = &r
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, unavailable(err)
		}
	}
	return out, nil
}

// bookMany books the new guaranteed charges msgs[idx] in bulk, setting
// out[i] or errs[i] for each.
func (s *Service) bookMany(ctx context.Context, peer string, msgs []Charge, idx []int, out []ChargeAnswer, errs []error) {
	if len(idx) == 0 {
		return
	}
	// 1. The cards, each token (or card number) once, concurrently.
	type holder struct {
		card  resident.Card
		found bool
		err   error
	}
	cards := map[string]*holder{}
	var tokens []string
	for _, i := range idx {
		if _, ok := cards[msgs[i].Subject]; !ok {
			cards[msgs[i].Subject] = &holder{}
			tokens = append(tokens, msgs[i].Subject)
		}
	}
	var wg sync.WaitGroup
	next := make(chan string)
	for w := 0; w < min(8, len(tokens)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for tok := range next {
				h := cards[tok] // the map is only read here
				card, err := s.holderCard(ctx, tok)
				switch {
				case err == nil:
					h.card, h.found = card, true
				case apperr.CodeOf(err) == apperr.NotFound:
				default:
					h.err = unavailable(err)
				}
			}
		}()
	}
	for _, tok := range tokens {
		next <- tok
	}
	close(next)
	wg.Wait()

	// 2. The money and the rows: the wallets, with each message's row in
	// the ledger's transaction, then the credit legs of those the wallet
	// could not cover (or without an active card).
	metaOf := func(c Charge) map[string]string {
		return map[string]string{"peer": peer, "message": c.ID, "scenario": c.Scenario}
	}
	var wallet, credit, single []int
	for _, i := range idx {
		h := cards[msgs[i].Subject]
		ok := false
		if h.err == nil && h.found {
			ok, h.err = s.usable(ctx, h.card, msgs[i])
		}
		switch {
		case h.err != nil:
			errs[i] = h.err
		case !h.found:
			// Not a card or token we ever issued: accepted at the sender's
			// risk, not ours (book does the same).
			out[i] = ChargeAnswer{ID: msgs[i].ID, State: StateDeclined, Reason: apperr.UnknownHolder}
		case ok:
			wallet = append(wallet, i)
		default:
			credit = append(credit, i)
		}
	}
	round := func(idx []int, leg func(c Charge) ledger.TransferRequest) (refused []int) {
		if len(idx) == 0 {
			return nil
		}
		reqs := make([]ledger.Attached, len(idx))
		vals := make([]*inMsg, len(idx))
		for k, i := range idx {
			vals[k] = newInMsg(msgs[i], peer)
			reqs[k] = ledger.Attached{Transfers: []ledger.TransferRequest{leg(msgs[i])}, Att: &ledger.Attachment{To: s.inbox, Value: vals[k]}}
			s.at(ctx, "before_ledger", msgs[i].ID)
		}
		outs, aerrs := s.Ledger.AttachMany(ctx, reqs)
		for k, i := range idx {
			s.at(ctx, "after_ledger", msgs[i].ID)
			switch o := outs[k]; {
			case aerrs[k] != nil:
				// Unknown outcome (the batch failed or did not run): the
				// sender's retry finds the row if the money moved.
				errs[i] = aerrs[k]
			case o.Refused != nil, apperr.CodeOf(o.Err) == apperr.IdempotencyConflict:
				// A row exists, or the keys were used before: apply's path
				// answers by them.
				single = append(single, i)
			case o.Err != nil:
				refused = append(refused, i)
			default:
				out[i] = vals[k].answer
			}
		}
		return refused
	}
	short := round(wallet, func(c Charge) ledger.TransferRequest {
		h := cards[c.Subject]
		return ledger.TransferRequest{Key: legKey(c.ID, "w"), Debit: ledger.WalletID(h.card.ResidentID), Credit: ledger.ClearingID(peer),
			Amount: c.AmountFen, Kind: "fed_charge", Meta: metaOf(c)}
	})
	// The wallet could not pay (the ledger refused: insufficient funds, a
	// closed account …): the credit account advances it. A refusal for
	// keys used before (idempotency_conflict) goes to apply's path, which
	// answers from what they moved.
	for _, i := range short {
		credit = append(credit, i)
	}
	failed := round(credit, func(c Charge) ledger.TransferRequest { return creditLeg(peer, c, metaOf(c)) })
	single = append(single, failed...)
	for _, i := range single {
		out[i], errs[i] = s.apply(ctx, peer, msgs[i])
	}
}

// inMsg is an inbox row riding in the ledger's transaction
// (Attachment.Value of the inbox Attacher).
type inMsg struct {
	c    Charge
	peer string
	body []byte // the row's body (inBody), encoded before the ledger batch
	// pre is the answer to store when the request has no transfers.
	pre ChargeAnswer
	// cl: the holder's claims, answered with an applied physical card.
	cl *claims
	// Set by Write: whether a row was written, and its answer.
	written bool
	answer  ChargeAnswer
}

func newInMsg(c Charge, peer string) *inMsg {
	return &inMsg{c: c, peer: peer, body: inBody(c)}
}

// inbox is the fed_messages inbox's ledger.Attacher: a new message's row
// commits in the same transaction as its transfers, so there is never
// money without its row or a row without its money. Claim refuses
// messages that already have a row (a void that overtook the booking,
// another delivery's booking, a stored answer); the caller answers by that
// row. Write inserts, in multi-row INSERTs, the rows of the messages the
// ledger applied (applied, with the answer; or the pre-set answer of a
// request without transfers) and of the online charges it refused
// (declined, with the ledger's reason). It writes nothing for a refused
// guaranteed charge (the caller tries the credit leg) nor for a refusal
// by keys already used (idempotency_conflict: the caller answers what
// they moved). The primary key stays the authority across processes: a
// row another process committed after Claim read fails the INSERT, and
// the ledger re-runs the batch, whose Claim then sees it.
type inbox struct {
	s     *Service
	stmts store.WriterStmts
	// The statement texts per size class (index: log2 of the class).
	claimSQL, writeSQL []string
}

var errTaken = errors.New("federation: the message already has an inbox row")

// The inbox's statements run inside the ledger's batch, on SQLite's one
// writer connection, so they are prepared beforehand (newInbox), one per
// size class: parsing them was a tenth of an authorisation's ledger time.
const inboxMaxClass = 256

func inboxClaimSQL(s *Service, n int) string {
	var q strings.Builder
	q.WriteString(`SELECT id FROM fed_messages WHERE direction = 'in' AND id IN (`)
	for k := 0; k < n; k++ {
		if k > 0 {
			q.WriteString(", ")
		}
		q.WriteString(s.ph(k + 1))
	}
	q.WriteString(`)`)
	return q.String()
}

func inboxWriteSQL(s *Service, n int) string {
	var q strings.Builder
	q.WriteString(`INSERT INTO fed_messages(id, direction, peer, kind, subject, amount_fen, created_at, state, body, answer, updated_at) VALUES `)
	s.values(&q, n, 9, func(p []string) string {
		return "(" + p[0] + ", 'in', " + p[1] + ", 'charge', " + p[2] + ", " + p[3] + ", " + p[4] + ", " + p[5] + ", " + p[6] + ", " + p[7] + ", " + p[8] + ")"
	})
	return q.String()
}

// newInbox prepares the inbox's statements (store.WriterStmts).
func newInbox(ctx context.Context, s *Service) (*inbox, error) {
	ib := &inbox{s: s}
	for c := 1; c <= inboxMaxClass; c <<= 1 {
		ib.claimSQL = append(ib.claimSQL, inboxClaimSQL(s, c))
		ib.writeSQL = append(ib.writeSQL, inboxWriteSQL(s, c))
	}
	var err error
	if ib.stmts, err = store.PrepareWriter(ctx, s.DB, append(append([]string(nil), ib.claimSQL...), ib.writeSQL...)); err != nil {
		return nil, err
	}
	return ib, nil
}

func (ib *inbox) close() { ib.stmts.Close() }

// Claim implements ledger.Attacher.
func (ib *inbox) Claim(ctx context.Context, tx *sql.Tx, atts []*ledger.Attachment) error {
	seen := make(map[string]bool, len(atts))
	for start := 0; start < len(atts); start += inboxMaxClass {
		part := atts[start:min(start+inboxMaxClass, len(atts))]
		// Padded to its size class by repeating the last id.
		c := store.SizeClass(len(part))
		args := make([]any, c)
		for k := range args {
			args[k] = part[min(k, len(part)-1)].Value.(*inMsg).c.ID
		}
		rows, err := ib.stmts.Query(ctx, tx, ib.claimSQL[bits.TrailingZeros(uint(c))], args...)
		if err != nil {
			return err
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			seen[id] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}
	for _, a := range atts {
		m := a.Value.(*inMsg)
		m.written = false
		if seen[m.c.ID] {
			a.Refused = errTaken
		}
		seen[m.c.ID] = true // a second attachment of the same id in this batch
	}
	return nil
}

// Write implements ledger.Attacher.
func (ib *inbox) Write(ctx context.Context, tx *sql.Tx, atts []*ledger.Attachment) error {
	s := ib.s
	var rows []*inMsg
	for _, a := range atts {
		m := a.Value.(*inMsg)
		switch code := apperr.CodeOf(a.Err); {
		case a.Err == nil && len(a.Transfers) == 0:
			m.answer = m.pre
		case a.Err == nil:
			m.answer = answerOf(m.c.ID, a.Transfers)
			if m.cl != nil {
				m.answer.Category, m.answer.Flags = m.cl.category, m.cl.flags
			}
		case m.c.Mode == ModeOnline && code != apperr.IdempotencyConflict:
			m.answer = ChargeAnswer{ID: m.c.ID, State: StateDeclined, Reason: code}
		default:
			continue
		}
		rows = append(rows, m)
	}
	now := s.Now().UnixMilli()
	for rest := rows; len(rest) > 0; {
		// Whole size classes (37 rows: 32 + 4 + 1).
		part := rest[:store.FloorSizeClass(len(rest), inboxMaxClass)]
		rest = rest[len(part):]
		args := make([]any, 0, len(part)*9)
		for _, m := range part {
			ans, _ := json.Marshal(m.answer)
			args = append(args, m.c.ID, m.peer, m.c.Subject, m.c.AmountFen, m.c.CreatedAt.UnixMilli(), m.answer.State, m.body, ans, now)
		}
		if _, err := ib.stmts.Exec(ctx, tx, ib.writeSQL[bits.TrailingZeros(uint(len(part)))], args...); err != nil {
			return err
		}
	}
	for _, m := range rows {
		m.written = true
	}
	return nil
}

// answerOf is the answer for a message booked by transfers (one leg).
func answerOf(id string, trs []ledger.Transfer) ChargeAnswer {
	a := ChargeAnswer{ID: id, State: StateApplied}
	for _, t := range trs {
		switch {
		case strings.HasSuffix(t.Key, ":credit"):
			a.CreditFen += t.Amount
		case strings.HasSuffix(t.Key, ":m"):
			a.MedicalFen += t.Amount
		default:
			a.WalletFen += t.Amount
		}
		a.Transfers = append(a.Transfers, t.ID)
	}
	return a
}
