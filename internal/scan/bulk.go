package scan

import (
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/catalog"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/terminal"
)

// Offline batches are applied in bulk, not record by record:
//
//  1. One read finds the records stored before (a re-send): they are
//     reported as duplicates with their stored outcome and nothing is
//     applied again.
//  2. Every new record is evaluated in parallel on every core: each YK1
//     code's signature is verified (a terminal's batch key does not make a
//     code genuine: a compromised terminal must not be able to invent codes
//     to move money), the card and resident are resolved (cached), the
//     scenario's rules decide, the transfers are planned and the answer is
//     prepared.
//  3. All records go to the ledger at once (Ledger.AttachMany): the
//     committer applies them in record order in as few batches as it can,
//     each record's scan row written in the same transaction as its
//     transfers by multi-row INSERTs, so a record is applied exactly when
//     its row exists. The reports are built from what was written.
//  4. Records the wallet could not cover, in scenarios that advance credit
//     ("ride first, pay later"), are settled afterwards, one holder at a
//     time (card and code records of one resident together) and in record
//     order: what is left in the wallet, the rest as debt up to the
//     scenario's credit limit (counting the holder's outstanding offline
//     debt, read by the scans' Claim under the ledger batch's lock, so
//     concurrent batches cannot both pass it). The split is decided once
//     and its legs commit with the record's row: a re-sent record is a
//     duplicate and is never planned again. So within one batch the records a wallet
//     covers are charged first, and the ones it cannot cover then take what
//     is left and credit; the totals are those of applying them one by one.
//
// A record whose code was used by an earlier record (or scan) is declined
// replayed; a record decided on a card whose status changed meanwhile is
// decided again.
//
// Records of another city's code or card (the terminal verified the code
// with the region's keys in its bundle) are evaluated through the Remote
// in step 2, like online scans (evaluateOffline): authorised by the home
// city, or accepted under the card's risk limit and queued when it is
// down; their row then books clr:<home> → the provider in step 3. Their
// clearing message ids derive from the code's nonce or the record's key,
// so evaluating a record again (a re-send whose row was never written, a
// second round) asks the home city the same question and gets the same
// answer: the home city charges once, and the row is written once.

// offlineRec is one record on its way through the bulk path.
type offlineRec struct {
	i      int
	r      terminal.Record
	sc     catalog.Scenario
	e      eval
	force  apperr.Code // decline with this reason (e.g. replayed)
	w      *attachRow
	plan   []leg
	debtOK bool
	plans  int        // debtRecord: splits planned so far (maxDebtPlans)
	mark   *markCheck // what its order was checked against (ApplyBatch)
}

// applyRecords applies b.Records[idx] and fills their reports. stored
// are the rows of the batch's records stored before (ApplyBatch read them);
// chk is what their order was checked against: a record whose row the
// mark's guard refuses (another upload moved the mark) is reported
// statusRecheck, for ApplyBatch to check it again.
func (s *Service) applyRecords(ctx context.Context, t terminal.Terminal, recs []terminal.Record, idx []int, items []RecordReport, stored map[string]*record, chk *markCheck) error {
	ctx = withPendingWait(ctx, 2*time.Second)
	if len(idx) == 0 {
		return nil
	}
	if s.rows == nil {
		return apperr.Newf(apperr.Unavailable, "offline batches need the ledger", "离线批次需要账本")
	}
	// 1. Re-sent records.
	var firstErr error
	fail := func(i int, err error) {
		items[i] = RecordReport{ID: recs[i].ID, Status: StatusRejected, Reason: apperr.CodeOf(err)}
		if firstErr == nil {
			firstErr = err
		}
	}
	var todo []*offlineRec
	for _, i := range idx {
		if ex := stored["off:"+recs[i].ID]; ex != nil {
			rr, err := s.recordAgain(ctx, ex, recordHash(recs[i]))
			items[i] = rr
			if err != nil {
				fail(i, err)
			}
			continue
		}
		todo = append(todo, &offlineRec{i: i, r: recs[i], mark: chk})
	}
	// 2–3, in rounds: a record refused by the scans' Claim (its code used by
	// an earlier record, or its card changed) goes round again.
	var debts []*offlineRec
	for round := 0; len(todo) > 0; round++ {
		if round == 4 {
			for _, o := range todo {
				fail(o.i, apperr.Newf(apperr.Unavailable, "the record could not be settled; re-send the batch", "记录未能处理，请重新上传批次"))
			}
			break
		}
		s.evaluateAll(ctx, t, todo)
		var reqs []ledger.Attached
		var live []*offlineRec
		for _, o := range todo {
			if o.w == nil {
				if c := apperr.CodeOf(o.e.err); c == apperr.Unavailable || c == apperr.Internal {
					fail(o.i, o.e.err)
				} else { // the scenario is unknown or not for offline use
					items[o.i] = RecordReport{ID: o.r.ID, Status: StatusRejected, Reason: c}
				}
				continue
			}
			var trs []ledger.TransferRequest
			for k, l := range o.plan {
				trs = append(trs, l.request(o.w.rec, k, false))
			}
			reqs = append(reqs, ledger.Attached{Transfers: trs, Att: &ledger.Attachment{To: s.rows, Value: o.w}})
			live = append(live, o)
		}
		outs, errs := s.Ledger.AttachMany(ctx, reqs)
		var again []*offlineRec
		for j, o := range live {
			if errs[j] != nil {
				fail(o.i, errs[j])
				continue
			}
			out := outs[j]
			if errors.Is(out.Refused, errMarkMoved) {
				items[o.i] = RecordReport{ID: o.r.ID, Status: statusRecheck}
				continue
			}
			if out.Refused != nil {
				kind, ex, err := s.outcome(ctx, o.w.rec, out.Refused)
				switch {
				case errors.Is(err, errStaleCard), errors.Is(err, errKeyPending):
					// errKeyPending: an overlapping upload of the record,
					// earlier in the same batch, wrote nothing (its credit
					// step follows); next round finds its row or settles it.
					again = append(again, &offlineRec{i: o.i, r: o.r, mark: o.mark})
				case err != nil:
					fail(o.i, err)
				case kind == dupKey: // a concurrent re-send wrote it
					rr, err := s.recordAgain(ctx, ex, o.w.rec.hash)
					items[o.i] = rr
					if err != nil {
						fail(o.i, err)
					}
				default: // the code was used already
					again = append(again, &offlineRec{i: o.i, r: o.r, force: apperr.Replayed, mark: o.mark})
				}
				continue
			}
			if o.w.written == nil {
				if o.debtOK && apperr.CodeOf(out.Err) == apperr.InsufficientFunds {
					debts = append(debts, o)
					continue
				}
				fail(o.i, out.Err)
				continue
			}
			items[o.i] = reportOf(o.w.written, false)
		}
		todo = again
	}
	// 4. Credit, holder by holder.
	if h := s.batchHooks.credit; h != nil && len(debts) > 0 {
		h(t.ID)
	}
	if err := s.settleDebts(ctx, debts, items); err != nil && firstErr == nil {
		firstErr = err
	}
	return firstErr
}

// evaluateAll evaluates the records on every core and prepares their rows.
func (s *Service) evaluateAll(ctx context.Context, t terminal.Terminal, todo []*offlineRec) {
	workers := runtime.GOMAXPROCS(0)
	if s.Remote != nil {
		// Other cities' records wait on their home city's answer.
		workers = max(workers, 16)
	}
	workers = min(workers, len(todo))
	var next sync.Mutex
	n := 0
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				next.Lock()
				j := n
				n++
				next.Unlock()
				if j >= len(todo) {
					return
				}
				s.prepareRecord(ctx, t, todo[j])
			}
		}()
	}
	wg.Wait()
}

// prepareRecord evaluates one record and builds its row (o.w nil: the
// record is rejected, o.e.err says why).
func (s *Service) prepareRecord(ctx context.Context, t terminal.Terminal, o *offlineRec) {
	o.w, o.plan, o.debtOK = nil, nil, false
	r := o.r
	// The scenario as it was at the ride: a fare or rule changed while
	// the terminal was offline applies to rides after the change only.
	sc, err := s.Catalog.ScenarioAt(ctx, r.Scenario, r.At)
	if err == nil && !sc.OfflineAllowed {
		err = apperr.New(apperr.Forbidden)
	}
	if err != nil {
		o.e = eval{err: err}
		return
	}
	o.sc = sc
	rec := &record{terminal: t.ID, key: "off:" + r.ID, hash: recordHash(r), provider: t.ProviderID, scenario: r.Scenario, offline: true, at: r.At.UnixMilli(), state: stateFinal,
		seq: r.Seq, numbered: true}
	if o.force != "" {
		o.e = eval{err: apperr.New(o.force)}
	} else {
		o.e = s.evaluateOffline(ctx, sc, t, r)
	}
	e := o.e
	if e.err != nil {
		c := apperr.CodeOf(e.err)
		if c == apperr.Unavailable || c == apperr.Internal {
			return
		}
		rec.decision, rec.reason, rec.residentID, rec.card = Declined, string(c), e.res.ID, e.card
		o.w = rowFor(rec)
		o.w.mark = o.mark
		return
	}
	rec.residentID, rec.decision, rec.charged, rec.card = e.res.ID, Accepted, e.dec.Amount, e.card
	rec.cti, rec.legacyCTI = s.replayKeys(e.id)
	// An offline record's row stores no answer: the terminal decided
	// alone and was answered long ago, and the batch's report (and a
	// re-send's) is built from the row's columns. So no provider's view of
	// the holder (a name, a masked ID number) is kept at rest for it, and
	// none is built.
	o.w = rowFor(rec)
	o.w.mark = o.mark
	if len(e.plan) == 0 {
		return
	}
	// Nor its plan: a final row's plan is read only to collect a debt
	// (debtRecord stores it with the debt).
	o.plan = e.plan
	o.debtOK = sc.Kind == catalog.KindCharge && sc.CreditLimitFen > 0 && len(e.plan) == 1
	debtOK := o.debtOK
	o.w.build = func(_ []ledger.Transfer, err error) *record {
		if err == nil {
			return rec
		}
		code := apperr.CodeOf(err)
		switch {
		case code == apperr.Unavailable, code == apperr.Internal, code == apperr.IdempotencyConflict:
			return nil
		case debtOK && code == apperr.InsufficientFunds:
			return nil // settled with credit afterwards
		}
		fin := *rec
		fin.decision, fin.reason, fin.charged = Declined, string(code), 0
		return &fin
	}
}

// settleDebts settles the records the wallet could not cover, holder by
// holder (in parallel across holders, in record order for each).
func (s *Service) settleDebts(ctx context.Context, debts []*offlineRec, items []RecordReport) error {
	if len(debts) == 0 {
		return nil
	}
	byHolder := map[string][]*offlineRec{}
	var order []string
	for _, o := range debts {
		h := o.w.rec.residentID
		if _, ok := byHolder[h]; !ok {
			order = append(order, h)
		}
		byHolder[h] = append(byHolder[h], o)
	}
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	ch := make(chan []*offlineRec)
	for w := 0; w < min(8, len(order)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for list := range ch {
				for _, o := range list {
					rr, err := s.debtRecord(ctx, o)
					items[o.i] = rr
					if err != nil {
						mu.Lock()
						if firstErr == nil {
							firstErr = err
						}
						mu.Unlock()
					}
				}
			}
		}()
	}
	for _, h := range order {
		ch <- byHolder[h]
	}
	close(ch)
	wg.Wait()
	return firstErr
}

// debtRecord charges what the wallet holds and advances the rest as
// credit, within the scenario's credit limit, writing the record's row in
// the same transaction. The split is decided here once: its legs (keys
// "…:debt0" from the wallet, "…:debt1" credit) commit together with the
// row that records it, so a re-send finds the row and never plans again.
// The limit is checked by the scans' Claim under the ledger batch's lock.
func (s *Service) debtRecord(ctx context.Context, o *offlineRec) (RecordReport, error) {
	rec, l, sc := o.w.rec, o.plan[0], o.sc
	id := o.r.ID
	reject := func(err error) (RecordReport, error) {
		return RecordReport{ID: id, Status: StatusRejected, Reason: apperr.CodeOf(err)}, err
	}
	wb, err := s.Ledger.Balance(ctx, l.Debit)
	if err != nil {
		return reject(err)
	}
	fromWallet := min(max(wb.Available, 0), l.Amount)
	debt := l.Amount - fromWallet
	declined := func(code apperr.Code) *record {
		fin := *rec
		fin.decision, fin.reason, fin.charged, fin.debt = Declined, string(code), 0, 0
		return &fin
	}
	// A row an older version left pending keeps that version's keys.
	legacy := o.w.update
	var reqs []ledger.TransferRequest
	if fromWallet > 0 {
		k := transferKey(rec.terminal, rec.key, rec.at, "debt0", legacy)
		reqs = append(reqs, leg{Key: k, Debit: l.Debit, Credit: l.Credit, Amount: fromWallet, Kind: l.Kind}.request(rec, 0, legacy))
	}
	if debt > 0 {
		k := transferKey(rec.terminal, rec.key, rec.at, "debt1", legacy)
		reqs = append(reqs, leg{Key: k, Debit: CreditAccount, Credit: l.Credit, Amount: debt, Kind: "scan_credit"}.request(rec, 1, legacy))
	}
	fin := *rec
	fin.decision, fin.reason, fin.charged, fin.debt = Accepted, "", l.Amount, debt
	if debt > 0 { // the collector credits what the plan credited
		b, _ := json.Marshal(o.plan)
		fin.plan = string(b)
	}
	// The wallet's part was read before the ledger batch: another charge
	// (an upload of the holder's other rides, an online scan) may take it
	// first. Then nothing is written and the split is planned again from
	// the new balance, as applying the rides one by one would; only after
	// maxDebtPlans such races is the ride declined.
	o.plans++
	replan := fromWallet > 0 && o.plans < maxDebtPlans
	// the card was checked with the first attempt
	w := &attachRow{rec: &fin, update: o.w.update, debt: debt, limit: sc.CreditLimitFen, mark: o.w.mark}
	w.build = func(_ []ledger.Transfer, err error) *record {
		if err == nil {
			return &fin
		}
		switch code := apperr.CodeOf(err); {
		case code == apperr.Unavailable, code == apperr.Internal, code == apperr.IdempotencyConflict:
			return nil
		case code == apperr.InsufficientFunds && replan:
			return nil
		default:
			return declined(code)
		}
	}
	out, err := s.Ledger.Attach(ctx, reqs, &ledger.Attachment{To: s.rows, Value: w})
	switch {
	case err == nil && errors.Is(out.Refused, errOverLimit):
		// Over the limit: stored declined (no transfers).
		w = &attachRow{rec: declined(apperr.InsufficientFunds), update: o.w.update, mark: o.w.mark}
		out, err = s.Ledger.Attach(ctx, nil, &ledger.Attachment{To: s.rows, Value: w})
	case err == nil && errors.Is(out.Refused, errReplayed):
		// The code was used (by another record, or an online scan) after
		// this record's first attempt: declined replayed, as that attempt
		// would have been, and stored without the nonce.
		w = &attachRow{rec: declined(apperr.Replayed), update: o.w.update, mark: o.w.mark}
		w.rec.cti, w.rec.legacyCTI = "", ""
		out, err = s.Ledger.Attach(ctx, nil, &ledger.Attachment{To: s.rows, Value: w})
	}
	if err != nil {
		return reject(err)
	}
	if errors.Is(out.Refused, errMarkMoved) {
		// Another upload moved the terminal's mark: nothing was written;
		// ApplyBatch checks the record again.
		return RecordReport{ID: id, Status: statusRecheck}, nil
	}
	if out.Refused != nil {
		kind, ex, err := s.outcome(ctx, rec, out.Refused)
		switch {
		case err != nil:
			return reject(err)
		case kind == dupKey: // a concurrent upload of the record wrote it
			return s.recordAgain(ctx, ex, rec.hash)
		}
		return reject(apperr.New(apperr.Replayed))
	}
	if w.written == nil && replan && apperr.CodeOf(out.Err) == apperr.InsufficientFunds {
		return s.debtRecord(ctx, o) // the wallet's part was taken: plan again
	}
	if w.written == nil {
		return reject(out.Err)
	}
	return reportOf(w.written, false), nil
}

// maxDebtPlans bounds how often debtRecord plans a ride's split (a
// wallet's part taken by another charge before the batch applied it).
const maxDebtPlans = 8

// lookupMany reads the scans of terminal under keys (at most 256 per query).
func lookupMany(ctx context.Context, s *Service, terminal string, keys []string) (map[string]*record, error) {
	out := make(map[string]*record, len(keys))
	pg := s.rows.pg
	for len(keys) > 0 {
		n := min(len(keys), maxClass)
		c := class(n)
		var sb strings.Builder
		sb.WriteString(`SELECT ` + recordCols + ` FROM scans WHERE terminal_id = `)
		ph(&sb, pg, 1)
		sb.WriteString(` AND idem_key IN (`)
		args := make([]any, 0, c+1)
		args = append(args, terminal)
		for i := 0; i < c; i++ {
			if i > 0 {
				sb.WriteString(", ")
			}
			ph(&sb, pg, i+2)
			args = append(args, keys[min(i, n-1)])
		}
		sb.WriteByte(')')
		rows, err := s.DB.R.QueryContext(ctx, sb.String(), args...)
		if err != nil {
			return nil, apperr.Wrap(apperr.Unavailable, err)
		}
		for rows.Next() {
			r, err := scanRecord(rows)
			if err != nil {
				rows.Close()
				return nil, apperr.Wrap(apperr.Unavailable, err)
			}
			out[r.key] = r
		}
		if err := rows.Close(); err != nil {
			return nil, apperr.Wrap(apperr.Unavailable, err)
		}
		keys = keys[n:]
	}
	return out, nil
}
