package scan

import (
	"context"
	"encoding/json"
	"slices"
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
const (
	OfflineFutureSkew = 5 * time.Minute
	OfflineMaxAge     = 30 * 24 * time.Hour
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

func validRecordID(id string) bool { return validKey(id) && len(id) <= 48 }

// ApplyBatch applies an opened, signature-checked batch of terminal t.
// Each record is applied at most once (its key is "off:<id>" in the scans
// table); re-sending a batch reports the earlier outcomes as duplicates.
// The records are applied in bulk (bulk.go).
func (s *Service) ApplyBatch(ctx context.Context, t terminal.Terminal, b terminal.Batch) (BatchReport, error) {
	now := s.Now()
	rep := BatchReport{BatchID: b.ID, Terminal: t.ID, Records: len(b.Records), Items: make([]RecordReport, len(b.Records))}
	// Shape checks that depend on the order of the batch run first.
	var lastSeq int64 = -1 << 62
	seen := make(map[string]bool, len(b.Records))
	todo := make([]int, 0, len(b.Records))
	for i, r := range b.Records {
		it := &rep.Items[i]
		it.ID = r.ID
		switch {
		case !validRecordID(r.ID):
			it.Status, it.Reason = StatusRejected, apperr.ValidationFailed
		case seen[r.ID]:
			it.Status, it.Reason = StatusDuplicate, apperr.DuplicateRecord
		case r.Seq <= lastSeq:
			it.Status, it.Reason = StatusRejected, apperr.OutOfOrder
		case r.At.After(now.Add(OfflineFutureSkew)) || r.At.Before(now.Add(-OfflineMaxAge)):
			it.Status, it.Reason = StatusRejected, apperr.ClockSkew
		case !slices.Contains(t.Scenarios, r.Scenario):
			it.Status, it.Reason = StatusRejected, apperr.Forbidden
		default:
			todo = append(todo, i)
		}
		if validRecordID(r.ID) {
			seen[r.ID] = true
		}
		if r.Seq > lastSeq {
			lastSeq = r.Seq
		}
	}
	if err := s.applyRecords(ctx, t, b.Records, todo, rep.Items); err != nil {
		// Some records could not be written (the database is unavailable):
		// the batch must be re-sent; what was applied stays applied once.
		return rep, err
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
	json.Unmarshal([]byte(ex.plan), &plan)
	// A pending row is left by an older version of this node (today's rows
	// are written final, with their transfers): finish it. Its report says
	// what happened now (applied or declined), never "applied" for a
	// decline.
	return s.settleOffline(ctx, ex, sc, plan, all)
}

// evaluateOffline is evaluate as of the record's time: the code is checked
// at r.At, and a card counts as lost only if it was reported before r.At.
func (s *Service) evaluateOffline(ctx context.Context, sc catalog.Scenario, t terminal.Terminal, r terminal.Record) (e eval) {
	e.id, e.card, e.res, e.err = s.identify(ctx, r.Code, r.CardNumber, r.At)
	status := e.card.Status
	if apperr.CodeOf(e.err) == apperr.Revoked || e.err == nil && status != resident.StatusActive {
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
	e.dec = catalog.Decide(sc, catalog.Holder{Category: e.res.Category, Age: e.age, Flags: e.id.Flags, CardStatus: status, Local: true}, r.AmountFen)
	if !e.dec.Eligible {
		e.err = e.dec.Err()
		return e
	}
	e.plan, e.medical, e.wallet, e.err = s.plan(ctx, sc, t, e.res.ID, e.dec.Amount)
	return e
}

// settleOffline applies the plan; a charge the wallet cannot cover is
// advanced as credit (debt) up to the scenario's credit limit, counting the
// resident's outstanding offline debt.
func (s *Service) settleOffline(ctx context.Context, rec *record, sc catalog.Scenario, plan []leg, all map[string]any) (RecordReport, error) {
	debtOK := sc.Kind == catalog.KindCharge && sc.CreditLimitFen > 0 && len(plan) == 1
	resp, err := s.settleOpt(ctx, rec, sc, plan, all, func(c apperr.Code) bool { return debtOK && c == apperr.InsufficientFunds })
	if err != nil {
		return RecordReport{ID: rec.key[len("off:"):], Status: StatusRejected, Reason: apperr.CodeOf(err)}, err
	}
	id := rec.key[len("off:"):]
	if resp.Decision == Accepted {
		return RecordReport{ID: id, Status: StatusApplied, Decision: Accepted, ChargedFen: rec.charged}, nil
	}
	if !debtOK || resp.Reason != apperr.InsufficientFunds {
		return RecordReport{ID: id, Status: StatusDeclined, Decision: Declined, Reason: resp.Reason}, nil
	}
	return s.chargeWithDebt(ctx, rec, sc, plan[0])
}

func (s *Service) chargeWithDebt(ctx context.Context, rec *record, sc catalog.Scenario, l leg) (RecordReport, error) {
	id := rec.key[len("off:"):]
	w, err := s.Ledger.Balance(ctx, l.Debit)
	if err != nil {
		return RecordReport{ID: id, Status: StatusRejected, Reason: apperr.CodeOf(err)}, err
	}
	var owed int64
	if err := s.DB.R.QueryRowContext(ctx, `SELECT COALESCE(SUM(debt_fen), 0) FROM scans WHERE resident_id = $1 AND decision = 'accepted'`, rec.residentID).Scan(&owed); err != nil {
		return RecordReport{ID: id, Status: StatusRejected, Reason: apperr.Unavailable}, apperr.Wrap(apperr.Unavailable, err)
	}
	fromWallet := min(max(w.Available, 0), l.Amount)
	debt := l.Amount - fromWallet
	if owed+debt > sc.CreditLimitFen {
		return s.finishDeclined(ctx, rec, sc, apperr.InsufficientFunds)
	}
	base := "scan:" + rec.terminal + ":" + rec.key + ":debt"
	var reqs []ledger.TransferRequest
	if fromWallet > 0 {
		reqs = append(reqs, leg{Key: base + "0", Debit: l.Debit, Credit: l.Credit, Amount: fromWallet, Kind: l.Kind}.request(rec, 0))
	}
	reqs = append(reqs, leg{Key: base + "1", Debit: CreditAccount, Credit: l.Credit, Amount: debt, Kind: "scan_credit"}.request(rec, 1))
	if _, err := s.Ledger.Linked(ctx, reqs); err != nil {
		if c := apperr.CodeOf(err); c == apperr.Unavailable || c == apperr.Internal {
			return RecordReport{ID: id, Status: StatusRejected, Reason: c}, err
		}
		return s.finishDeclined(ctx, rec, sc, apperr.CodeOf(err))
	}
	fin := *rec
	fin.state, fin.decision, fin.reason, fin.charged, fin.debt = stateFinal, Accepted, "", l.Amount, debt
	fin.answer = s.seal(&fin, Response{Decision: Accepted, View: map[string]any{}})
	// Synchronous: the next record of this holder counts this debt.
	if err := s.w.finalizeSync(ctx, &fin); err != nil {
		return RecordReport{ID: id, Status: StatusRejected, Reason: apperr.CodeOf(err)}, err
	}
	return RecordReport{ID: id, Status: StatusApplied, Decision: Accepted, ChargedFen: l.Amount, DebtFen: debt}, nil
}

func (s *Service) finishDeclined(ctx context.Context, rec *record, sc catalog.Scenario, reason apperr.Code) (RecordReport, error) {
	fin := *rec
	fin.state, fin.decision, fin.reason, fin.charged, fin.debt = stateFinal, Declined, string(reason), 0, 0
	fin.answer = s.seal(&fin, finish(sc, nil, Declined, reason, eval{}))
	if err := s.w.finalizeSync(ctx, &fin); err != nil {
		return RecordReport{ID: rec.key[len("off:"):], Status: StatusRejected, Reason: apperr.CodeOf(err)}, err
	}
	return RecordReport{ID: rec.key[len("off:"):], Status: StatusDeclined, Decision: Declined, Reason: reason}, nil
}
