package scan

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/catalog"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/terminal"
)

// Offline clock tolerance: a record may be at most OfflineFutureSkew ahead
// of the node's clock and at most OfflineMaxAge old; anything else is
// reported clock_skew and not applied.
//
// And a terminal's records are numbered (Seq) and dated in the same order,
// within OfflineClockBack (a clock set back a little, as a time sync
// does): a record dated before one the terminal made earlier — in its
// batch, or the terminal's mark (the latest record stored from it,
// terminal.Mark) — is reported clock_back; a record numbered below the
// mark but dated after it, out_of_order. Neither is applied.
const (
	OfflineFutureSkew = 5 * time.Minute
	OfflineMaxAge     = 30 * 24 * time.Hour
	OfflineClockBack  = 5 * time.Minute
)

// Record statuses in a batch report.
const (
	StatusApplied   = "applied"   // accepted and (if it moves money) settled
	StatusDeclined  = "declined"  // valid record, declined (e.g. card lost before the scan)
	StatusDuplicate = "duplicate" // applied before (re-sent); its earlier outcome is reported
	StatusRejected  = "rejected"  // not applied: out of order, clock skew, not the terminal's scenario, malformed
)

// RecordReport is the outcome of one offline record.
type RecordReport struct {
	ID         string      `json:"id"`
	Status     string      `json:"status" doc:"applied | declined | duplicate | rejected"`
	Decision   string      `json:"decision,omitempty"`
	Reason     apperr.Code `json:"reason,omitempty"`
	ChargedFen int64       `json:"charged_fen"`
	DebtFen    int64       `json:"debt_fen,omitempty" doc:"part of the charge advanced as credit (the wallet was short)"`
}

// BatchReport is the outcome of an offline batch.
type BatchReport struct {
	BatchID    string         `json:"batch_id"`
	Terminal   string         `json:"terminal"`
	Records    int            `json:"records"`
	Applied    int            `json:"applied"`
	Declined   int            `json:"declined"`
	Duplicates int            `json:"duplicates"`
	Rejected   int            `json:"rejected"`
	ChargedFen int64          `json:"charged_fen"`
	DebtFen    int64          `json:"debt_fen"`
	Items      []RecordReport `json:"items"`
}

// batchHooks let tests stop an upload at a chosen point (nil: none).
type batchHooks struct {
	markRead func(terminal string) // ApplyBatch has read the terminal's mark
	credit   func(terminal string) // applyRecords is about to settle records on credit
	waiting  func(terminal string) // an upload waits for another upload of the terminal
}

func validRecordID(id string) bool { return validKey(id) && len(id) <= 48 }

// ApplyBatch applies an opened, signature-checked batch of terminal t.
// Each record is applied at most once (its key is "off:<id>" in the scans
// table); re-sending a batch reports the earlier outcomes as duplicates.
// The records are applied in bulk (bulk.go).
//
// The order checks compare the records with the terminal's mark, which
// the records stored move: two uploads of one terminal at once (a
// terminal retrying on a timeout while the first request still runs, or
// sending its next batch) must each be checked against the mark the other
// left, as if one ran after the other, or both could pass against the
// same old mark (a record set back in time, or one numbered below the
// other's but dated after it, applied and charged). So in this process a
// terminal's uploads run one at a time (termLocks), and the ledger batch
// that writes a record's row checks it again against the mark as it is
// then, read under the batch's lock (markCheck, rows.go): a record out of
// order after another process's upload that moved the mark meanwhile is
// sent back here, checked again and reported.
func (s *Service) ApplyBatch(ctx context.Context, t terminal.Terminal, b terminal.Batch) (BatchReport, error) {
	rep := BatchReport{BatchID: b.ID, Terminal: t.ID, Records: len(b.Records), Items: make([]RecordReport, len(b.Records))}
	unlock, err := s.uploads.lock(ctx, t.ID, s.batchHooks.waiting)
	if err != nil {
		return rep, err
	}
	defer unlock()
	now := s.Now()
	var again []bool // nil: check every record; else only these (sent back by the mark's guard)
	for round := 0; ; round++ {
		mark, err := s.Terminals.OfflineMark(ctx, t.ID)
		if err != nil {
			return rep, recheckFailed(rep.Items, err)
		}
		if h := s.batchHooks.markRead; h != nil {
			h(t.ID)
		}
		// A record stored before (a re-send) is answered from its row,
		// whatever its time says now: the mark may have moved on (a clock
		// set back since, within the tolerance each time), or the record
		// aged past OfflineMaxAge, and its first outcome stands
		// (duplicate). The rows are read after the mark: a row stored
		// after this read is one the guard knows of (own records) or
		// refuses.
		var stored map[string]*record
		if s.rows != nil {
			keys := make([]string, 0, len(b.Records))
			for i, r := range b.Records {
				if validRecordID(r.ID) && (again == nil || again[i]) {
					keys = append(keys, offlinePrefix+r.ID)
				}
			}
			if stored, err = lookupMany(ctx, s, t.ID, keys); err != nil {
				return rep, recheckFailed(rep.Items, err)
			}
		}
		todo := checkOrder(t, b.Records, rep.Items, mark, stored, now, again)
		chk := newMarkCheck(mark, b.Records, rep.Items)
		if err := s.applyRecords(ctx, t, b.Records, todo, rep.Items, stored, chk); err != nil {
			// Some records could not be written (the database is unavailable):
			// the batch must be re-sent; what was applied stays applied once.
			return rep, recheckFailed(rep.Items, err)
		}
		again = nil
		n := 0
		for i, it := range rep.Items {
			if it.Status == statusRecheck {
				if again == nil {
					again = make([]bool, len(rep.Items))
				}
				again[i] = true
				n++
			}
		}
		if n == 0 {
			break
		}
		if round+1 == maxMarkRechecks {
			return rep, recheckFailed(rep.Items, apperr.Newf(apperr.Unavailable, "the terminal's other uploads keep moving its mark; re-send the batch", "该终端的其他批次正在上传，请重新上传本批次"))
		}
	}
	for _, it := range rep.Items {
		switch it.Status {
		case StatusApplied:
			rep.Applied++
		case StatusDeclined:
			rep.Declined++
		case StatusDuplicate:
			rep.Duplicates++
		default:
			rep.Rejected++
		}
		if it.Status == StatusApplied {
			rep.ChargedFen += it.ChargedFen
			rep.DebtFen += it.DebtFen
		}
	}
	return rep, nil
}

// statusRecheck marks, inside ApplyBatch only, a record the mark's guard
// sent back (errMarkMoved): nothing of it was written, and it is checked
// again against the mark as it is now.
const statusRecheck = "recheck"

// maxMarkRechecks bounds how often an upload checks records the mark's
// guard sent back (another process's uploads of the terminal moving its
// mark each time) before asking for the batch to be sent again.
const maxMarkRechecks = 8

// recheckFailed reports the records still to be checked again as not
// applied (the batch must be re-sent) and returns err.
func recheckFailed(items []RecordReport, err error) error {
	for i := range items {
		if items[i].Status == statusRecheck {
			items[i] = RecordReport{ID: items[i].ID, Status: StatusRejected, Reason: apperr.CodeOf(err)}
		}
	}
	return err
}

// checkOrder runs the checks of a batch's shape and order, reporting the
// records it refuses (rejected, or a duplicate inside the batch), and
// returns the indices of the others, to apply (stored: the records' rows
// stored before, answered from them). only (nil: every record) limits it
// to those records: the others keep their reports and count, in the
// batch's order, as they did when they were checked.
func checkOrder(t terminal.Terminal, recs []terminal.Record, items []RecordReport, mark terminal.Mark, stored map[string]*record, now time.Time, only []bool) []int {
	var lastSeq int64 = -1 << 62
	var prevAt time.Time // the time of the batch's last record not refused for its time
	seen := make(map[string]bool, len(recs))
	todo := make([]int, 0, len(recs))
	for i, r := range recs {
		it := &items[i]
		if only == nil || only[i] {
			*it = RecordReport{ID: r.ID}
			switch {
			case !validRecordID(r.ID):
				it.Status, it.Reason = StatusRejected, apperr.ValidationFailed
			case seen[r.ID]:
				it.Status, it.Reason = StatusDuplicate, apperr.DuplicateRecord
			case stored[offlinePrefix+r.ID] != nil:
				todo = append(todo, i)
			case r.Seq <= lastSeq:
				it.Status, it.Reason = StatusRejected, apperr.OutOfOrder
			case r.At.After(now.Add(OfflineFutureSkew)) || r.At.Before(now.Add(-OfflineMaxAge)):
				it.Status, it.Reason = StatusRejected, apperr.ClockSkew
			case r.At.Before(prevAt.Add(-OfflineClockBack)),
				mark.Set && r.Seq > mark.Seq && r.At.Before(mark.At.Add(-OfflineClockBack)):
				it.Status, it.Reason = StatusRejected, apperr.ClockBack
			case mark.Set && r.Seq <= mark.Seq && r.At.After(mark.At.Add(OfflineClockBack)):
				it.Status, it.Reason = StatusRejected, apperr.OutOfOrder
			case !slices.Contains(t.Scenarios, r.Scenario):
				it.Status, it.Reason = StatusRejected, apperr.Forbidden
			default:
				todo = append(todo, i)
			}
		}
		if validRecordID(r.ID) {
			seen[r.ID] = true
		}
		if r.Seq > lastSeq {
			lastSeq = r.Seq
		}
		if it.Reason != apperr.ClockSkew && it.Reason != apperr.ClockBack && it.Reason != apperr.OutOfOrder {
			prevAt = r.At
		}
	}
	return todo
}

// markCheck is what an upload checked its records' order against, for
// the guard in the ledger batch that writes their rows (rows.go): the
// terminal's mark as the upload read it, and the batch's records that
// passed the checks or were stored before (seq → time, in ms). The mark
// may move to one of those (the upload's own rows, or a concurrent re-send
// of the same records): the checks inside the batch already compared the
// records with them. Any other mark was set by another upload the records
// were not checked against: a record is then checked against it as
// checkOrder would. Read-only once made (Claim reads it on the ledger's
// committer goroutine).
type markCheck struct {
	base markState
	own  map[int64]int64
}

// markState is a terminal's mark as the guard compares it (zero: none).
type markState struct {
	seq, at int64
	set     bool
}

func stateOf(m terminal.Mark) markState {
	if !m.Set {
		return markState{}
	}
	return markState{seq: m.Seq, at: m.At.UnixMilli(), set: true}
}

// newMarkCheck is the check of a batch's records against mark, after
// checkOrder filled their reports.
func newMarkCheck(mark terminal.Mark, recs []terminal.Record, items []RecordReport) *markCheck {
	c := &markCheck{base: stateOf(mark), own: make(map[int64]int64, len(recs))}
	for i, r := range recs {
		it := items[i]
		if it.Status == StatusRejected || it.Reason == apperr.DuplicateRecord {
			continue
		}
		c.own[r.Seq] = r.At.UnixMilli()
	}
	return c
}

// admits reports whether a record numbered seq and dated at (ms),
// checked by c, may be written while the terminal's mark is m.
func (c *markCheck) admits(m markState, seq, at int64) bool {
	switch {
	case m == c.base:
		return true
	case !m.set: // (a mark is never unset again)
		return false
	}
	if own, ok := c.own[m.seq]; ok && own == m.at {
		return true
	}
	back := OfflineClockBack.Milliseconds()
	return !(seq > m.seq && at < m.at-back) && // clock_back
		!(seq <= m.seq && at > m.at+back) // out_of_order
}

// termLocks serialises the offline uploads of each terminal in this
// process (ApplyBatch).
type termLocks struct {
	mu sync.Mutex
	m  map[string]*termLock
}

type termLock struct {
	held chan struct{} // a token in it: an upload of the terminal runs
	refs int           // uploads running or waiting
}

// lock waits until no other upload of terminal id runs here (calling
// waiting first if one does), or ctx ends.
func (l *termLocks) lock(ctx context.Context, id string, waiting func(string)) (unlock func(), err error) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*termLock{}
	}
	tl := l.m[id]
	if tl == nil {
		tl = &termLock{held: make(chan struct{}, 1)}
		l.m[id] = tl
	}
	tl.refs++
	l.mu.Unlock()
	release := func() {
		l.mu.Lock()
		if tl.refs--; tl.refs == 0 {
			delete(l.m, id)
		}
		l.mu.Unlock()
	}
	select {
	case tl.held <- struct{}{}:
	default:
		if waiting != nil {
			waiting(id)
		}
		select {
		case tl.held <- struct{}{}:
		case <-ctx.Done():
			release()
			return nil, apperr.Wrap(apperr.Unavailable, ctx.Err())
		}
	}
	return func() { <-tl.held; release() }, nil
}

func recordHash(r terminal.Record) []byte {
	b, _ := json.Marshal(r)
	return requestHash(Request{Scenario: r.Scenario, Code: r.Code, CardNumber: r.CardNumber, AmountFen: r.AmountFen, PIN: string(b)})
}

func reportOf(rec *record, dup bool) RecordReport {
	rr := RecordReport{ID: rec.key[len("off:"):], Decision: rec.decision, Reason: apperr.Code(rec.reason), ChargedFen: rec.charged, DebtFen: rec.debt}
	switch {
	case dup:
		rr.Status = StatusDuplicate
	case rec.decision == Accepted:
		rr.Status = StatusApplied
	default:
		rr.Status = StatusDeclined
	}
	if rec.decision != Accepted {
		rr.ChargedFen, rr.DebtFen = 0, 0
	}
	return rr
}

// recordAgain handles a re-sent record.
func (s *Service) recordAgain(ctx context.Context, ex *record, hash []byte) (RecordReport, error) {
	id := ex.key[len("off:"):]
	if string(ex.hash) != string(hash) {
		return RecordReport{ID: id, Status: StatusRejected, Reason: apperr.IdempotencyConflict}, nil
	}
	if ex.state == stateFinal {
		// Reported from a row the ledger may not have synced yet
		// (SQLite's deferred fsync): make it durable first.
		if err := s.Ledger.Durable(ctx); err != nil {
			return RecordReport{}, err
		}
		return reportOf(ex, true), nil
	}
	sc, err := s.Catalog.Scenario(ctx, ex.scenario)
	if err != nil {
		return RecordReport{ID: id, Status: StatusRejected, Reason: apperr.CodeOf(err)}, err
	}
	var all map[string]any
	if err := s.unseal(ex, &all); err != nil {
		return RecordReport{ID: id, Status: StatusRejected, Reason: apperr.Internal}, err
	}
	normalise(all)
	var plan []leg
	if err := json.Unmarshal([]byte(ex.plan), &plan); err != nil {
		return RecordReport{ID: id, Status: StatusRejected, Reason: apperr.Internal}, apperr.Wrap(apperr.Internal, err)
	}
	return s.redriveOffline(ctx, ex, sc, plan, all)
}

// evaluateOffline is evaluate as of the record's time: the code is checked
// at r.At, and a card counts as lost only if it was reported before r.At.
//
// Another city's code or card (verified by the terminal with the region's
// keys in its bundle) takes the cross-city path, as an online scan does:
// the home city is asked to authorise it (its clearing message named by
// the code's nonce, or for a card by the record's key, so a re-sent batch
// asks the same question and gets the same answer), or, if it cannot be
// reached, the record is accepted under the card's risk limit and the
// charge queued; either way it is booked through clearing. A record is
// only evaluated when it has no row yet (re-sent records are duplicates).
func (s *Service) evaluateOffline(ctx context.Context, sc catalog.Scenario, t terminal.Terminal, r terminal.Record) (e eval) {
	e.id, e.card, e.res, e.err = s.identify(ctx, r.Code, r.CardNumber, r.At)
	if s.foreign(e) {
		return s.evaluateRemoteKey(ctx, sc, t, e.id, offlinePrefix+r.ID, r.AmountFen, "", r.At, remoteOpts{offline: true})
	}
	status := e.card.Status
	revoked := apperr.CodeOf(e.err) == apperr.Revoked
	if (revoked || e.err == nil) && e.card.Number != "" && e.card.StatusChangedAt.After(r.At) {
		// The card changed after the scan: judge it as it was then, by its
		// history. Lost at the scan's time and found (or lost again) since,
		// the tap was not the holder's. (Before the card was issued, then
		// is "": a terminal's clock behind, not a loss.)
		then, ok, err := s.Residents.StatusAt(ctx, e.card.Number, r.At)
		switch {
		case err != nil:
			e.err = apperr.Wrap(apperr.Unavailable, err)
			return e
		case ok && then != resident.StatusActive && then != "":
			e.err = apperr.Newf(apperr.Revoked, "the card was reported lost or cancelled at the time of this scan", "此次扫码时该卡处于挂失或注销状态")
			return e
		}
		// Active then (or no history to tell): as below.
	}
	if revoked || e.err == nil && status != resident.StatusActive {
		if !e.card.StatusChangedAt.After(r.At) {
			e.err = apperr.Newf(apperr.Revoked, "the card was reported lost or cancelled before this scan", "该卡在此次扫码前已挂失或注销")
			return e
		}
		// Revoked after the scan: the scan was good when it was made.
		e.err, status = nil, resident.StatusActive
		if e.res.ID == "" {
			if e.res, e.err = s.resident(ctx, e.card.ResidentID); e.err != nil {
				return e
			}
		}
	}
	if e.err != nil {
		return e
	}
	e.age = e.res.Age(r.At)
	// Flags: the code's claims (this node signed them when the code was
	// issued, a minute at most before the scan) and the resident's holder
	// flags as stored now; a card's scan has only the latter.
	flags := unionFlags(e.id.Flags, e.res.Flags)
	e.dec = catalog.Decide(sc, catalog.Holder{Category: e.res.Category, Age: e.age, Flags: flags, CardStatus: status, Local: true}, r.AmountFen)
	if !e.dec.Eligible {
		e.err = e.dec.Err()
		return e
	}
	if e.dec.PINRequired {
		// No PIN can be asked offline: above the scenario's threshold the
		// charge is not made (the PIN protects a stolen card not yet
		// reported); the terminal should not have accepted it.
		e.err = apperr.Newf(apperr.PINRequired, "offline, a card is charged only up to the amount that needs no PIN", "脱机状态下只能扣取免密额度以内的金额")
		return e
	}
	e.plan, e.medical, e.wallet, e.err = s.plan(ctx, sc, t, e.res.ID, e.dec.Amount)
	return e
}

// redriveOffline finishes an offline record left pending by an older
// version of this node (today's rows are written final with their
// transfers). Its report says what happened now (applied or declined).
//
// The older version could have applied the record's "ride first, pay
// later" legs (…:debt0 from the wallet, …:debt1 credit) and stopped before
// finalising the row: then the split was decided, and the row is finalised
// from those legs as they are in the journal, never planned again (a
// top-up meanwhile must not pay the fare a second time). Otherwise nothing
// of the record moved money but possibly its own plan (replayed by its
// keys), and it goes the way of a new record, its row finalised in the
// ledger batch that applies its transfers, only while it is still pending:
// of two re-sends at once, one finishes it and the other reports it.
func (s *Service) redriveOffline(ctx context.Context, ex *record, sc catalog.Scenario, plan []leg, all map[string]any) (RecordReport, error) {
	id := ex.key[len(offlinePrefix):]
	reject := func(err error) (RecordReport, error) {
		return RecordReport{ID: id, Status: StatusRejected, Reason: apperr.CodeOf(err)}, err
	}
	rec := *ex
	rec.state = stateFinal
	var fare int64
	for _, l := range plan {
		fare += l.Amount
	}
	debtOK := sc.Kind == catalog.KindCharge && sc.CreditLimitFen > 0 && len(plan) == 1
	if debtOK {
		legs, err := s.journalAmounts(ctx, transferKey(rec.terminal, rec.key, rec.at, "debt0", true), transferKey(rec.terminal, rec.key, rec.at, "debt1", true))
		if err != nil {
			return reject(err)
		}
		if len(legs) > 0 {
			fin := rec
			fin.decision, fin.reason, fin.charged, fin.debt = Accepted, "", fare, legs[1]
			fin.answer = s.seal(&fin, finish(sc, all, Accepted, "", eval{}))
			return s.writeOffline(ctx, &attachRow{rec: &fin, update: true}, nil, id)
		}
	}
	w := &attachRow{rec: &rec, update: true}
	w.build = func(_ []ledger.Transfer, err error) *record {
		fin := rec
		if err == nil {
			fin.decision, fin.reason = Accepted, ""
			fin.answer = s.seal(&fin, finish(sc, all, Accepted, "", eval{}))
			return &fin
		}
		code := apperr.CodeOf(err)
		switch {
		case code == apperr.Unavailable, code == apperr.Internal, code == apperr.IdempotencyConflict:
			return nil
		case debtOK && code == apperr.InsufficientFunds:
			return nil // settled with credit below
		}
		fin.decision, fin.reason, fin.charged = Declined, string(code), 0
		fin.answer = s.seal(&fin, finish(sc, nil, Declined, code, eval{}))
		return &fin
	}
	reqs := make([]ledger.TransferRequest, len(plan))
	for i, l := range plan {
		reqs[i] = l.request(&rec, i, true)
	}
	out, err := s.Ledger.Attach(ctx, reqs, &ledger.Attachment{To: s.rows, Value: w})
	if err != nil {
		return reject(err)
	}
	if out.Refused == nil && w.written == nil && debtOK && apperr.CodeOf(out.Err) == apperr.InsufficientFunds {
		return s.debtRecord(ctx, &offlineRec{r: terminal.Record{ID: id}, sc: sc, w: w, plan: plan})
	}
	return s.attached(ctx, w, out, id)
}

// writeOffline writes w (with reqs) through the ledger and reports it.
func (s *Service) writeOffline(ctx context.Context, w *attachRow, reqs []ledger.TransferRequest, id string) (RecordReport, error) {
	out, err := s.Ledger.Attach(ctx, reqs, &ledger.Attachment{To: s.rows, Value: w})
	if err != nil {
		return RecordReport{ID: id, Status: StatusRejected, Reason: apperr.CodeOf(err)}, err
	}
	return s.attached(ctx, w, out, id)
}

// attached reports an offline record's Attach outcome.
func (s *Service) attached(ctx context.Context, w *attachRow, out ledger.Outcome, id string) (RecordReport, error) {
	if out.Refused != nil {
		kind, ex, err := s.outcome(ctx, w.rec, out.Refused)
		switch {
		case err != nil:
			return RecordReport{ID: id, Status: StatusRejected, Reason: apperr.CodeOf(err)}, err
		case kind == dupKey && ex.state == stateFinal: // finished by a concurrent re-send
			return reportOf(ex, true), nil
		}
		err = apperr.Newf(apperr.Unavailable, "the record is being settled; re-send the batch", "记录正在处理，请重新上传批次")
		return RecordReport{ID: id, Status: StatusRejected, Reason: apperr.Unavailable}, err
	}
	if w.written == nil {
		return RecordReport{ID: id, Status: StatusRejected, Reason: apperr.CodeOf(out.Err)}, apperr.As(out.Err)
	}
	return reportOf(w.written, false), nil
}

// journalAmounts returns the amounts of the ledger transfers under keys
// (nil if none of them exists). It reads the ledger's journal directly:
// the ledger has no lookup by key, and only the scan path writes these.
func (s *Service) journalAmounts(ctx context.Context, keys ...string) ([]int64, error) {
	out := make([]int64, len(keys))
	found := false
	for i, k := range keys {
		err := s.DB.R.QueryRowContext(ctx, `SELECT amount FROM ledger_journal WHERE idem_key = $1`, k).Scan(&out[i])
		switch {
		case err == nil:
			found = true
		case !errors.Is(err, sql.ErrNoRows):
			return nil, apperr.Wrap(apperr.Unavailable, err)
		}
	}
	if !found {
		return nil, nil
	}
	return out, nil
}
