package scan

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/store"
)

// Cancelling a ride taken on credit ("ride first, pay later").
//
// A part of such a ride cannot be reversed alone (CheckReversible): the
// ride is cancelled whole. Given any of its transfers (the wallet's part
// "…:debt0", the credit leg "…:debt1", or a collection of its debt),
// CancelRide moves, as one linked set of transfers (kind KindRideCancel):
//
//   - the wallet's part back from the provider to the wallet,
//   - every collection already made back from the account it went to
//     (CreditAccount) to the wallet,
//   - the credit leg back from the provider to the account that advanced
//     it (CreditAccount),
//
// and in the same ledger batch transaction writes the ride's last row in
// scan_debt_collections: the cancellation, numbered after the ride's last
// collection, settling exactly what was still owed (debt_fen minus the
// collections; 0 if all was collected), its transfer_id the set's first
// transfer. So the ride owes nothing any more (Owed, Debts, the credit
// limit and the collector all read debt_fen minus that table's sum), and
// CreditAccount still holds minus what residents owe: it got the credit
// leg back (+debt) and returned the collections (−collected), and what
// residents owe fell by debt − collected.
//
// The row goes through the collectors' Attacher (collections): its Claim
// admits it only if no collection of the ride came after the one it was
// planned from, and after it admits no collection of the ride (nothing is
// owed). So a top-up collecting the ride's debt at the same moment either
// comes first (the cancellation plans again and returns that collection
// too) or finds nothing owed. The resident ends with what the wallet held
// before the ride (plus any top-ups), owing nothing for it; the provider
// with nothing for it.
//
// Idempotent under the caller's key: the set's ledger keys derive from it,
// and a cancelled ride's row names the set's first transfer, so a retry (or
// a concurrent double click) finds the ride cancelled under its key and
// returns that cancellation (Replayed). A ride cancelled under another key
// is ErrRideCancelled. A transfer that is not part of a ride on credit is
// ErrNotOnCredit; nothing moves. A refusal by the ledger (the provider's
// account no longer holds the fare, a closed wallet) writes nothing and
// may be retried under the same key.

// KindRideCancel is the ledger kind of a cancellation's transfers.
const KindRideCancel = "ride_cancel"

// RideCancellation is what CancelRide did.
type RideCancellation struct {
	Scan       string `json:"scan" doc:"<terminal id>:<scan key> of the ride"`
	ResidentID string `json:"resident_id"`
	// RefundedFen went back to the wallet: the wallet's part and the
	// collections.
	RefundedFen int64 `json:"refunded_fen"`
	// CreditFen went back to the account that advanced it.
	CreditFen int64 `json:"credit_fen"`
	// ForgivenFen was still owed and is owed no more.
	ForgivenFen int64             `json:"forgiven_fen"`
	Transfers   []ledger.Transfer `json:"transfers"`
	Replayed    bool              `json:"replayed"`
}

// RefundTransfer is the cancellation's first transfer back to the
// resident's wallet (else its first transfer): the refund of a dispute.
func (c RideCancellation) RefundTransfer() string {
	for _, t := range c.Transfers {
		if t.Credit == ledger.WalletID(c.ResidentID) {
			return t.ID
		}
	}
	if len(c.Transfers) > 0 {
		return c.Transfers[0].ID
	}
	return ""
}

// ErrNotOnCredit refuses to cancel a transfer that is not part of a ride
// taken on credit.
var ErrNotOnCredit = apperr.Newf(apperr.Conflict,
	"this transfer is not part of a ride taken on credit (ride first, pay later): there is no such ride to cancel",
	"该笔转账不属于先乘后付（赊账）乘车，没有可撤销的乘车")

// ErrRideCancelled refuses to cancel a ride already cancelled (under
// another key).
var ErrRideCancelled = apperr.Newf(apperr.Conflict,
	"this ride taken on credit has already been cancelled: its fare and its debt were returned",
	"该次先乘后付乘车已撤销，车费与欠款均已退回")

// CancelRide cancels the ride on credit that transferID is part of (see
// above), under the caller's idempotency key.
func (s *Service) CancelRide(ctx context.Context, key, transferID string) (RideCancellation, error) {
	return CancelRide(ctx, s.DB, s.Ledger, s.Now, key, transferID)
}

// CancelRide is (*Service).CancelRide for callers without a scan service
// (the web console): db and l are the node's database and ledger.
func CancelRide(ctx context.Context, db *store.DB, l *ledger.Ledger, now func() time.Time, key, transferID string) (RideCancellation, error) {
	if l == nil {
		return RideCancellation{}, apperr.Newf(apperr.Unavailable, "cancelling a ride needs the ledger", "撤销乘车需要账本")
	}
	if strings.TrimSpace(key) == "" {
		return RideCancellation{}, apperr.Invalid("idempotency_key", "an idempotency key is required", "缺少幂等键")
	}
	if now == nil {
		now = time.Now
	}
	t, err := l.GetTransfer(ctx, transferID)
	if err != nil {
		return RideCancellation{}, err
	}
	r, err := findRide(ctx, db, t)
	if err != nil {
		return RideCancellation{}, err
	}
	for round := 0; ; round++ {
		c, w, reqs, err := planCancel(ctx, db, l, r, key)
		if err != nil || c.Replayed {
			return c, err
		}
		w.at = now().UnixMilli()
		out, err := l.Attach(ctx, reqs, &ledger.Attachment{To: collections, Value: w})
		switch {
		case err != nil:
			return RideCancellation{}, err
		case out.Refused != nil:
			// A collection of the ride (or another cancellation) came
			// first: plan again from fresh reads.
			if round == 16 {
				return RideCancellation{}, apperr.Newf(apperr.Unavailable, "the ride's debt kept changing; try again", "该次乘车欠款正在变动，请重试")
			}
			select {
			case <-ctx.Done():
				return RideCancellation{}, apperr.Wrap(apperr.Unavailable, ctx.Err())
			case <-time.After(time.Duration(rand.IntN(500*(round+1))) * time.Microsecond):
			}
			continue
		case out.Err != nil:
			return RideCancellation{}, out.Err
		case !w.written:
			return RideCancellation{}, apperr.Newf(apperr.Internal, "the ride's cancellation was not recorded", "乘车撤销未记录")
		}
		c.Transfers = out.Transfers
		c.Replayed = len(out.Transfers) > 0 && out.Transfers[0].Replayed
		return c, nil
	}
}

// RideCancelled reports whether transferID is part of a ride taken on
// credit that has been cancelled (false for any other transfer): a
// dispute of such a line has nothing left to refund.
func RideCancelled(ctx context.Context, db *store.DB, l *ledger.Ledger, transferID string) (bool, error) {
	t, err := l.GetTransfer(ctx, transferID)
	if err != nil {
		return false, err
	}
	r, err := findRide(ctx, db, t)
	if err == ErrNotOnCredit {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var last string
	err = db.R.QueryRowContext(ctx, `SELECT transfer_id FROM scan_debt_collections WHERE terminal_id = $1 AND idem_key = $2 ORDER BY seq DESC LIMIT 1`,
		r.terminal, r.key).Scan(&last)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, apperr.Wrap(apperr.Unavailable, err)
	}
	lt, err := l.GetTransfer(ctx, last)
	if err != nil {
		return false, err
	}
	return lt.Kind == KindRideCancel, nil // a cancellation is always the ride's last row
}

// ride is the scan row of a ride on credit.
type ride struct {
	terminal, key, residentID, provider, scenario string
	at, debt                                      int64
}

func (r ride) ref() string { return r.terminal + ":" + r.key }

// findRide finds the ride on credit t is part of: a collection by its
// row, a leg by its key (the scan's terminal is in its meta, the time in
// the key).
func findRide(ctx context.Context, db *store.DB, t ledger.Transfer) (ride, error) {
	var terminal, key string
	switch {
	case t.Kind == KindDebtCollection && strings.HasPrefix(t.Debit, "w:"):
		err := db.R.QueryRowContext(ctx, `SELECT terminal_id, idem_key FROM scan_debt_collections WHERE resident_id = $1 AND transfer_id = $2`,
			strings.TrimPrefix(t.Debit, "w:"), t.ID).Scan(&terminal, &key)
		if errors.Is(err, sql.ErrNoRows) {
			return ride{}, ErrNotOnCredit
		}
		if err != nil {
			return ride{}, apperr.Wrap(apperr.Unavailable, err)
		}
	case strings.HasPrefix(t.Key, "scan:") && (strings.HasSuffix(t.Key, ":debt0") || strings.HasSuffix(t.Key, ":debt1")) && t.Meta["terminal"] != "":
		suffix := t.Key[len(t.Key)-len("debt0"):]
		terminal = t.Meta["terminal"]
		at := int64(-1)
		if h, _, ok := strings.Cut(strings.TrimPrefix(t.Key, "scan:"), ":"); ok && len(h) == 11 {
			if v, err := strconv.ParseInt(h, 16, 64); err == nil {
				at = v
			}
		}
		found := false
		for _, q := range []int64{at, -1} {
			var rows *sql.Rows
			var err error
			if q >= 0 {
				rows, err = db.R.QueryContext(ctx, `SELECT idem_key, at FROM scans WHERE terminal_id = $1 AND at = $2 AND debt_fen > 0`, terminal, q)
			} else {
				rows, err = db.R.QueryContext(ctx, `SELECT idem_key, at FROM scans WHERE terminal_id = $1 AND debt_fen > 0`, terminal)
			}
			if err != nil {
				return ride{}, apperr.Wrap(apperr.Unavailable, err)
			}
			for rows.Next() {
				var k string
				var a int64
				if err := rows.Scan(&k, &a); err != nil {
					rows.Close()
					return ride{}, apperr.Wrap(apperr.Unavailable, err)
				}
				if transferKey(terminal, k, a, suffix, false) == t.Key || transferKey(terminal, k, a, suffix, true) == t.Key {
					key, found = k, true
					break
				}
			}
			if err := rows.Close(); err != nil {
				return ride{}, apperr.Wrap(apperr.Unavailable, err)
			}
			if found || q == -1 {
				break
			}
		}
		if !found {
			return ride{}, ErrNotOnCredit
		}
	default:
		return ride{}, ErrNotOnCredit
	}
	r := ride{terminal: terminal, key: key}
	var decision string
	err := db.R.QueryRowContext(ctx, `SELECT resident_id, provider_id, scenario, decision, debt_fen, at FROM scans WHERE terminal_id = $1 AND idem_key = $2`,
		terminal, key).Scan(&r.residentID, &r.provider, &r.scenario, &decision, &r.debt, &r.at)
	if errors.Is(err, sql.ErrNoRows) {
		return ride{}, ErrNotOnCredit
	}
	if err != nil {
		return ride{}, apperr.Wrap(apperr.Unavailable, err)
	}
	if decision != Accepted || r.debt <= 0 {
		return ride{}, ErrNotOnCredit
	}
	return r, nil
}

// cancelKey is the ledger key of transfer i of the cancellation under the
// caller's key.
func cancelKey(key string, i int) string {
	if len(key) > 96 {
		h := sha256.Sum256([]byte(key))
		key = "h" + hex.EncodeToString(h[:20])
	}
	return "ride-cancel:" + key + ":" + strconv.Itoa(i)
}

// maxCancelTransfers: a linked set holds at most 64 transfers; a ride
// with more collections than fit has them returned together.
const maxCancelTransfers = 64

// planCancel reads the ride's legs and collections and plans its
// cancellation; a ride already cancelled under key is returned Replayed.
func planCancel(ctx context.Context, db *store.DB, l *ledger.Ledger, r ride, key string) (RideCancellation, *collectRow, []ledger.TransferRequest, error) {
	c := RideCancellation{Scan: r.ref(), ResidentID: r.residentID}
	type coll struct {
		seq, amount      int64
		credit, transfer string
	}
	rows, err := db.R.QueryContext(ctx, `SELECT seq, amount_fen, credit_account, transfer_id FROM scan_debt_collections
		WHERE terminal_id = $1 AND idem_key = $2 ORDER BY seq`, r.terminal, r.key)
	if err != nil {
		return c, nil, nil, apperr.Wrap(apperr.Unavailable, err)
	}
	var colls []coll
	for rows.Next() {
		var k coll
		if err := rows.Scan(&k.seq, &k.amount, &k.credit, &k.transfer); err != nil {
			rows.Close()
			return c, nil, nil, apperr.Wrap(apperr.Unavailable, err)
		}
		colls = append(colls, k)
	}
	if err := rows.Close(); err != nil {
		return c, nil, nil, apperr.Wrap(apperr.Unavailable, err)
	}
	// The collections' transfers; a cancellation is always the last row.
	var collTr []ledger.Transfer
	var collected int64
	for i, k := range colls {
		t, err := l.GetTransfer(ctx, k.transfer)
		if err != nil {
			return c, nil, nil, err
		}
		if t.Kind == KindRideCancel && i == len(colls)-1 {
			return replayCancel(ctx, l, c, t, k.amount, key)
		}
		collTr = append(collTr, t)
		collected += k.amount
	}
	var legs [2]*ledger.Transfer // debt0, debt1
	for i, suffix := range []string{"debt0", "debt1"} {
		for _, legacy := range []bool{false, true} {
			t, err := l.GetTransferByKey(ctx, transferKey(r.terminal, r.key, r.at, suffix, legacy))
			if apperr.CodeOf(err) == apperr.NotFound {
				continue
			}
			if err != nil {
				return c, nil, nil, err
			}
			legs[i] = &t
			break
		}
	}
	if legs[0] == nil && legs[1] == nil && len(collTr) == 0 {
		return c, nil, nil, ErrNotOnCredit // no money moved for it: nothing to cancel
	}
	// Whatever was reversed another way is not the ride's as recorded: a
	// person decides.
	all := append(append([]ledger.Transfer{}, collTr...), derefs(legs[:])...)
	for _, t := range all {
		n, err := l.Reversed(ctx, t.ID, "")
		if err != nil {
			return c, nil, nil, err
		}
		if n != 0 {
			return c, nil, nil, apperr.Newf(apperr.Conflict, "a part of this ride on credit ("+t.ID+") has been reversed already: it cannot be cancelled automatically",
				"该次先乘后付乘车的部分款项（"+t.ID+"）已被冲正，不能自动撤销")
		}
	}
	ref := r.ref()
	if len(ref) > ledger.MaxMetaValLen {
		ref = ref[:ledger.MaxMetaValLen]
	}
	var reqs []ledger.TransferRequest
	back := func(debit, credit string, amount int64, part, of string) {
		reqs = append(reqs, ledger.TransferRequest{Key: cancelKey(key, len(reqs)), Debit: debit, Credit: credit, Amount: amount, Kind: KindRideCancel,
			Memo: "ride on credit cancelled: " + part + " returned (先乘后付乘车撤销，款项退回)",
			Meta: map[string]string{"kind": KindRideCancel, "scan": ref, "scenario": r.scenario, "provider": r.provider, "part": part, "reverses": of}})
	}
	wallet := ledger.WalletID(r.residentID)
	if t := legs[0]; t != nil {
		back(t.Credit, t.Debit, t.Amount, "wallet", t.ID)
		if t.Debit == wallet {
			c.RefundedFen += t.Amount
		}
	}
	if len(collTr)+2 <= maxCancelTransfers {
		for _, t := range collTr {
			back(t.Credit, t.Debit, t.Amount, "collection", t.ID)
		}
	} else { // together, per pair of accounts
		type pair struct{ d, c string }
		sum := map[pair]int64{}
		var order []pair
		for _, t := range collTr {
			p := pair{t.Credit, t.Debit}
			if _, ok := sum[p]; !ok {
				order = append(order, p)
			}
			sum[p] += t.Amount
		}
		for _, p := range order {
			back(p.d, p.c, sum[p], "collections", strconv.Itoa(len(collTr)))
		}
	}
	for _, t := range collTr {
		if t.Debit == wallet {
			c.RefundedFen += t.Amount
		}
	}
	creditor := ledger.ReceivableID(r.provider)
	if t := legs[1]; t != nil {
		back(t.Credit, t.Debit, t.Amount, "credit", t.ID)
		c.CreditFen = t.Amount
		creditor = t.Debit
	} else if len(colls) > 0 {
		creditor = colls[0].credit
	}
	c.ForgivenFen = r.debt - collected
	w := &collectRow{terminal: r.terminal, key: r.key, residentID: r.residentID, seq: int64(len(colls)) + 1,
		amount: c.ForgivenFen, debt: r.debt, creditor: creditor, cancel: true}
	if len(colls) > 0 {
		w.seq = colls[len(colls)-1].seq + 1
	}
	return c, w, reqs, nil
}

func derefs(ts []*ledger.Transfer) []ledger.Transfer {
	var out []ledger.Transfer
	for _, t := range ts {
		if t != nil {
			out = append(out, *t)
		}
	}
	return out
}

// replayCancel answers a cancellation of a ride already cancelled (first
// is its first transfer, forgiven its row's amount): under key, that
// cancellation (Replayed); under another key, ErrRideCancelled.
func replayCancel(ctx context.Context, l *ledger.Ledger, c RideCancellation, first ledger.Transfer, forgiven int64, key string) (RideCancellation, *collectRow, []ledger.TransferRequest, error) {
	if first.Key != cancelKey(key, 0) {
		return c, nil, nil, ErrRideCancelled
	}
	c.Replayed, c.ForgivenFen = true, forgiven
	wallet := ledger.WalletID(c.ResidentID)
	for i := 0; i < maxCancelTransfers; i++ {
		t, err := l.GetTransferByKey(ctx, cancelKey(key, i))
		if apperr.CodeOf(err) == apperr.NotFound {
			break
		}
		if err != nil {
			return c, nil, nil, err
		}
		t.Replayed = true
		c.Transfers = append(c.Transfers, t)
		switch {
		case t.Credit == wallet:
			c.RefundedFen += t.Amount
		case t.Meta["part"] == "credit":
			c.CreditFen += t.Amount
		}
	}
	return c, nil, nil, nil
}
