package web

import (
	"context"
	"slices"
	"strconv"
	"strings"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/catalog"
	"github.com/yikatong/yikatong/internal/terminal"
)

// Providers and terminals in the console. The operator (受委托服务组织)
// onboards providers and their terminals and may disable any terminal; a
// provider's staff see only their own provider's terminals and may disable
// them (a stolen gate must stop at once). A new terminal's bearer token and
// batch signing key are shown once, on the page that answers the POST
// (Cache-Control: no-store), and are neither stored nor logged here.

// providerNames maps provider ids to names ("" when the node has none).
func (w *Web) providerNames(ctx context.Context) map[string]string {
	m := map[string]string{}
	if w.d.Providers == nil {
		return m
	}
	ps, err := w.d.Providers(ctx)
	if err != nil {
		w.log.Warn("listing providers", "err", err)
		return m
	}
	for _, p := range ps {
		m[p.ID] = p.Name
	}
	return m
}

type terminalRow struct {
	terminal.Terminal
	ProviderName string
	// ProviderDisabled: its provider is disabled (the terminal cannot be
	// reissued until the provider is enabled again).
	ProviderDisabled bool
}

// newTerminal is shown once after onboarding or a reissue.
type newTerminal struct {
	ID, Token, BatchKey, Name, Provider string
	// Reissued: new credentials of an existing terminal, whose offline
	// records continue after OfflineSeq.
	Reissued   bool
	OfflineSeq int64
}

type terminalsData struct {
	Providers []terminal.Provider
	Terminals []terminalRow
	Kinds     []string
	Scenarios []catalog.Scenario
	Created   *newTerminal
	// Form values kept after an error.
	Name, Kind, TName, TProvider, TScenarios string
	Picked                                   []string
}

// IsPicked reports whether scenario id was ticked on the form.
func (d terminalsData) IsPicked(id string) bool { return slices.Contains(d.Picked, id) }

func (w *Web) needTerminals() error {
	if w.d.Providers == nil || w.d.TerminalsOf == nil || w.d.CreateProvider == nil || w.d.CreateTerminal == nil || w.d.DisableTerminal == nil {
		return unavailable("terminals")
	}
	return nil
}

func (w *Web) terminalsPage(rq *req, err error, d terminalsData) error {
	ctx := rq.r.Context()
	ps, perr := w.d.Providers(ctx)
	if perr != nil {
		return perr
	}
	own := ""
	if rq.S.P.Role == auth.RoleProvider {
		own = rq.S.P.ProviderID
		var mine []terminal.Provider
		for _, p := range ps {
			if p.ID == own {
				mine = append(mine, p)
			}
		}
		ps = mine
		if own == "" {
			return apperr.Newf(apperr.Forbidden, "your account belongs to no provider", "您的账号未关联服务商")
		}
	}
	names, off := map[string]string{}, map[string]bool{}
	for _, p := range ps {
		names[p.ID], off[p.ID] = p.Name, p.Disabled
	}
	ts, terr := w.d.TerminalsOf(ctx, own)
	if terr != nil {
		return terr
	}
	d.Providers, d.Kinds = ps, terminal.ProviderKinds
	for _, t := range ts {
		d.Terminals = append(d.Terminals, terminalRow{Terminal: t, ProviderName: names[t.ProviderID], ProviderDisabled: off[t.ProviderID]})
	}
	if rq.S.P.Role == auth.RoleOperator {
		if d.Scenarios, perr = w.d.Catalog.Scenarios(ctx, 0); perr != nil {
			return perr
		}
	}
	if err != nil {
		return rq.renderWithError(err, "c_terminals.html", "c.terminals.title", d)
	}
	return rq.render(200, "c_terminals.html", "c.terminals.title", d)
}

func (w *Web) consoleTerminals(rq *req) error {
	if err := w.needTerminals(); err != nil {
		return err
	}
	return w.terminalsPage(rq, nil, terminalsData{})
}

func (w *Web) consoleCreateProvider(rq *req) error {
	if err := w.needTerminals(); err != nil {
		return err
	}
	ctx := rq.r.Context()
	rq.r.ParseForm()
	d := terminalsData{Name: strings.TrimSpace(rq.r.PostFormValue("name")), Kind: rq.r.PostFormValue("kind"), Picked: rq.r.PostForm["scenario"]}
	var err error
	if len(d.Picked) == 0 {
		err = apperr.Invalid("scenarios", "tick at least one scenario the provider runs", "请至少勾选一个服务场景")
	}
	if err == nil {
		var p terminal.Provider
		if p, err = w.d.CreateProvider(ctx, d.Name, d.Kind, d.Picked); err == nil {
			w.d.Auth.Audit(ctx, rq.S.P, "create_provider", p.ID, p.Name)
			return redirect("/console/terminals?m=provider_created")
		}
	}
	return w.terminalsPage(rq, err, d)
}

func (w *Web) consoleCreateTerminal(rq *req) error {
	if err := w.needTerminals(); err != nil {
		return err
	}
	ctx := rq.r.Context()
	d := terminalsData{TName: strings.TrimSpace(rq.r.PostFormValue("name")), TProvider: rq.r.PostFormValue("provider"),
		TScenarios: strings.TrimSpace(rq.r.PostFormValue("scenarios"))}
	var scen []string
	for _, s := range strings.FieldsFunc(d.TScenarios, func(r rune) bool { return r == ',' || r == ' ' || r == '，' }) {
		scen = append(scen, s)
	}
	id, tok, key, err := w.d.CreateTerminal(ctx, d.TProvider, d.TName, scen)
	if err != nil {
		return w.terminalsPage(rq, err, d)
	}
	w.d.Auth.Audit(ctx, rq.S.P, "create_terminal", id, "provider="+d.TProvider)
	return w.terminalsPage(rq, nil, terminalsData{Created: &newTerminal{ID: id, Token: tok, BatchKey: key, Name: d.TName, Provider: d.TProvider}})
}

// consoleProviderState disables (op "disable") or enables ("enable") a
// provider, operator only, audited like the API's (an enable of an
// enabled provider changes nothing and is not audited).
func (w *Web) consoleProviderState(rq *req) error {
	if err := w.needTerminals(); err != nil {
		return err
	}
	if w.d.DisableProvider == nil || w.d.EnableProvider == nil {
		return unavailable("terminals")
	}
	ctx := rq.r.Context()
	id := rq.r.PathValue("id")
	switch rq.r.PathValue("op") {
	case "disable":
		if _, err := w.d.DisableProvider(ctx, id); err != nil {
			return w.terminalsPage(rq, err, terminalsData{})
		}
		w.d.Auth.Audit(ctx, rq.S.P, "disable_provider", id, "web")
		return redirect("/console/terminals?m=provider_disabled")
	case "enable":
		ps, err := w.d.Providers(ctx)
		if err != nil {
			return err
		}
		was := slices.ContainsFunc(ps, func(p terminal.Provider) bool { return p.ID == id && p.Disabled })
		if _, err := w.d.EnableProvider(ctx, id); err != nil {
			return w.terminalsPage(rq, err, terminalsData{})
		}
		if was {
			w.d.Auth.Audit(ctx, rq.S.P, "enable_provider", id, "web")
		}
		return redirect("/console/terminals?m=provider_enabled")
	}
	return apperr.Newf(apperr.NotFound, "no such page", "页面不存在")
}

// consoleReissueTerminal hands a terminal new credentials (operator only,
// like onboarding): a replaced device, or a token or key lost or leaked.
func (w *Web) consoleReissueTerminal(rq *req) error {
	if err := w.needTerminals(); err != nil {
		return err
	}
	if w.d.ReissueTerminal == nil {
		return unavailable("terminals")
	}
	ctx := rq.r.Context()
	id := rq.r.PathValue("id")
	tok, key, seq, err := w.d.ReissueTerminal(ctx, id)
	if err != nil {
		return w.terminalsPage(rq, err, terminalsData{})
	}
	w.d.Auth.Audit(ctx, rq.S.P, "reissue_terminal", id, "offline_seq="+strconv.FormatInt(seq, 10)+" web")
	name := ""
	if ts, err := w.d.TerminalsOf(ctx, ""); err == nil {
		for _, t := range ts {
			if t.ID == id {
				name = t.Name
			}
		}
	}
	return w.terminalsPage(rq, nil, terminalsData{Created: &newTerminal{ID: id, Token: tok, BatchKey: key, Name: name, Reissued: true, OfflineSeq: seq}})
}

func (w *Web) consoleDisableTerminal(rq *req) error {
	if err := w.needTerminals(); err != nil {
		return err
	}
	ctx := rq.r.Context()
	id := rq.r.PathValue("id")
	if rq.S.P.Role == auth.RoleProvider {
		ts, err := w.d.TerminalsOf(ctx, rq.S.P.ProviderID)
		if err != nil {
			return err
		}
		if rq.S.P.ProviderID == "" || !slices.ContainsFunc(ts, func(t terminal.Terminal) bool { return t.ID == id }) {
			return apperr.Newf(apperr.Forbidden, "a provider may disable only its own terminals", "服务商只能停用本单位的终端")
		}
	}
	if err := w.d.DisableTerminal(ctx, id); err != nil {
		return w.terminalsPage(rq, err, terminalsData{})
	}
	w.d.Auth.Audit(ctx, rq.S.P, "disable_terminal", id, "web")
	return redirect("/console/terminals?m=terminal_disabled")
}
