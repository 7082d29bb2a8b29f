package scan

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ledger"
)

// Collecting "ride first, pay later" debt.
//
// An offline charge the wallet could not cover was accepted as debt
// (bulk.go, debtRecord): the wallet paid what it had, CreditAccount
// advanced the rest to the provider, and the scan row keeps the debt in
// debt_fen. The provider was paid the whole fare at the ride, so the
// resident owes the account that advanced it (the debit account of the
// record's "…:debt1" leg, CreditAccount), not the provider: a collection
// is a transfer wallet → that account, and CreditAccount's balance is
// minus what residents still owe. (A debt row without an advance leg —
// the provider not paid yet — is collected into the provider account the
// charge's plan credited instead.)
//
// The Collector collects a resident's outstanding debt from the wallet,
// oldest scan first, each debt min(what the wallet holds above zero and
// its floor, what is still owed on it); partial collection is fine, the
// rest stays owed. It runs after every wallet top-up whose resident has
// any debt row at all (the node's top-up handler applies the top-up with
// Collector.Credit, which answers that question, debtprobe.go, and then
// calls CollectOwed), and Sweep runs it for every resident
// with outstanding debt (at node start: a crash between a top-up and its
// collection).
//
// Exactly once, under concurrency, retries and crashes:
//
//   - Each collection is one ledger transfer with its row in
//     scan_debt_collections (migration 0044), written in the same
//     group-commit transaction (ledger.AttachMany; collections is the
//     Attacher): a row exists exactly when its money moved, and a crash
//     loses both or neither.
//   - Collections of one debt row are numbered 1, 2, …; the transfer's
//     idempotency key is derived from the row's (terminal, key) and that
//     number. Claim, under the ledger batch's lock (serialising every
//     process's batches), admits collection n only if n-1 is the last one
//     stored (and admitted earlier in the batch) and the row's collections
//     then stay within its debt_fen; anything else is refused and the
//     collector plans again from fresh reads. Two collectors that planned
//     the same collection cannot both apply it, and a plan made from a
//     stale read cannot take more than is owed.
//   - The ledger checks the wallet's floor in the same batch (a wallet
//     drained meanwhile refuses the transfer: nothing is written; the
//     collector plans again).
//   - A ride's cancellation (cancel.go) is the row's last entry in the
//     same numbering: it settles what is still owed, so nothing follows.
//   - Outstanding debt = debt_fen minus the sum of its collections; the
//     credit limit check of new offline debt (rows.go, owedSQL) reads the
//     same, so collected debt makes room for new credit.

// Debt is one accepted offline scan's outstanding debt.
type Debt struct {
	Scan         string    `json:"scan" doc:"<terminal id>:<scan key> of the offline scan that advanced the credit"`
	Scenario     string    `json:"scenario"`
	ProviderID   string    `json:"provider_id"`
	At           time.Time `json:"at" doc:"when the ride (scan) happened"`
	DebtFen      int64     `json:"debt_fen" doc:"credit advanced at the scan"`
	CollectedFen int64     `json:"collected_fen" doc:"collected from later top-ups so far"`
	OwedFen      int64     `json:"owed_fen" doc:"still owed: debt_fen - collected_fen"`
}

// Collected is what one Collect or Sweep did.
type Collected struct {
	Collections  int64 `json:"collections" doc:"transfers made"`
	CollectedFen int64 `json:"collected_fen"`
	// OwedFen is what remained owed after the collection (Collect: the
	// resident's; Sweep: the swept residents' together).
	OwedFen int64 `json:"owed_fen"`
}

// CollectStats are the collector's counters since it started.
type CollectStats struct {
	Collections  int64
	CollectedFen int64
	// Probes counts the top-ups' "any debt?" questions, ProbeQueries the
	// queries that answered them (debtprobe.go).
	Probes, ProbeQueries int64
}

// Collector collects offline debt from wallets (see above).
type Collector struct {
	s                 *Service
	collections, fen  atomic.Int64
	maxRounds, sweepN int
	probe             debtProbe
}

// NewCollector returns the debt collector of s (whose Ledger must be set).
func NewCollector(s *Service) *Collector {
	return &Collector{s: s, maxRounds: 16, sweepN: 4, probe: debtProbe{s: s}}
}

// Stats returns the counters (for metrics).
func (c *Collector) Stats() CollectStats {
	probes, queries := c.probe.stats()
	return CollectStats{Collections: c.collections.Load(), CollectedFen: c.fen.Load(), Probes: probes, ProbeQueries: queries}
}

// KindDebtCollection is the ledger kind (and meta "kind") of a collection.
const KindDebtCollection = "debt_collection"

// debtRow is an outstanding debt as read for planning.
type debtRow struct {
	Debt
	terminal, key string
	plan          string
	seq           int64 // collections stored so far (the last seq)
}

const debtsSQL = `SELECT s.terminal_id, s.idem_key, s.provider_id, s.scenario, s.plan, s.debt_fen, s.at,
	COALESCE(SUM(c.amount_fen), 0), COALESCE(MAX(c.seq), 0)
	FROM scans s LEFT JOIN scan_debt_collections c ON c.terminal_id = s.terminal_id AND c.idem_key = s.idem_key
	WHERE s.resident_id = $1 AND s.debt_fen > 0 AND s.decision = 'accepted'
	GROUP BY s.terminal_id, s.idem_key, s.provider_id, s.scenario, s.plan, s.debt_fen, s.at
	HAVING s.debt_fen > COALESCE(SUM(c.amount_fen), 0)
	ORDER BY s.at, s.terminal_id, s.idem_key`

func (c *Collector) outstanding(ctx context.Context, residentID string) ([]debtRow, error) {
	rows, err := c.s.DB.R.QueryContext(ctx, debtsSQL, residentID)
	if err != nil {
		return nil, apperr.Wrap(apperr.Unavailable, err)
	}
	defer rows.Close()
	var out []debtRow
	for rows.Next() {
		var d debtRow
		var at int64
		if err := rows.Scan(&d.terminal, &d.key, &d.ProviderID, &d.Scenario, &d.plan, &d.DebtFen, &at, &d.CollectedFen, &d.seq); err != nil {
			return nil, apperr.Wrap(apperr.Unavailable, err)
		}
		d.Scan = d.terminal + ":" + d.key
		d.At = time.UnixMilli(at).UTC()
		d.OwedFen = d.DebtFen - d.CollectedFen
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, apperr.Wrap(apperr.Unavailable, err)
	}
	return out, nil
}

// Debts lists a resident's outstanding debts, oldest first.
func (c *Collector) Debts(ctx context.Context, residentID string) ([]Debt, error) {
	rows, err := c.outstanding(ctx, residentID)
	if err != nil {
		return nil, err
	}
	out := make([]Debt, 0, len(rows))
	for _, d := range rows {
		out = append(out, d.Debt)
	}
	return out, nil
}

// Owed is a resident's outstanding debt (the amount the credit limit of
// new offline debt counts).
func (c *Collector) Owed(ctx context.Context, residentID string) (int64, error) {
	var n int64
	if err := c.s.DB.R.QueryRowContext(ctx, owedSQL, residentID).Scan(&n); err != nil {
		return 0, apperr.Wrap(apperr.Unavailable, err)
	}
	return n, nil
}

// creditor is the account a debt is repaid to: whoever advanced it (the
// debit account of the record's credit leg), else the provider account
// the charge's plan credited.
func (c *Collector) creditor(ctx context.Context, d debtRow) (string, error) {
	// The credit leg's key: time-ordered, or as an older version made it.
	for _, legacy := range []bool{false, true} {
		var acct string
		err := c.s.DB.R.QueryRowContext(ctx, `SELECT debit FROM ledger_journal WHERE idem_key = $1`,
			transferKey(d.terminal, d.key, d.At.UnixMilli(), "debt1", legacy)).Scan(&acct)
		switch {
		case err == nil:
			return acct, nil
		case !errors.Is(err, sql.ErrNoRows):
			return "", apperr.Wrap(apperr.Unavailable, err)
		}
	}
	var plan []leg
	if json.Unmarshal([]byte(d.plan), &plan) == nil && len(plan) > 0 && plan[0].Credit != "" {
		return plan[0].Credit, nil
	}
	return ledger.ReceivableID(d.ProviderID), nil
}

// collectionKey is the ledger key of collection seq of the debt row
// (terminal, key) of a scan made at at (Unix ms). (Collections are new
// transfers each: a collection an older version made under its key is
// counted by its row, never made again.)
func collectionKey(terminal, key string, at, seq int64) string {
	return transferKey(terminal, key, at, "collect"+strconv.FormatInt(seq, 10), false)
}

// collectRow is one planned collection (Attachment.Value).
type collectRow struct {
	terminal, key, residentID string
	seq, amount, debt         int64
	creditor                  string
	at                        int64
	written                   bool
	// cancel: the row of a ride's cancellation (cancel.go), not a
	// collection: it settles exactly what is still owed (amount, maybe 0)
	// and its transfers are the cancellation's linked set.
	cancel bool
}

func (w *collectRow) request(d debtRow) ledger.TransferRequest {
	ref := d.Scan
	if len(ref) > ledger.MaxMetaValLen {
		ref = ref[:ledger.MaxMetaValLen]
	}
	return ledger.TransferRequest{
		Key: collectionKey(w.terminal, w.key, d.At.UnixMilli(), w.seq), Debit: ledger.WalletID(w.residentID), Credit: w.creditor, Amount: w.amount,
		Kind: KindDebtCollection,
		Memo: "ride first, pay later: offline fare debt collected from a top-up (先乘后付欠款扣回)",
		Meta: map[string]string{"kind": KindDebtCollection, "scan": ref, "scenario": d.Scenario, "provider": d.ProviderID,
			"seq": strconv.FormatInt(w.seq, 10), "ride_at": d.At.Format(time.RFC3339)},
	}
}

// errCollectionRace: Claim refused a collection planned from a stale read
// (another collection of the row came first); the collector plans again.
var errCollectionRace = errors.New("scan: the debt changed since the collection was planned")

// Collect collects residentID's outstanding debt from the wallet (see
// the file comment). It returns what it collected; an error means part
// may have been collected and the rest is left to the next top-up or
// sweep (nothing is ever collected twice). A collector that loses the
// race for a debt to other collectors plans again, at most maxRounds
// times; what it leaves is collected by the next top-up or sweep.
func (c *Collector) Collect(ctx context.Context, residentID string) (Collected, error) {
	return c.collect(ctx, residentID, true)
}

// collect is Collect; probe first asks the shared probe whether the
// resident has any debt row (a sweep knows they do).
func (c *Collector) collect(ctx context.Context, residentID string, probe bool) (Collected, error) {
	var res Collected
	if probe {
		has, err := c.probe.hasDebt(ctx, residentID)
		if err != nil || !has {
			return res, err
		}
	}
	for round := 0; ; round++ {
		debts, err := c.outstanding(ctx, residentID)
		if err != nil {
			return res, err
		}
		res.OwedFen = 0
		for _, d := range debts {
			res.OwedFen += d.OwedFen
		}
		if len(debts) == 0 || round == c.maxRounds {
			return res, nil
		}
		wa, err := c.s.Ledger.Balance(ctx, ledger.WalletID(residentID))
		if apperr.CodeOf(err) == apperr.UnknownAccount {
			return res, nil
		}
		if err != nil {
			return res, err
		}
		avail := wa.Available - max(wa.Floor, 0)
		if wa.Status != ledger.StatusOpen || avail <= 0 {
			return res, nil
		}
		now := c.s.Now().UnixMilli()
		var reqs []ledger.Attached
		var planned []*collectRow
		for _, d := range debts {
			if avail <= 0 {
				break
			}
			cr, err := c.creditor(ctx, d)
			if err != nil {
				return res, err
			}
			w := &collectRow{terminal: d.terminal, key: d.key, residentID: residentID, seq: d.seq + 1,
				amount: min(avail, d.OwedFen), debt: d.DebtFen, creditor: cr, at: now}
			avail -= w.amount
			reqs = append(reqs, ledger.Attached{Transfers: []ledger.TransferRequest{w.request(d)}, Att: &ledger.Attachment{To: collections, Value: w}})
			planned = append(planned, w)
		}
		outs, errs := c.s.Ledger.AttachMany(ctx, reqs)
		again := false
		var firstErr error
		for i, w := range planned {
			switch {
			case errs[i] != nil:
				if firstErr == nil {
					firstErr = errs[i]
				}
			case outs[i].Refused != nil:
				again = true
			case outs[i].Err != nil:
				// The wallet changed since it was read (a charge, a
				// hold): plan again with its new balance. Anything else
				// (closed account …) ends the collection.
				if apperr.CodeOf(outs[i].Err) == apperr.InsufficientFunds {
					again = true
				} else if firstErr == nil {
					firstErr = outs[i].Err
				}
			case w.written:
				res.Collections++
				res.CollectedFen += w.amount
				res.OwedFen -= w.amount
				if len(outs[i].Transfers) == 1 && !outs[i].Transfers[0].Replayed {
					c.collections.Add(1)
					c.fen.Add(w.amount)
				}
			}
		}
		if firstErr != nil {
			return res, firstErr
		}
		if !again {
			return res, nil
		}
		// Another collection came first: back off a little (collectors
		// that read the same state would otherwise collide again).
		select {
		case <-ctx.Done():
			return res, apperr.Wrap(apperr.Unavailable, ctx.Err())
		case <-time.After(time.Duration(rand.IntN(500*(round+1))) * time.Microsecond):
		}
	}
}

// debtorsSQL lists the residents with outstanding debt (index scans_debt).
const debtorsSQL = `SELECT s.resident_id FROM scans s WHERE s.debt_fen > 0 AND s.decision = 'accepted'
	GROUP BY s.resident_id
	HAVING SUM(s.debt_fen) > (SELECT COALESCE(SUM(c.amount_fen), 0) FROM scan_debt_collections c WHERE c.resident_id = s.resident_id)`

// Sweep collects the outstanding debt of every resident who owes any and
// whose wallet holds money (the node runs it at start: a top-up whose
// collection a crash cut short is collected then). Safe to run while
// top-ups collect, and in several processes at once.
func (c *Collector) Sweep(ctx context.Context) (Collected, error) {
	rows, err := c.s.DB.R.QueryContext(ctx, debtorsSQL)
	if err != nil {
		return Collected{}, apperr.Wrap(apperr.Unavailable, err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return Collected{}, apperr.Wrap(apperr.Unavailable, err)
		}
		ids = append(ids, id)
	}
	if err := rows.Close(); err != nil {
		return Collected{}, apperr.Wrap(apperr.Unavailable, err)
	}
	if err := rows.Err(); err != nil {
		return Collected{}, apperr.Wrap(apperr.Unavailable, err)
	}
	var (
		mu       sync.Mutex
		total    Collected
		firstErr error
		wg       sync.WaitGroup
	)
	work := make(chan string)
	for w := 0; w < min(c.sweepN, len(ids)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				r, err := c.collect(ctx, id, false)
				mu.Lock()
				total.Collections += r.Collections
				total.CollectedFen += r.CollectedFen
				total.OwedFen += r.OwedFen
				if err != nil && firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
	}
feed:
	for _, id := range ids {
		select {
		case work <- id:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = apperr.Wrap(apperr.Unavailable, ctx.Err())
	}
	return total, firstErr
}

// collectAttacher is scan_debt_collections' ledger.Attacher. It holds no
// state, and there is one (collections), so every collection of a ledger
// batch is claimed together.
type collectAttacher struct{}

var collections ledger.Attacher = collectAttacher{}

type rowRef struct{ terminal, key string }

type collectedSoFar struct{ sum, seq int64 }

// Claim implements ledger.Attacher: collection n of a row is admitted only
// if n-1 is its last collection (stored, or admitted earlier in the
// batch) and its collections stay within its debt. A ride's cancellation
// (cancel.go) is a row of the same numbering, admitted only if it was
// planned from the row's last collection and settles exactly what is
// still owed; after it the row owes nothing, so no collection follows.
func (collectAttacher) Claim(ctx context.Context, tx *sql.Tx, atts []*ledger.Attachment) error {
	st := map[rowRef]*collectedSoFar{}
	loaded := map[string]bool{}
	for _, a := range atts {
		w := a.Value.(*collectRow)
		w.written = false
		if loaded[w.residentID] {
			continue
		}
		loaded[w.residentID] = true
		rows, err := tx.QueryContext(ctx, `SELECT terminal_id, idem_key, COALESCE(SUM(amount_fen), 0), COALESCE(MAX(seq), 0)
			FROM scan_debt_collections WHERE resident_id = $1 GROUP BY terminal_id, idem_key`, w.residentID)
		if err != nil {
			return err
		}
		for rows.Next() {
			var k rowRef
			var s collectedSoFar
			if err := rows.Scan(&k.terminal, &k.key, &s.sum, &s.seq); err != nil {
				rows.Close()
				return err
			}
			st[k] = &s
		}
		if err := rows.Close(); err != nil {
			return err
		}
		if err := rows.Err(); err != nil {
			return err
		}
	}
	for _, a := range atts {
		w := a.Value.(*collectRow)
		k := rowRef{w.terminal, w.key}
		cur := st[k]
		if cur == nil {
			cur = &collectedSoFar{}
			st[k] = cur
		}
		switch {
		case w.seq != cur.seq+1,
			!w.cancel && (w.amount <= 0 || cur.sum+w.amount > w.debt),
			w.cancel && (w.amount < 0 || cur.sum+w.amount != w.debt):
			a.Refused = errCollectionRace
			continue
		}
		// Counted even if the ledger then refuses the transfer: a later
		// collection of the row in this batch is refused and planned
		// again, never the other way round.
		cur.seq, cur.sum = w.seq, cur.sum+w.amount
	}
	return nil
}

// Write implements ledger.Attacher: the row of each applied collection.
func (collectAttacher) Write(ctx context.Context, tx *sql.Tx, atts []*ledger.Attachment) error {
	for _, a := range atts {
		w := a.Value.(*collectRow)
		w.written = false
		if a.Err != nil || len(a.Transfers) == 0 || (!w.cancel && len(a.Transfers) != 1) {
			continue
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO scan_debt_collections(terminal_id, idem_key, seq, resident_id, amount_fen, credit_account, transfer_id, at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, w.terminal, w.key, w.seq, w.residentID, w.amount, w.creditor, a.Transfers[0].ID, w.at); err != nil {
			return err
		}
		w.written = true
	}
	return nil
}
