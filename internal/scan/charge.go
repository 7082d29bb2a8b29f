package scan

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/catalog"
	"github.com/yikatong/yikatong/internal/ledger"
)

// rowFor wraps rec for the scans Attacher, with the card it was decided on.
func rowFor(rec *record) *attachRow {
	w := &attachRow{rec: rec}
	if rec.card.Number != "" && rec.card.ResidentID != "" {
		w.cardNumber, w.cardStatus, w.cardChanged = rec.card.Number, rec.card.Status, rec.card.StatusChangedAt.UnixMilli()
	}
	return w
}

// insert writes a final record that moves no money (through the ledger's
// batch, or the scans writer without a ledger).
func (s *Service) insert(ctx context.Context, rec *record) (int, *record, error) {
	if s.rows == nil {
		return s.w.insert(ctx, rec)
	}
	out, err := s.Ledger.Attach(ctx, nil, &ledger.Attachment{To: s.rows, Value: rowFor(rec)})
	if err != nil {
		return 0, nil, err
	}
	return s.outcome(ctx, rec, out.Refused)
}

type pendingWaitKey struct{}

// withPendingWait bounds the total time everything done under ctx (one
// batch upload's records) waits for records an overlapping upload is still
// writing (outcome), so that many such records cannot stall an upload
// record after record.
func withPendingWait(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, pendingWaitKey{}, time.Now().Add(d))
}

// outcome maps a Claim refusal to the writer's insert outcomes; other
// errors (stale card, unavailable) are returned.
func (s *Service) outcome(ctx context.Context, rec *record, err error) (int, *record, error) {
	var dk *dupKeyErr
	switch {
	case err == nil:
		return inserted, nil, nil
	case errors.As(err, &dk):
		if dk.existing != nil {
			return dupKey, dk.existing, nil
		}
		// Taken earlier in the same batch, which has committed by now —
		// unless the earlier one wrote nothing yet: an offline record of an
		// overlapping upload, deferred to its credit step, which commits
		// moments later. Wait for it briefly before asking for a retry
		// (at most a second, and within an upload's shared budget).
		limit := time.Now().Add(time.Second)
		if d, ok := ctx.Value(pendingWaitKey{}).(time.Time); ok && d.Before(limit) {
			limit = d
		}
		ex, err := lookup(ctx, s.DB, rec.terminal, rec.key)
		for wait := 2 * time.Millisecond; err == nil && ex == nil && time.Now().Add(wait).Before(limit); wait *= 2 {
			select {
			case <-ctx.Done():
				return 0, nil, apperr.Wrap(apperr.Unavailable, ctx.Err())
			case <-time.After(wait):
			}
			ex, err = lookup(ctx, s.DB, rec.terminal, rec.key)
		}
		if err != nil {
			return 0, nil, err
		}
		if ex == nil {
			// The earlier one wrote nothing (e.g. an offline record of an
			// overlapping upload, deferred to its credit step).
			e := apperr.Wrap(apperr.Unavailable, errKeyPending)
			e.Detail, e.DetailZh = "the scan is being written; retry", "扫码记录正在写入，请重试"
			return 0, nil, e
		}
		return dupKey, ex, nil
	case errors.Is(err, errReplayed):
		return dupCTI, nil, nil
	}
	return 0, nil, err
}

// showsBalance says whether sc's view has a balance after the scan (the
// facts balances adds).
func showsBalance(sc catalog.Scenario) bool {
	return slices.Contains(sc.ViewFields, "balance_fen") || slices.Contains(sc.ViewFields, "medical_balance_fen")
}

// balances adds the holder's balances after the transfers to the facts.
func balances(all map[string]any, rec *record, plan []leg, trs []ledger.Transfer) {
	for i, l := range plan {
		if i >= len(trs) {
			break
		}
		switch l.Debit {
		case ledger.MedicalID(rec.residentID):
			all["medical_balance_fen"] = trs[i].DebitAfter
		case ledger.WalletID(rec.residentID):
			all["balance_fen"] = trs[i].DebitAfter
		}
		if l.Credit == ledger.WalletID(rec.residentID) {
			all["balance_fen"] = trs[i].CreditAfter
		}
	}
}

// charge applies an accepted scan's plan and writes its final row in the
// same ledger transaction: one commit per scan (shared by the batch), and
// no pending state. A fare the ledger refuses is stored as a declined scan
// with the ledger's reason (the code's nonce stays used); a conflicting
// ledger key (idempotency_conflict), or a failed batch, writes nothing.
//
// The row keeps no plan: a final row's plan is never read again (only a
// pending row's, left by an older version, is re-driven, and an offline
// debt's, which the debt collector repays).
func (s *Service) charge(ctx context.Context, rec *record, sc catalog.Scenario, plan []leg, all map[string]any) (Response, error) {
	rec.state = stateFinal
	reqs := make([]ledger.TransferRequest, len(plan))
	for i, l := range plan {
		reqs[i] = l.request(rec, i, false)
	}
	accepted := func(trs []ledger.Transfer) Response {
		facts := make(map[string]any, len(all)+2)
		for k, v := range all {
			facts[k] = v
		}
		balances(facts, rec, plan, trs)
		return finish(sc, facts, Accepted, "", eval{})
	}
	// build runs in the ledger's committer, which every charge waits for.
	// Unless the provider sees a balance after the fare (a bus gate sees
	// the decision and the fare), the accepted answer does not depend on
	// the ledger: it is made and sealed here, beforehand, in parallel.
	var pre Response
	var preSealed []byte
	if !showsBalance(sc) {
		pre = accepted(nil)
		preSealed = s.seal(rec, pre)
	}
	var resp Response
	w := rowFor(rec)
	w.build = func(trs []ledger.Transfer, err error) *record {
		fin := *rec
		switch {
		case err != nil:
			code := apperr.CodeOf(err)
			switch code {
			case apperr.Unavailable, apperr.Internal, apperr.IdempotencyConflict:
				return nil
			}
			fin.decision, fin.reason, fin.charged = Declined, string(code), 0
			resp = finish(sc, nil, Declined, code, eval{})
		case preSealed != nil:
			resp, fin.answer = pre, preSealed
			return &fin
		default:
			resp = accepted(trs)
		}
		fin.answer = s.seal(&fin, resp)
		return &fin
	}
	out, err := s.Ledger.Attach(ctx, reqs, &ledger.Attachment{To: s.rows, Value: w})
	if err != nil {
		return Response{}, err
	}
	if out.Refused != nil {
		o, ex, err := s.outcome(ctx, rec, out.Refused)
		switch {
		case err != nil:
			return Response{}, err
		case o == dupKey:
			return s.again(ctx, ex, rec.hash, rec.legacyHash)
		default: // dupCTI
			return s.decline(ctx, rec, sc, eval{}, apperr.Replayed)
		}
	}
	if out.Err != nil && w.written == nil {
		return Response{}, apperr.As(out.Err)
	}
	return resp, nil
}
