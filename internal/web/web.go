// Package web is the node's web interface, served by the same binary as the
// API: a phone page for residents (/r/…), a console for the bureau's staff
// (/console/…), a gate simulator anyone can try (/gate) and a landing page
// (/). Chinese first, with an English switch; an elderly-friendly mode
// (适老化: large text, high contrast) one tap away.
//
// Design decisions:
//
//   - Pages are rendered on the server from html/template files embedded
//     with embed.FS, so `go run ./cmd/yikatong serve` serves everything;
//     there is no build step and no third-party JavaScript or CSS. The one
//     script (static/app.js) is ours: the e-code countdown and renewal, the
//     CSV progress bar, confirmation prompts. Every page works without it
//     except the live renewal of the code.
//   - A browser session is an ordinary auth token (the same tokens the API
//     uses) kept in an HttpOnly, SameSite=Strict cookie, plus a row in
//     web_sessions holding the CSRF token and the time of the last request.
//     So revoking a resident's tokens (a card reported lost) ends the web
//     session too, and an idle session (StaffIdle, ResidentIdle) is ended
//     on its next request. Every POST carries the session's CSRF token
//     (form field or X-CSRF-Token header); sign-in forms, which have no
//     session yet, use a double-submit cookie.
//   - The package does not import internal/node (the node imports it).
//     What it needs from the node is passed in Deps: services, and function
//     fields for what lives in the node or in packages wired by it (issuing
//     an e-code, a scan, the terminals). A nil function shows a plain
//     "not available on this node" notice instead of failing.
//   - Errors are *apperr.Error values shown in the person's language, with
//     the HTTP status of the catalogue. Full ID numbers are never shown
//     except to hr_admin on an explicit, audited "reveal" (a POST).
//   - Charts are drawn on the server as SVG (go-chart); exports are CSV and
//     XLSX (excelize). Providers and subsidy programmes are shown by name.
//   - Long uploads (bulk enrolment, subsidy payout lists) run in the
//     background as jobs kept in this process's memory for an hour; the
//     page polls a progress URL. Payout lists are paid by internal/subsidy
//     in chunks (subsidies.go), so the bar moves and every line is still
//     paid at most once however often the list is uploaded.
//   - Cross-city clearing (/console/clearing, clearing.go) reads the
//     node's federation through Deps function fields; a node not in a
//     region leaves them nil and the page says so.
//   - Money actions in the console (funding, refunds) are idempotent by
//     construction: a funding form carries a key made when it was drawn, a
//     refund's ledger key is its dispute id. Every staff action is audited.
package web

import (
	"context"
	"embed"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"time"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/catalog"
	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/subsidy"
	"github.com/yikatong/yikatong/internal/terminal"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Terminal is a terminal as the gate simulator lists it.
type Terminal struct {
	ID       string
	Provider string // provider id
	// ProviderName is the provider's name (shown instead of the id).
	ProviderName string
	Scenario     string
	Name         string
}

// Key names one terminal and scenario in the simulator's list.
func (t Terminal) Key() string { return t.ID + "/" + t.Scenario }

// ScanRequest is one simulated scan.
type ScanRequest struct {
	TerminalID     string
	Scenario       string
	Code           string
	CardNumber     string
	AmountFen      int64
	IdempotencyKey string
}

// ScanResult is the terminal's answer to a scan.
type ScanResult struct {
	Decision   string         `json:"decision"`
	Reason     string         `json:"reason,omitempty"`
	ChargedFen int64          `json:"charged_fen,omitempty"`
	View       map[string]any `json:"view,omitempty"`
	// Message and MessageZh explain a decline in plain words.
	Message   string `json:"message,omitempty"`
	MessageZh string `json:"message_zh,omitempty"`
}

// Deps is what the web interface needs from the node.
type Deps struct {
	DB        *store.DB
	Auth      *auth.Service
	Residents *resident.Service
	Catalog   *catalog.Catalog
	// Ledger may be nil (balances and statements then say "not available").
	Ledger *ledger.Ledger
	City   string
	Log    *slog.Logger
	Now    func() time.Time

	// StaffTTL, ResidentTTL bound a session; StaffIdle, ResidentIdle end
	// it after so long without a request.
	StaffTTL, ResidentTTL   time.Duration
	StaffIdle, ResidentIdle time.Duration

	// ResidentLogin checks a card number and PIN and returns a resident token.
	ResidentLogin func(ctx context.Context, cardNumber, pin string) (string, time.Time, error)
	// Enrol enrols a resident (opening accounts, issuing a card).
	Enrol func(ctx context.Context, p auth.Principal, in resident.EnrolInput, issueCard bool, pin string) (resident.Resident, *resident.Card, error)
	// SetFlags replaces a resident's holder flags, sealing who set them,
	// and audits the change once, exactly as the API's PUT
	// /v1/residents/{id}/flags (the node's SetResidentFlags). Nil: the
	// flags form says "not available".
	SetFlags func(ctx context.Context, p auth.Principal, residentID string, flags []string) (resident.Resident, error)
	// AfterCardChange refreshes what depends on card statuses (deny list).
	AfterCardChange func(ctx context.Context)
	// IssueCode issues a fresh e-code for a card.
	IssueCode func(ctx context.Context, cardNumber string) (code string, expires time.Time, err error)
	// GatePublic reports whether the gate simulator is open to anyone (a
	// demo node: "a gate anyone can try"). Otherwise only operator and
	// provider staff may use it, providers only with their own terminals.
	// Payout scenarios are never offered on a public gate.
	GatePublic func() bool
	// Terminals lists the terminals the gate simulator may use.
	Terminals func(ctx context.Context) ([]Terminal, error)
	// Scan performs a scan as the terminal would.
	Scan func(ctx context.Context, req ScanRequest) (ScanResult, error)
	// ScanCounts aggregates scans since a time by hour, item, scenario,
	// decision and reason (for the dashboard).
	ScanCounts func(ctx context.Context, since time.Time) ([]ScanCount, error)

	// Subsidies runs subsidy programmes and payout lists (nil: the pages
	// say "not available").
	Subsidies *subsidy.Service
	// Providers lists every provider (names for tables and charts).
	Providers func(ctx context.Context) ([]terminal.Provider, error)
	// TerminalsOf lists a provider's terminals ("" = all), disabled ones too.
	TerminalsOf func(ctx context.Context, providerID string) ([]terminal.Terminal, error)
	// CreateProvider onboards a provider (and opens its ledger account).
	CreateProvider func(ctx context.Context, name, kind string, scenarios []string) (terminal.Provider, error)
	// CreateTerminal onboards a terminal; the token and batch key are
	// shown once to the operator and never stored by the web interface.
	CreateTerminal func(ctx context.Context, providerID, name string, scenarios []string) (id, token, batchKey string, err error)
	// DisableTerminal disables a terminal at once.
	DisableTerminal func(ctx context.Context, id string) error
	// DisableProvider disables a provider, its terminals and its staff's
	// sessions at once; EnableProvider lets it back in (its terminals stay
	// disabled until reissued).
	DisableProvider func(ctx context.Context, id string) (terminal.Provider, error)
	EnableProvider  func(ctx context.Context, id string) (terminal.Provider, error)
	// ReissueTerminal gives a terminal a new token and batch key (the old
	// ones stop working; a disabled terminal is enabled again) and returns
	// the sequence number its offline records continue after. Shown once,
	// like CreateTerminal's.
	ReissueTerminal func(ctx context.Context, id string) (token, batchKey string, offlineSeq int64, err error)
	// ProviderStaff lists a provider's staff users (never passwords).
	ProviderStaff func(ctx context.Context, providerID string) ([]auth.StaffUser, error)
	// CreateProviderStaff creates a staff user of a provider with a
	// generated password (audited create_staff); the password is shown
	// once to the operator and never stored or logged by the web
	// interface.
	CreateProviderStaff func(ctx context.Context, p auth.Principal, providerID, username, displayName string) (auth.StaffUser, string, error)
	// DisableProviderStaff disables a staff user of a provider (audited
	// disable_staff); their sessions end at once.
	DisableProviderStaff func(ctx context.Context, p auth.Principal, providerID, username string) (auth.StaffUser, error)

	// ClearingPositions lists, per peer city of the region, what it owes
	// this city and the reverse, and the messages not yet acknowledged.
	// Nil when the node is not in a region (the clearing page says so).
	ClearingPositions func(ctx context.Context) ([]federation.Position, error)
	// ClearingReconcile compares this city's clearing messages created in
	// [from, to) (zero: unbounded) with the peer's own list.
	ClearingReconcile func(ctx context.Context, peer string, from, to time.Time) (federation.Reconciliation, error)
	// ClearingSettle runs the settlement of day (YYYY-MM-DD, UTC) with
	// every peer: a statement per peer, signed here and countersigned by
	// the peer if its figures agree.
	ClearingSettle func(ctx context.Context, day string) ([]federation.SignedStatement, error)
}

// Web is the web interface.
type Web struct {
	d     Deps
	pages map[string]*template.Template
	log   *slog.Logger
	jobs  *jobs
}

// New returns the web interface over d.
func New(d Deps) (*Web, error) {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	if d.StaffTTL == 0 {
		d.StaffTTL = 12 * time.Hour
	}
	if d.ResidentTTL == 0 {
		d.ResidentTTL = 30 * time.Minute
	}
	if d.StaffIdle == 0 {
		d.StaffIdle = 15 * time.Minute
	}
	if d.ResidentIdle == 0 {
		d.ResidentIdle = 10 * time.Minute
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	return &Web{d: d, pages: pages, log: d.Log, jobs: newJobs()}, nil
}

// Mount registers the pages on mux. Paths: /, /lang, /mode, /static/…,
// /r/…, /console/…, /gate. None collides with /v1/, /healthz or /metrics.
func (w *Web) Mount(mux *http.ServeMux) {
	st, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", cacheStatic(http.FileServerFS(st))))
	mux.HandleFunc("GET /{$}", w.page(w.landing))
	mux.HandleFunc("GET /lang", w.setLang)
	mux.HandleFunc("GET /mode", w.setMode)

	w.residentRoutes(mux)
	w.consoleRoutes(mux)
	w.clearingRoutes(mux)
	w.gateRoutes(mux)
	// Anything else under the page prefixes is a plain "not found" page,
	// and so is any other path of the site (/nope, /favicon.ico): "/" is
	// the least specific pattern, so /v1/…, /healthz and /metrics,
	// registered by the node on the same mux, still win.
	notFoundPage := w.page(func(rq *req) error { return notFound() })
	for _, p := range []string{"/r/", "/console/", "/"} {
		mux.HandleFunc(p, notFoundPage)
	}
}

func cacheStatic(h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Cache-Control", "public, max-age=300")
		h.ServeHTTP(rw, r)
	})
}
