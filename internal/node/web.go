package node

import (
	"context"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/web"
)

// wireWeb builds the web interface (internal/web) over the node's services
// and mounts its pages on the API's mux (/, /r/…, /console/…, /gate,
// /static/…; none collides with /v1/, /healthz or /metrics).
func (n *Node) wireWeb(ctx context.Context) error {
	d := web.Deps{
		DB: n.DB, Auth: n.Auth, Residents: n.Residents, Catalog: n.Catalog, Ledger: n.Ledger,
		City: n.City, Log: n.Log, Now: n.Now,
		StaffTTL: StaffSessionTTL, ResidentTTL: ResidentSessionTTL,
		ResidentLogin:   n.ResidentLogin,
		Enrol:           n.Enrol,
		SetFlags:        n.SetResidentFlags,
		AfterCardChange: n.afterCardChange,
		IssueCode:       n.IssueCode,
		GatePublic:      n.DemoMode.Load,
		Terminals:       n.webTerminals,
		Scan:            n.webScan,
		ScanCounts:      n.webScanCounts,
		Subsidies:       n.Subsidies,
	}
	if s := n.scans(); s != nil {
		d.Providers = s.Terminals.Providers
		d.TerminalsOf = s.Terminals.Terminals
		d.CreateProvider = n.CreateProvider
		d.CreateTerminal = n.CreateTerminal
		d.DisableTerminal = n.DisableTerminal
		d.DisableProvider = s.Terminals.DisableProvider
		d.EnableProvider = s.Terminals.EnableProvider
		d.ReissueTerminal = func(ctx context.Context, id string) (string, string, int64, error) {
			out, err := n.ReissueTerminal(ctx, id)
			return out.Credentials.Token, out.Credentials.BatchKey, out.OfflineSeq, err
		}
		d.ProviderStaff = n.ProviderStaff
		d.CreateProviderStaff = n.CreateProviderStaff
		d.DisableProviderStaff = n.DisableProviderStaff
	}
	// The clearing page: only for a node in a region (otherwise the page
	// says it is not in one).
	if n.Fed != nil && n.Fed.Config().Enabled() {
		d.ClearingPositions = n.Fed.Positions
		d.ClearingReconcile = n.Fed.Reconcile
		d.ClearingSettle = n.Fed.Settle
	}
	w, err := web.New(d)
	if err != nil {
		return err
	}
	w.Mount(n.API.Mux())
	return nil
}

// webTerminals lists every enabled terminal once per scenario it runs.
func (n *Node) webTerminals(ctx context.Context) ([]web.Terminal, error) {
	s := n.scans()
	if s == nil {
		return nil, nil
	}
	ts, err := s.Terminals.Terminals(ctx, "")
	if err != nil {
		return nil, err
	}
	ps, err := s.Terminals.Providers(ctx)
	if err != nil {
		return nil, err
	}
	names := map[string]string{}
	for _, p := range ps {
		names[p.ID] = p.Name
	}
	var out []web.Terminal
	for _, t := range ts {
		if t.Disabled {
			continue
		}
		for _, sc := range t.Scenarios {
			out = append(out, web.Terminal{ID: t.ID, Provider: t.ProviderID, ProviderName: names[t.ProviderID], Scenario: sc, Name: t.Name})
		}
	}
	return out, nil
}

// webScan runs a scan exactly as the terminal's own POST /v1/scans would.
func (n *Node) webScan(ctx context.Context, r web.ScanRequest) (web.ScanResult, error) {
	s := n.scans()
	if s == nil {
		return web.ScanResult{}, apperr.New(apperr.Unavailable)
	}
	t, err := s.Terminals.Terminal(ctx, r.TerminalID)
	if err != nil {
		return web.ScanResult{}, err
	}
	p := auth.Principal{Kind: auth.KindTerminal, Subject: t.ID, Role: auth.RoleTerminal, ProviderID: t.ProviderID}
	resp, err := n.Scan(ctx, p, scan.Request{IdempotencyKey: r.IdempotencyKey, Scenario: r.Scenario, Code: r.Code, CardNumber: r.CardNumber, AmountFen: r.AmountFen})
	if err != nil {
		return web.ScanResult{}, err
	}
	out := web.ScanResult{Decision: resp.Decision, Reason: string(resp.Reason), View: resp.View}
	if resp.ChargedFen != nil {
		out.ChargedFen = *resp.ChargedFen
	}
	if resp.Reason != "" {
		out.Message, out.MessageZh = apperr.New(resp.Reason).Text()
	}
	return out, nil
}

// webScanCounts aggregates the scans table by hour for the dashboard.
func (n *Node) webScanCounts(ctx context.Context, since time.Time) ([]web.ScanCount, error) {
	// provider_id IN (all providers) lets the query walk the index
	// scans_provider_at from since on, instead of the whole scans table.
	rows, err := n.DB.R.QueryContext(ctx, `SELECT at / 3600000, scenario, decision, reason, COUNT(*) FROM scans
		WHERE provider_id IN (SELECT id FROM providers) AND at >= $1 GROUP BY at / 3600000, scenario, decision, reason`, since.UnixMilli())
	if err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	defer rows.Close()
	var out []web.ScanCount
	for rows.Next() {
		var h int64
		var c web.ScanCount
		if err := rows.Scan(&h, &c.Scenario, &c.Decision, &c.Reason, &c.N); err != nil {
			return nil, apperr.Wrap(apperr.Internal, err)
		}
		c.Hour = time.UnixMilli(h * 3600000).UTC()
		if sc, err := n.Catalog.Scenario(ctx, c.Scenario); err == nil {
			c.Item = sc.Item
		}
		out = append(out, c)
	}
	return out, rows.Err()
}
