package node

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/httpapi"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/terminal"
)

// ScanRequest and ScanResponse are the online scan's body and answer.
type (
	ScanRequest  = scan.Request
	ScanResponse = scan.Response
)

// scanServices are the providers, terminals and scan path of a node.
type scanServices struct {
	Terminals *terminal.Service
	Scans     *scan.Service
	Schemes   *scan.Registry
	TC1       *scan.TC1
	// Debts collects offline "ride first, pay later" debt (api_debts.go).
	Debts *scan.Collector
}

func (n *Node) scans() *scanServices { return n.scan }

// wireScans creates providers, terminals and the scan path and registers
// their routes.
func (n *Node) wireScans(ctx context.Context) error {
	ts := terminal.New(n.DB, n.Auth, func(ctx context.Context, id string) error {
		_, err := n.Catalog.Scenario(ctx, id)
		return err
	}, n.Now)
	reg := scan.NewRegistry()
	reg.Register(scan.SchemeYK1, scan.NewYK1(func(ctx context.Context) (map[string][]ecode.PublicKey, error) {
		// Keys retired within the offline window too: an offline record
		// of a code issued before a rotation is uploaded up to
		// OfflineMaxAge later. Each key still verifies only codes issued
		// before its retirement (ecode checks the code's iat against the
		// key's not_after), and a code is valid for a minute after its iat.
		ks, err := n.Keys.PublicKeysAt(ctx, n.Now().Add(-scan.OfflineMaxAge))
		if err != nil {
			return nil, err
		}
		return map[string][]ecode.PublicKey{n.City: ks}, nil
	}))
	tc1 := scan.NewTC1(n.DB)
	reg.Register(scan.SchemeTC1, tc1)
	svc, err := scan.New(ctx, scan.Deps{DB: n.DB, Vault: n.Vault, Catalog: n.Catalog, Residents: n.Residents, Ledger: n.Ledger,
		Terminals: ts, Registry: reg, City: n.City, Now: n.Now, Log: n.Log})
	if err != nil {
		return fmt.Errorf("starting the scan service: %w", err)
	}
	n.scan = &scanServices{Terminals: ts, Scans: svc, Schemes: reg, TC1: tc1, Debts: scan.NewCollector(svc)}
	n.closers = append(n.closers, func() error { svc.Close(); return nil })
	n.scanRoutes()
	n.providerStaffRoutes()
	n.debtRoutes()
	return nil
}

// CreateProvider onboards a provider allowed to run scenarios and opens its
// ledger account (credited by its charges, debited by its payouts).
func (n *Node) CreateProvider(ctx context.Context, name, kind string, scenarios []string) (terminal.Provider, error) {
	p, err := n.scans().Terminals.CreateProvider(ctx, name, kind, scenarios)
	if err != nil {
		return p, err
	}
	return p, n.openProviderAccount(ctx, p)
}

// openProviderAccount opens provider p's ledger account (idempotent: an
// account already open the same way is no error).
func (n *Node) openProviderAccount(ctx context.Context, p terminal.Provider) error {
	_, err := n.Ledger.CreateAccount(ctx, ledger.Account{ID: ledger.ReceivableID(p.ID), Kind: ledger.KindReceivable, Label: clip(p.Name, ledger.MaxMemoLen)})
	return err
}

// clip cuts s to at most n bytes at a character boundary (a label is a
// reminder; the provider's name itself is kept whole).
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// CreateTerminal onboards a terminal of a provider (scenarios: a subset of
// the provider's; nil = all) and returns its id, bearer token and batch
// signing key (base64url Ed25519 seed). The token and key are shown once.
func (n *Node) CreateTerminal(ctx context.Context, providerID, name string, scenarios []string) (id, token, batchKey string, err error) {
	t, cr, err := n.scans().Terminals.CreateTerminal(ctx, providerID, name, scenarios)
	if err != nil {
		return "", "", "", err
	}
	return t.ID, cr.Token, cr.BatchKey, nil
}

// DisableTerminal disables a terminal at once (tokens revoked, scans and
// batches refused).
func (n *Node) DisableTerminal(ctx context.Context, id string) error {
	_, err := n.scans().Terminals.DisableTerminal(ctx, id)
	return err
}

// ReissueTerminal gives a terminal new credentials (terminal.Reissue): a
// new token and batch key, shown once; the old ones stop working, and a
// disabled terminal is enabled again.
func (n *Node) ReissueTerminal(ctx context.Context, id string) (ReissuedTerminal, error) {
	t, cr, mark, err := n.scans().Terminals.Reissue(ctx, id)
	if err != nil {
		return ReissuedTerminal{}, err
	}
	return ReissuedTerminal{Terminal: t, Credentials: cr, OfflineSeq: mark.Seq}, nil
}

// Scan runs an online scan for the terminal principal.
func (n *Node) Scan(ctx context.Context, p auth.Principal, req ScanRequest) (ScanResponse, error) {
	if err := req.Validate(); err != nil {
		return ScanResponse{}, err
	}
	t, err := n.scans().Terminals.Authorize(ctx, p, req.Scenario)
	if err != nil {
		return ScanResponse{}, err
	}
	return n.scans().Scans.Scan(ctx, t, req)
}

// RegisterTC1Issuer registers a transit company's TC1 code key.
func (n *Node) RegisterTC1Issuer(ctx context.Context, issuer string, k ecode.PublicKey) error {
	return n.scans().TC1.RegisterIssuer(ctx, issuer, k)
}

// BindTC1 binds a TC1 transit account to a resident's card.
func (n *Node) BindTC1(ctx context.Context, issuer, account, cardNumber string) error {
	return n.scans().TC1.Bind(ctx, issuer, account, cardNumber)
}

type providerRequest struct {
	Name      string   `json:"name"`
	Kind      string   `json:"kind" doc:"transit | hospital | pharmacy | library | museum | scenic | school | employer | community | hotel | utility | government | bank | other"`
	Scenarios []string `json:"scenarios"`
}

type terminalRequest struct {
	Name      string   `json:"name"`
	Scenarios []string `json:"scenarios,omitempty" doc:"subset of the provider's scenarios; omitted = all of them"`
}

type terminalCreated struct {
	Terminal    terminal.Terminal    `json:"terminal"`
	Credentials terminal.Credentials `json:"credentials"`
}

// TerminalView is a terminal with its offline mark.
type TerminalView struct {
	terminal.Terminal
	OfflineSeq int64     `json:"offline_seq" doc:"the sequence number of the latest offline record stored from this terminal (0: none)"`
	OfflineAt  time.Time `json:"offline_at,omitzero" doc:"that record's time (left out: none yet)"`
}

// ReissuedTerminal answers a credentials reissue (shown once).
type ReissuedTerminal struct {
	Terminal    terminal.Terminal    `json:"terminal"`
	Credentials terminal.Credentials `json:"credentials"`
	OfflineSeq  int64                `json:"offline_seq" doc:"the sequence number of the latest offline record stored from this terminal (0: none); the device numbers its next offline records after it"`
}

type tc1IssuerRequest struct {
	Issuer string    `json:"issuer"`
	Key    ecode.JWK `json:"key"`
}

type tc1BindingRequest struct {
	Issuer     string `json:"issuer"`
	Account    string `json:"account"`
	CardNumber string `json:"card_number"`
}

// Takings is what a provider's terminals took, by scenario.
type Takings struct {
	ProviderID string           `json:"provider_id"`
	From       time.Time        `json:"from,omitzero" doc:"the ?from bound (inclusive) when one was given; left out: no lower bound"`
	To         time.Time        `json:"to,omitzero" doc:"the ?to bound (exclusive) when one was given; left out: no upper bound"`
	Scenarios  []ScenarioTaking `json:"scenarios"`
	BalanceFen int64            `json:"balance_fen" doc:"the provider's ledger account balance"`
}

// ScenarioTaking is one scenario's line in Takings.
type ScenarioTaking struct {
	Scenario   string `json:"scenario"`
	Accepted   int64  `json:"accepted"`
	Declined   int64  `json:"declined"`
	ChargedFen int64  `json:"charged_fen"`
	DebtFen    int64  `json:"debt_fen"`
}

var operatorOnly = []auth.Role{auth.RoleOperator}
var operatorOrProvider = []auth.Role{auth.RoleOperator, auth.RoleProvider}

// ownProvider lets provider staff see only their own provider.
func ownProvider(p auth.Principal, providerID string) error {
	if p.Role == auth.RoleProvider && p.ProviderID != providerID {
		return apperr.Newf(apperr.Forbidden, "provider staff see only their own provider", "服务商用户只能查看本服务商")
	}
	return nil
}

func (n *Node) scanRoutes() {
	ts := n.scans().Terminals
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/providers", Summary: "Create (onboard) a service provider with the scenarios it may run", Tag: "terminals",
		Roles: operatorOnly, Request: providerRequest{}, Response: terminal.Provider{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req providerRequest
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			out, err := n.CreateProvider(r.Context(), req.Name, req.Kind, req.Scenarios)
			if err != nil {
				return err
			}
			n.auditJSON(r, p, "create_provider", out.ID, out)
			return httpapi.WriteJSON(w, http.StatusCreated, out)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/providers", Summary: "Providers (provider staff: only their own)", Tag: "terminals",
		Roles: operatorOrProvider, Response: []terminal.Provider{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			if p.Role == auth.RoleProvider {
				pr, err := ts.Provider(r.Context(), p.ProviderID)
				if err != nil {
					return err
				}
				return httpapi.WriteJSON(w, http.StatusOK, []terminal.Provider{pr})
			}
			list, err := ts.Providers(r.Context())
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, list)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/providers/{id}/disable", Summary: "Disable a provider and all its terminals at once", Tag: "terminals",
		Roles: operatorOnly, Response: terminal.Provider{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			out, err := ts.DisableProvider(r.Context(), r.PathValue("id"))
			if err != nil {
				return err
			}
			n.Auth.Audit(r.Context(), p, "disable_provider", out.ID, "")
			return httpapi.WriteJSON(w, http.StatusOK, out)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/providers/{id}/enable", Summary: "Let a disabled provider back in: its staff may sign in again and terminals be onboarded; its terminals stay disabled until each gets new credentials (POST /v1/terminals/{id}/credentials)", Tag: "terminals",
		Roles: operatorOnly, Response: terminal.Provider{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			before, err := ts.Provider(r.Context(), r.PathValue("id"))
			if err != nil {
				return err
			}
			out, err := ts.EnableProvider(r.Context(), before.ID)
			if err != nil {
				return err
			}
			if before.Disabled {
				n.Auth.Audit(r.Context(), p, "enable_provider", out.ID, "")
			}
			return httpapi.WriteJSON(w, http.StatusOK, out)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/providers/{id}/terminals", Summary: "Create (onboard) a terminal; its token and batch key are shown once", Tag: "terminals",
		Roles: operatorOnly, Request: terminalRequest{}, Response: terminalCreated{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req terminalRequest
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			t, cr, err := ts.CreateTerminal(r.Context(), r.PathValue("id"), req.Name, req.Scenarios)
			if err != nil {
				return err
			}
			n.auditJSON(r, p, "create_terminal", t.ID, t)
			return httpapi.WriteJSON(w, http.StatusCreated, terminalCreated{Terminal: t, Credentials: cr})
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/providers/{id}/terminals", Summary: "A provider's terminals", Tag: "terminals",
		Roles: operatorOrProvider, Response: []terminal.Terminal{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			id := r.PathValue("id")
			if err := ownProvider(p, id); err != nil {
				return err
			}
			if _, err := ts.Provider(r.Context(), id); err != nil {
				return err
			}
			list, err := ts.Terminals(r.Context(), id)
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, list)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/providers/{id}/takings", Summary: "What a provider's terminals took, by scenario (?from=, ?to=: a date or RFC 3339 time; a bound not given is open and left out of the answer)", Tag: "terminals",
		Roles: operatorOrProvider, Response: Takings{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			id := r.PathValue("id")
			if err := ownProvider(p, id); err != nil {
				return err
			}
			from, err := timeParam(r.URL.Query().Get("from"), "from")
			if err != nil {
				return err
			}
			to, err := timeParam(r.URL.Query().Get("to"), "to")
			if err != nil {
				return err
			}
			out, err := n.ProviderTakings(r.Context(), id, from, to)
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, out)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/terminals/{id}/disable", Summary: "Disable a terminal at once: tokens revoked, scans and batches refused", Tag: "terminals",
		Roles: operatorOrProvider, Response: terminal.Terminal{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			t, err := ts.Terminal(r.Context(), r.PathValue("id"))
			if err != nil {
				return err
			}
			if err := ownProvider(p, t.ProviderID); err != nil {
				return err
			}
			out, err := ts.DisableTerminal(r.Context(), t.ID)
			if err != nil {
				return err
			}
			n.Auth.Audit(r.Context(), p, "disable_terminal", t.ID, "")
			return httpapi.WriteJSON(w, http.StatusOK, out)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/terminals/{id}", Summary: "One terminal, with its offline mark (the operator, its provider's staff, or the terminal itself: a device that lost its state numbers its offline records after offline_seq)", Tag: "terminals",
		Roles: []auth.Role{auth.RoleOperator, auth.RoleProvider, auth.RoleTerminal}, Response: TerminalView{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			id := r.PathValue("id")
			if p.Role == auth.RoleTerminal && p.Subject != id {
				return apperr.Newf(apperr.Forbidden, "a terminal may read only itself", "终端只能查看自身")
			}
			t, err := ts.Terminal(r.Context(), id)
			if err != nil {
				return err
			}
			if err := ownProvider(p, t.ProviderID); err != nil {
				return err
			}
			mark, err := ts.OfflineMark(r.Context(), t.ID)
			if err != nil {
				return err
			}
			out := TerminalView{Terminal: t, OfflineSeq: mark.Seq}
			if mark.Set {
				out.OfflineAt = mark.At
			}
			return httpapi.WriteJSON(w, http.StatusOK, out)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/terminals/{id}/credentials", Summary: "Reissue a terminal's credentials (a replaced device, a lost or leaked token or key): new token and batch key, shown once; the old ones stop working; a disabled terminal comes back into service", Tag: "terminals",
		Roles: operatorOnly, Response: ReissuedTerminal{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			out, err := n.ReissueTerminal(r.Context(), r.PathValue("id"))
			if err != nil {
				return err
			}
			n.Auth.Audit(r.Context(), p, "reissue_terminal", out.Terminal.ID, "offline_seq="+strconv.FormatInt(out.OfflineSeq, 10))
			return httpapi.WriteJSON(w, http.StatusOK, out)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/scans", Summary: "Scan a code or card (accepted or declined; same idempotency key + body = same answer)", Tag: "scans",
		Roles: []auth.Role{auth.RoleTerminal}, Request: ScanRequest{}, Response: ScanResponse{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req ScanRequest
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			out, err := n.Scan(r.Context(), p, req)
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, out)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/code-issuers", Summary: "Register another code scheme's issuer key (TC1 transit codes)", Tag: "scans",
		Roles: operatorOnly, Request: tc1IssuerRequest{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req tc1IssuerRequest
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			k, err := ecode.PublicKeyFromJWK(req.Key)
			if err != nil {
				return apperr.Invalid("key", "the key is not a valid JWK: "+err.Error(), "密钥不是有效的JWK")
			}
			if err := n.RegisterTC1Issuer(r.Context(), req.Issuer, k); err != nil {
				return err
			}
			n.Auth.Audit(r.Context(), p, "register_code_issuer", "TC1:"+req.Issuer, k.KidString())
			w.WriteHeader(http.StatusNoContent)
			return nil
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/code-bindings", Summary: "Bind a TC1 transit account to a resident's card", Tag: "scans",
		Roles: []auth.Role{auth.RoleOperator, auth.RoleHRAdmin}, Request: tc1BindingRequest{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req tc1BindingRequest
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			if err := n.BindTC1(r.Context(), req.Issuer, req.Account, req.CardNumber); err != nil {
				return err
			}
			n.Auth.Audit(r.Context(), p, "bind_code", "TC1:"+req.Issuer+":"+req.Account, "")
			w.WriteHeader(http.StatusNoContent)
			return nil
		},
	})
	n.batchRoutes()
}

// ProviderTakings sums a provider's scans by scenario between from and to
// (zero times: unbounded).
func (n *Node) ProviderTakings(ctx context.Context, providerID string, from, to time.Time) (Takings, error) {
	if _, err := n.scans().Terminals.Provider(ctx, providerID); err != nil {
		return Takings{}, err
	}
	lo, hi := int64(-1<<62), int64(1<<62)
	if !from.IsZero() {
		lo = from.UnixMilli()
	}
	if !to.IsZero() {
		hi = to.UnixMilli()
	}
	rows, err := n.DB.R.QueryContext(ctx, `SELECT scenario,
		SUM(CASE WHEN decision = 'accepted' THEN 1 ELSE 0 END), SUM(CASE WHEN decision = 'declined' THEN 1 ELSE 0 END),
		SUM(CASE WHEN decision = 'accepted' THEN charged_fen ELSE 0 END), SUM(debt_fen)
		FROM scans WHERE provider_id = $1 AND at >= $2 AND at < $3 AND state = 'final' GROUP BY scenario ORDER BY scenario`, providerID, lo, hi)
	if err != nil {
		return Takings{}, apperr.Wrap(apperr.Unavailable, err)
	}
	defer rows.Close()
	out := Takings{ProviderID: providerID, From: from, To: to, Scenarios: []ScenarioTaking{}}
	for rows.Next() {
		var s ScenarioTaking
		if err := rows.Scan(&s.Scenario, &s.Accepted, &s.Declined, &s.ChargedFen, &s.DebtFen); err != nil {
			return Takings{}, apperr.Wrap(apperr.Unavailable, err)
		}
		out.Scenarios = append(out.Scenarios, s)
	}
	if err := rows.Err(); err != nil {
		return Takings{}, apperr.Wrap(apperr.Unavailable, err)
	}
	if a, err := n.Ledger.Balance(ctx, ledger.ReceivableID(providerID)); err == nil {
		out.BalanceFen = a.Balance
	}
	return out, nil
}

// MaxBatchBody caps an offline batch upload (100,000 records of ~400 bytes).
const MaxBatchBody = 64 << 20

// UploadBatch checks and applies a terminal's signed offline batch.
func (n *Node) UploadBatch(ctx context.Context, p auth.Principal, terminalID string, sb terminal.SignedBatch) (scan.BatchReport, error) {
	if p.Subject != terminalID {
		return scan.BatchReport{}, apperr.Newf(apperr.Forbidden, "a terminal uploads only its own batches", "终端只能上传本终端的批次")
	}
	t, err := n.scans().Terminals.Authorize(ctx, p, "")
	if err != nil {
		return scan.BatchReport{}, err
	}
	b, _, err := terminal.OpenBatch(sb, t.BatchPublicKey())
	if err != nil {
		return scan.BatchReport{}, err
	}
	if b.Terminal != t.ID {
		return scan.BatchReport{}, apperr.Newf(apperr.BatchTampered, "the batch names another terminal", "批次所属终端不符")
	}
	return n.scans().Scans.ApplyBatch(ctx, t, b)
}

func (n *Node) batchRoutes() {
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/terminals/{id}/batches", Summary: "Upload a signed batch of offline scans; each record is applied once, with a per-record report", Tag: "scans",
		Roles: []auth.Role{auth.RoleTerminal}, Request: terminal.SignedBatch{}, Response: scan.BatchReport{}, MaxBody: MaxBatchBody,
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var sb terminal.SignedBatch
			if err := httpapi.DecodeJSON(r, &sb); err != nil {
				return err
			}
			rep, err := n.UploadBatch(r.Context(), p, r.PathValue("id"), sb)
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, rep)
		},
	})
}
