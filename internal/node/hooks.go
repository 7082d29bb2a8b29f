package node

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/resident"
)

// openResidentAccounts opens the wallet and medical account of a resident.
func (n *Node) openResidentAccounts(ctx context.Context, residentID string) error {
	_, _, err := n.Ledger.OpenResidentAccounts(ctx, residentID)
	return err
}

// fundDemo opens and funds the demo residents' accounts: a wallet top-up
// from the bank channel and a medical personal account credit from the
// medical insurance fund. Concurrent callers share the ledger's batches.
func (n *Node) fundDemo(ctx context.Context, residentIDs []string) error {
	work := make(chan string)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				if err := n.fundOne(ctx, id); err != nil {
					select {
					case errc <- fmt.Errorf("funding demo resident %s: %w", id, err):
					default:
					}
				}
			}
		}()
	}
	for _, id := range residentIDs {
		work <- id
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

func (n *Node) fundOne(ctx context.Context, residentID string) error {
	var w, m string
	if err := retryUnavailable(ctx, func() (err error) {
		w, m, err = n.Ledger.OpenResidentAccounts(ctx, residentID)
		return err
	}); err != nil {
		return err
	}
	if err := retryUnavailable(ctx, func() error {
		_, err := n.Ledger.TopUp(ctx, "demo-topup:"+residentID, w, DemoWalletFen, map[string]string{"channel": "demo"})
		return err
	}); err != nil {
		return err
	}
	return retryUnavailable(ctx, func() error {
		_, err := n.Ledger.Transfer(ctx, ledger.TransferRequest{Key: "demo-medical:" + residentID, Debit: ledger.AccountMedicalFund, Credit: m, Amount: DemoMedicalFen, Kind: "medical_contribution"})
		return err
	})
}

// retryUnavailable runs f again, a few times with a growing pause, while it
// fails with a retryable error (a statement timeout on a busy database, a
// connection lost): what a client is told to do with the same idempotency
// key, done here for the node's own start-up writes.
func retryUnavailable(ctx context.Context, f func() error) error {
	var err error
	for attempt := 1; ; attempt++ {
		if err = f(); err == nil || apperr.CodeOf(err) != apperr.Unavailable || attempt == 5 {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		}
	}
}

// residentResolver finds a resident's wallet for subsidy lists by ID number
// or card number. A card number names its holder even after the card was
// replaced (a list drawn up before the 补换 is still paid to the person);
// either way the person must hold a live card now, or the line is refused
// (the account of a person whose cards are all cancelled is closed).
type residentResolver struct{ n *Node }

func (r residentResolver) Resolve(ctx context.Context, idOrCard string) (string, error) {
	n := r.n
	var residentID string
	if resident.ValidCardNumber(resident.NormalizeCardNumber(idOrCard)) {
		c, err := n.Residents.Card(ctx, idOrCard)
		if err != nil {
			return "", err
		}
		residentID = c.ResidentID
	} else {
		res, err := n.Residents.FindByIDNumber(ctx, idOrCard)
		if err != nil {
			return "", err
		}
		residentID = res.ID
	}
	cards, err := n.Residents.CardsOf(ctx, residentID)
	if err != nil {
		return "", err
	}
	live := false
	for _, c := range cards {
		live = live || c.Live()
	}
	if !live {
		return "", apperr.Newf(apperr.CardNotActive, "the person has no live card (cancelled)", "该人员无有效卡（已注销）")
	}
	w, _, err := n.Ledger.OpenResidentAccounts(ctx, residentID)
	return w, err
}
