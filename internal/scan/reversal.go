package scan

import (
	"context"
	"strings"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ledger"
)

// CheckReversible refuses the reversal (a refund, finance's correction) of
// a transfer that cannot be reversed on its own without making the books
// disagree with what else records it:
//
//   - a charge made in another city, booked at home from the resident's
//     account to our clearing account for that city: reversing it here
//     changes what we owe that city in our books only (its clearing
//     account for us, and the day's statement both cities sign, still
//     count the fare), and that city's void could no longer be reversed.
//     It is undone by that city (a federation void), not here.
//   - a part of a ride taken on credit ("ride first, pay later",
//     collect.go): the part the wallet paid at the ride, or a collection
//     of its debt from a later top-up. Reversing the wallet's part leaves
//     the ride's debt owed, and the next collection takes the refund
//     straight back; reversing a collection returns the money while the
//     debt stays recorded as collected, so the credit account no longer
//     holds minus what residents owe. Likewise a transfer of a ride's
//     cancellation (CancelRide).
func CheckReversible(ctx context.Context, l *ledger.Ledger, transferID string) error {
	t, err := l.GetTransfer(ctx, transferID)
	if err != nil {
		return err
	}
	a, err := l.Balance(ctx, t.Credit)
	if err != nil {
		return err
	}
	if a.Kind == ledger.KindClearing {
		peer := strings.TrimPrefix(t.Credit, "clr:")
		return apperr.Newf(apperr.Conflict, "this charge was made in another city ("+peer+") and is cleared with it: it cannot be reversed here alone; that city voids it",
			"该笔扣款发生在其他城市（"+peer+"）并已与其清算，本市不能单方面冲正，须由该城市撤销")
	}
	// A collection, or a transfer of a ride's cancellation (cancel.go:
	// undone alone, it would leave the ride cancelled in its row while
	// the money moved back).
	onCredit := t.Kind == KindDebtCollection || t.Kind == KindRideCancel
	if base, ok := strings.CutSuffix(t.Key, ":debt0"); ok && strings.HasPrefix(base, "scan:") {
		// The wallet's part of an offline ride: was the rest advanced on
		// credit (the record's "…:debt1" leg, debtRecord)?
		_, err := l.GetTransferByKey(ctx, base+":debt1")
		switch apperr.CodeOf(err) {
		case "":
			onCredit = true
		case apperr.NotFound:
		default:
			return err
		}
	}
	if onCredit {
		return ErrOnCredit
	}
	return nil
}

// ErrOnCredit refuses the reversal of a part of a ride taken on credit
// (CheckReversible): the ride must be cancelled with its debt, by
// CancelRide (cancel.go; a dispute's refund does).
var ErrOnCredit = apperr.Newf(apperr.Conflict,
	"this charge is part of a ride taken on credit (ride first, pay later): reversing it alone would leave the ride's debt inconsistent; the ride must be cancelled with its debt",
	"该笔扣款属于先乘后付（赊账）乘车：单独冲正会使该次乘车欠款不一致，须连同欠款一并撤销")
