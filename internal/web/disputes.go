package web

import (
	"context"
	"errors"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/store"
)

// Dispute statuses.
const (
	DisputeOpen = "open"
	// DisputeRefunding: a refund was decided and its reversal is under
	// way (or failed and may be retried); it can no longer be rejected.
	DisputeRefunding = "refunding"
	DisputeRefunded  = "refunded"
	DisputeRejected  = "rejected"
)

// Dispute is a resident's challenge of one charge.
type Dispute struct {
	ID             string
	ResidentID     string
	CardNumber     string
	TransferID     string
	AccountID      string
	AmountFen      int64
	Reason         string
	Status         string
	Resolution     string
	RefundTransfer string
	CreatedAt      time.Time
	ResolvedAt     time.Time
	ResolvedBy     string
}

const disputeCols = `id, resident_id, card_number, transfer_id, account_id, amount_fen, reason, status, resolution, refund_transfer, created_at, resolved_at, resolved_by`

func scanDispute(row interface{ Scan(...any) error }) (Dispute, error) {
	var d Dispute
	var c, r int64
	err := row.Scan(&d.ID, &d.ResidentID, &d.CardNumber, &d.TransferID, &d.AccountID, &d.AmountFen, &d.Reason, &d.Status, &d.Resolution, &d.RefundTransfer, &c, &r, &d.ResolvedBy)
	d.CreatedAt = time.UnixMilli(c).UTC()
	if r != 0 {
		d.ResolvedAt = time.UnixMilli(r).UTC()
	}
	return d, err
}

func checkReason(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", apperr.Invalid("reason", "say in a few words what is wrong", "请简要说明原因")
	}
	if utf8.RuneCountInString(s) > 500 {
		return "", apperr.Invalid("reason", "the reason is at most 500 characters", "原因最多 500 字")
	}
	return s, nil
}

// OpenDispute records a resident's dispute of a charge on one of their own
// accounts (wallet or medical).
func (w *Web) OpenDispute(ctx context.Context, residentID, cardNumber, transferID, reason string) (Dispute, error) {
	if w.d.Ledger == nil {
		return Dispute{}, unavailable("ledger")
	}
	reason, err := checkReason(reason)
	if err != nil {
		return Dispute{}, err
	}
	// Another resident's transfer is answered as one that does not exist,
	// so transfer ids cannot be probed.
	notYours := apperr.Newf(apperr.NotFound, "no such charge on your accounts", "您的账户中没有这笔扣款")
	t, err := w.d.Ledger.GetTransfer(ctx, transferID)
	if apperr.CodeOf(err) == apperr.NotFound {
		return Dispute{}, notYours
	}
	if err != nil {
		return Dispute{}, err
	}
	if t.Debit != ledger.WalletID(residentID) && t.Debit != ledger.MedicalID(residentID) {
		return Dispute{}, notYours
	}
	if t.Type != "transfer" && t.Type != "post" {
		return Dispute{}, apperr.Invalid("transfer_id", "only a charge can be disputed", "只能对扣款提出异议")
	}
	// A line of a ride on credit already cancelled has nothing left to
	// refund.
	if gone, err := scan.RideCancelled(ctx, w.d.DB, w.d.Ledger, t.ID); err != nil {
		return Dispute{}, err
	} else if gone {
		return Dispute{}, scan.ErrRideCancelled
	}
	// A charge already reversed in full (by finance, a federation void)
	// has nothing left to refund.
	if rest, err := w.refundable(ctx, t.ID, t.Amount, ""); err != nil {
		return Dispute{}, err
	} else if rest <= 0 {
		return Dispute{}, errReversed
	}
	d := Dispute{ID: auth.RandomID("dsp_"), ResidentID: residentID, CardNumber: cardNumber, TransferID: t.ID, AccountID: t.Debit,
		AmountFen: t.Amount, Reason: reason, Status: DisputeOpen, CreatedAt: w.d.Now().UTC().Truncate(time.Millisecond)}
	_, err = w.d.DB.W.ExecContext(ctx, `INSERT INTO disputes(id, resident_id, card_number, transfer_id, account_id, amount_fen, reason, status, created_at)
		VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)`, d.ID, d.ResidentID, d.CardNumber, d.TransferID, d.AccountID, d.AmountFen, d.Reason, d.Status, d.CreatedAt.UnixMilli())
	if err != nil {
		if store.IsUniqueViolation(err) {
			return Dispute{}, apperr.Newf(apperr.AlreadyExists, "this charge is already disputed", "该笔扣款已提出过异议")
		}
		return Dispute{}, apperr.Wrap(apperr.Internal, err)
	}
	return d, nil
}

// Disputes lists disputes, newest first: of one resident, or (residentID
// "") all with the given status ("" = any).
func (w *Web) Disputes(ctx context.Context, residentID, status string) ([]Dispute, error) {
	rows, err := w.d.DB.R.QueryContext(ctx, `SELECT `+disputeCols+` FROM disputes
		WHERE ($1 = '' OR resident_id = $1) AND ($2 = '' OR status = $2 OR ($2 = 'open' AND status = 'refunding'))
		ORDER BY created_at DESC LIMIT 500`, residentID, status)
	if err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	defer rows.Close()
	var out []Dispute
	for rows.Next() {
		d, err := scanDispute(rows)
		if err != nil {
			return nil, apperr.Wrap(apperr.Internal, err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

func (w *Web) dispute(ctx context.Context, id string) (Dispute, error) {
	d, err := scanDispute(w.d.DB.R.QueryRowContext(ctx, `SELECT `+disputeCols+` FROM disputes WHERE id = $1`, id))
	if err != nil {
		return Dispute{}, apperr.Newf(apperr.NotFound, "no such dispute", "异议不存在")
	}
	return d, nil
}

func (w *Web) disputeStatusByTransfer(ctx context.Context, residentID string) (map[string]string, error) {
	ds, err := w.Disputes(ctx, residentID, "")
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, d := range ds {
		m[d.TransferID] = d.Status
	}
	return m, nil
}

var errNotOpen = apperr.Newf(apperr.Conflict, "the dispute has already been resolved", "该异议已处理")

// RefundDispute resolves an open dispute by reversing the charge in the
// ledger (idempotent: the reversal's key is the dispute id, so a retry or
// a second click never refunds twice). The dispute is marked refunding
// before the money moves, so a rejection at the same moment either comes
// first (and there is no refund) or is refused; a refund whose reversal
// failed stays refunding until it is retried. Only what remains of the
// charge after other reversals is refunded (reverseRest).
func (w *Web) RefundDispute(ctx context.Context, p auth.Principal, id, note string) (Dispute, error) {
	if w.d.Ledger == nil {
		return Dispute{}, unavailable("ledger")
	}
	if note = strings.TrimSpace(note); note == "" {
		note = "refunded"
	} else if utf8.RuneCountInString(note) > 500 {
		return Dispute{}, apperr.Invalid("note", "the note is at most 500 characters", "备注最多 500 字")
	}
	d, err := w.dispute(ctx, id)
	if err != nil {
		return Dispute{}, err
	}
	// A part of a ride taken on credit is refunded by cancelling the
	// whole ride (scan.CancelRide); anything else CheckReversible refuses
	// stays open.
	rerr := w.refundableHere(ctx, d)
	onCredit := rerr == scan.ErrOnCredit
	if rerr != nil && !onCredit && (d.Status == DisputeOpen || d.Status == DisputeRefunding) {
		return Dispute{}, rerr
	}
	switch d.Status {
	case DisputeOpen:
		r, err := w.d.DB.W.ExecContext(ctx, `UPDATE disputes SET status = 'refunding' WHERE id = $1 AND status = 'open'`, d.ID)
		if err != nil {
			return Dispute{}, apperr.Wrap(apperr.Internal, err)
		}
		if n, _ := r.RowsAffected(); n == 0 {
			if d, err = w.dispute(ctx, id); err != nil {
				return Dispute{}, err
			}
			if d.Status != DisputeRefunding { // resolved meanwhile
				return Dispute{}, errNotOpen
			}
		}
	case DisputeRefunding: // a retry
	default:
		return Dispute{}, errNotOpen
	}
	var refund string
	if onCredit {
		refund, err = w.cancelRide(ctx, d)
	} else {
		var t ledger.Transfer
		t, err = w.reverseRest(ctx, d)
		refund = t.ID
	}
	if err != nil {
		return Dispute{}, err
	}
	if err := w.closeDispute(ctx, p, d.ID, DisputeRefunded, note, refund); err != nil {
		if errors.Is(err, errNotOpen) {
			// A concurrent retry of this refund finished it.
			return w.dispute(ctx, id)
		}
		return Dispute{}, err
	}
	w.d.Auth.Audit(ctx, p, "dispute_refund", d.ID, refund)
	return w.dispute(ctx, id)
}

// cancelRide refunds dispute d (marked refunding) of a part of a ride
// taken on credit by cancelling the whole ride under the key
// "dispute:<id>" (scan.CancelRide: the wallet's part and the collections
// back to the wallet, the credit back, the debt no longer owed), so a
// retry or a second click cancels once. It returns the refund's transfer
// (the first back to the wallet). A ride cancelled already (through
// another dispute) has nothing left to refund: the dispute goes back to
// open, like a charge reversed in full (reverseRest).
func (w *Web) cancelRide(ctx context.Context, d Dispute) (string, error) {
	c, err := scan.CancelRide(ctx, w.d.DB, w.d.Ledger, w.d.Now, "dispute:"+d.ID, d.TransferID)
	if err == scan.ErrRideCancelled || err == scan.ErrNotOnCredit {
		if _, uerr := w.d.DB.W.ExecContext(ctx, `UPDATE disputes SET status = 'open' WHERE id = $1 AND status = 'refunding'`, d.ID); uerr != nil {
			return "", apperr.Wrap(apperr.Internal, uerr)
		}
		return "", err
	}
	if err != nil {
		return "", err
	}
	return c.RefundTransfer(), nil
}

// refundableHere refuses the refund of a charge this city cannot reverse
// on its own (scan.CheckReversible: one made in another city, a part of a
// ride taken on credit); the dispute stays open, to be rejected with a
// note. (RefundDispute refunds a part of a ride on credit, refused here
// with scan.ErrOnCredit, by cancelling the ride.)
func (w *Web) refundableHere(ctx context.Context, d Dispute) error {
	return scan.CheckReversible(ctx, w.d.Ledger, d.TransferID)
}

var errReversed = apperr.Newf(apperr.Conflict, "this charge has already been reversed in full (refunded another way): there is nothing left to refund",
	"该笔扣款已全额冲正（已通过其他途径退款），无可退金额")

// refundable is what remains to be refunded of a charge of amount: the
// amount less the reversals made other than under key (the dispute's own
// refund, so that a retry asks the ledger for the same refund again).
func (w *Web) refundable(ctx context.Context, transferID string, amount int64, key string) (int64, error) {
	reversed, err := w.d.Ledger.Reversed(ctx, transferID, key)
	if err != nil {
		return 0, err
	}
	return amount - reversed, nil
}

// reverseRest refunds dispute d (marked refunding): it reverses what
// remains of the charge, under the key "dispute:<id>". A charge may have
// been reversed in part or in full another way (finance's reversal, a
// federation void) before or while this runs: the refund is then the
// rest, never more than was charged; if nothing remains the dispute goes
// back to open (and can be rejected) and the refund is refused. That is
// safe because nothing can ever remain again, so no other attempt can
// be refunding it.
func (w *Web) reverseRest(ctx context.Context, d Dispute) (ledger.Transfer, error) {
	key := "dispute:" + d.ID
	for attempt := 0; ; attempt++ {
		rest, err := w.refundable(ctx, d.TransferID, d.AmountFen, key)
		if err != nil {
			return ledger.Transfer{}, err
		}
		if rest <= 0 {
			if _, err := w.d.DB.W.ExecContext(ctx, `UPDATE disputes SET status = 'open' WHERE id = $1 AND status = 'refunding'`, d.ID); err != nil {
				return ledger.Transfer{}, apperr.Wrap(apperr.Internal, err)
			}
			return ledger.Transfer{}, errReversed
		}
		t, err := w.d.Ledger.Reverse(ctx, key, d.TransferID, rest)
		// Another reversal came between the read and ours: read again.
		if apperr.CodeOf(err) == apperr.ReversalExceeds && attempt < 3 {
			continue
		}
		return t, err
	}
}

// RejectDispute resolves an open dispute without a refund; the resident
// sees the reason.
func (w *Web) RejectDispute(ctx context.Context, p auth.Principal, id, reason string) (Dispute, error) {
	reason, err := checkReason(reason)
	if err != nil {
		return Dispute{}, err
	}
	if err := w.closeDispute(ctx, p, id, DisputeRejected, reason, ""); err != nil {
		return Dispute{}, err
	}
	w.d.Auth.Audit(ctx, p, "dispute_reject", id, "")
	return w.dispute(ctx, id)
}

func (w *Web) closeDispute(ctx context.Context, p auth.Principal, id, status, resolution, refund string) error {
	// A refund closes a dispute it marked refunding; a rejection only an
	// open one.
	from := DisputeOpen
	if status == DisputeRefunded {
		from = DisputeRefunding
	}
	r, err := w.d.DB.W.ExecContext(ctx, `UPDATE disputes SET status = $2, resolution = $3, refund_transfer = $4, resolved_at = $5, resolved_by = $6
		WHERE id = $1 AND status = $7`, id, status, resolution, refund, w.d.Now().UnixMilli(), p.String(), from)
	if err != nil {
		return apperr.Wrap(apperr.Internal, err)
	}
	if n, _ := r.RowsAffected(); n == 0 {
		if _, err := w.dispute(ctx, id); err != nil {
			return err
		}
		return errNotOpen
	}
	return nil
}

func (w *Web) residentDisputes(rq *req) error {
	rc, err := rq.resident()
	if err != nil {
		return err
	}
	ds, err := w.Disputes(rq.r.Context(), rc.Resident.ID, "")
	if err != nil {
		return err
	}
	return rq.render(200, "r_disputes.html", "r.disputes.title", residentDisputes{List: ds})
}

// residentDisputes is the resident's disputes page: their disputes, and
// after a refused one the form again with what they typed.
type residentDisputes struct {
	List  []Dispute
	Retry *disputeRetry
}

type disputeRetry struct{ TransferID, Reason string }

func (w *Web) residentDispute(rq *req) error {
	rc, err := rq.resident()
	if err != nil {
		return err
	}
	_, err = w.OpenDispute(rq.r.Context(), rc.Resident.ID, rc.Card.Number, rq.r.PostFormValue("transfer_id"), rq.r.PostFormValue("reason"))
	if err != nil {
		var e *apperr.Error
		if errors.As(err, &e) {
			ds, _ := w.Disputes(rq.r.Context(), rc.Resident.ID, "")
			// A reason refused (empty, too long): the form again, with what
			// was typed, to correct it here instead of finding the line again.
			var retry *disputeRetry
			if e.Code == apperr.ValidationFailed {
				retry = &disputeRetry{TransferID: rq.r.PostFormValue("transfer_id"), Reason: rq.r.PostFormValue("reason")}
			}
			return rq.renderWithError(e, "r_disputes.html", "r.disputes.title", residentDisputes{List: ds, Retry: retry})
		}
		return err
	}
	return redirect("/r/disputes?m=disputed")
}
