package node

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/httpapi"
	"github.com/yikatong/yikatong/internal/scan"
)

// Offline "ride first, pay later" debt (scan.Collector): collected after
// every wallet top-up (POST /v1/topups) and by a sweep at start; shown to
// the resident (own debts, and owed_fen in GET /v1/me) and to finance and
// operator staff (audited: debts tell where and when someone rode).

// debtsView is GET /v1/residents/{id}/debts.
type debtsView struct {
	ResidentID string      `json:"resident_id"`
	OwedFen    int64       `json:"owed_fen" doc:"outstanding debt: the sum of the debts' owed_fen"`
	Debts      []scan.Debt `json:"debts" doc:"outstanding debts, oldest first; collected oldest first from the next top-ups"`
}

// collectTimeout bounds a collection run after a top-up.
const collectTimeout = 10 * time.Second

func (n *Node) debtRoutes() {
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/residents/{id}/debts", Summary: "A resident's outstanding offline \"ride first, pay later\" debt (residents: their own), collected from the next top-ups", Tag: "ledger",
		Roles: []auth.Role{auth.RoleFinance, auth.RoleOperator, auth.RoleResident}, Response: debtsView{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			id := r.PathValue("id")
			if p.Role == auth.RoleResident {
				c, err := n.Residents.Card(r.Context(), p.Subject)
				if err != nil {
					return err
				}
				if c.ResidentID != id {
					return apperr.Newf(apperr.Forbidden, "residents may read only their own debts", "居民只能查看本人欠款")
				}
			} else {
				if _, err := n.Residents.Get(r.Context(), id); err != nil {
					return err
				}
				if err := n.Auth.Audit(r.Context(), p, "read_debts", id, ""); err != nil {
					return err // no audit, no personal data
				}
			}
			debts, err := n.scans().Debts.Debts(r.Context(), id)
			if err != nil {
				return err
			}
			v := debtsView{ResidentID: id, Debts: debts}
			for _, d := range debts {
				v.OwedFen += d.OwedFen
			}
			return httpapi.WriteJSON(w, http.StatusOK, v)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/debts/collect", Summary: "Collect every resident's outstanding offline debt from wallets that hold money now (also run at start)", Tag: "ledger",
		Roles: financeOnly, Response: scan.Collected{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			res, err := n.scans().Debts.Sweep(r.Context())
			if err != nil {
				return err
			}
			if err := n.Auth.Audit(r.Context(), p, "collect_debts", "", "collected_fen="+itoa(int(res.CollectedFen))); err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, res)
		},
	})
	reg := n.API.Registry()
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "yikatong_debt_collections_total", Help: "Offline ride-first-pay-later debt collections (transfers from wallets)."},
		func() float64 { return float64(n.scans().Debts.Stats().Collections) }))
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "yikatong_debt_collected_fen_total", Help: "Offline ride-first-pay-later debt collected from wallets, in fen."},
		func() float64 { return float64(n.scans().Debts.Stats().CollectedFen) }))
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "yikatong_debt_probes_total", Help: "Top-ups' questions whether the resident has any offline debt."},
		func() float64 { return float64(n.scans().Debts.Stats().Probes) }))
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "yikatong_debt_probe_queries_total", Help: "Database queries that answered those questions (many per query under load)."},
		func() float64 { return float64(n.scans().Debts.Stats().ProbeQueries) }))
}

// collectDebts collects a resident's offline debt after a top-up that
// found the resident may owe some (scan.Collector.Credit). The
// top-up stands whatever happens here: a failure is logged and the debt
// stays owed for the next top-up or the sweep at start.
func (n *Node) collectDebts(ctx context.Context, residentID string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), collectTimeout)
	defer cancel()
	res, err := n.scans().Debts.CollectOwed(ctx, residentID)
	if err != nil {
		n.Log.Warn("collecting offline debt after a top-up", "resident", residentID, "collected_fen", res.CollectedFen, "err", err)
		return
	}
	if res.Collections > 0 {
		n.Log.Info("offline debt collected", "resident", residentID, "collections", res.Collections, "collected_fen", res.CollectedFen, "owed_fen", res.OwedFen)
	}
}

// sweepDebts collects debt whose wallet has money: at start (a top-up
// whose collection a crash cut short) and every few minutes (wallets
// credited otherwise, collections that failed).
func (n *Node) sweepDebts(ctx context.Context) {
	res, err := n.scans().Debts.Sweep(ctx)
	if err != nil && ctx.Err() == nil {
		n.Log.Warn("sweeping offline debt", "collected_fen", res.CollectedFen, "err", err)
		return
	}
	if res.Collections > 0 {
		n.Log.Info("offline debt collected by the sweep", "collections", res.Collections, "collected_fen", res.CollectedFen, "owed_fen", res.OwedFen)
	}
}

// DebtCollector is the node's offline debt collector.
func (n *Node) DebtCollector() *scan.Collector { return n.scans().Debts }
