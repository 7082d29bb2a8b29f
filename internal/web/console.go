package web

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/resident"
)

var (
	hrOnly        = []auth.Role{auth.RoleHRAdmin}
	moneyRoles    = []auth.Role{auth.RoleFinance, auth.RoleHRAdmin}
	auditRoles    = []auth.Role{auth.RoleHRAdmin, auth.RoleFinance}
	takingsRoles  = []auth.Role{auth.RoleFinance, auth.RoleOperator, auth.RoleProvider}
	dashRoles     = []auth.Role{auth.RoleHRAdmin, auth.RoleFinance, auth.RoleOperator}
	financeOnly   = []auth.Role{auth.RoleFinance}
	operatorOnly  = []auth.Role{auth.RoleOperator}
	terminalRoles = []auth.Role{auth.RoleOperator, auth.RoleProvider}
)

func (w *Web) consoleRoutes(mux *http.ServeMux) {
	staff := func(roles []auth.Role, h handlerFunc) http.HandlerFunc {
		return w.withSession(auth.KindStaff, "/console/login", roles, h)
	}
	mux.HandleFunc("GET /console/login", w.page(w.staffLoginForm))
	mux.HandleFunc("POST /console/login", w.page(w.staffLogin))
	mux.HandleFunc("GET /console", func(rw http.ResponseWriter, r *http.Request) { http.Redirect(rw, r, "/console/", http.StatusSeeOther) })
	mux.HandleFunc("GET /console/{$}", staff(nil, w.consoleHome))
	mux.HandleFunc("POST /console/logout", staff(nil, func(rq *req) error {
		rq.endSession()
		return redirect("/console/login?m=signedout")
	}))
	mux.HandleFunc("GET /console/password", staff(nil, w.consolePasswordForm))
	mux.HandleFunc("POST /console/password", staff(nil, w.consolePassword))
	mux.HandleFunc("GET /console/residents", staff(hrOnly, w.consoleSearch))
	// The search form posts: an ID number in a URL would stay in the
	// browser's history and in the logs of proxies in front of the node.
	mux.HandleFunc("POST /console/residents", staff(hrOnly, w.consoleSearch))
	mux.HandleFunc("GET /console/residents/{id}", staff(hrOnly, w.consoleResident))
	mux.HandleFunc("POST /console/residents/{id}/reveal", staff(hrOnly, w.consoleReveal))
	mux.HandleFunc("POST /console/residents/{id}/flags", staff(hrOnly, w.consoleSetFlags))
	mux.HandleFunc("POST /console/cards/{number}/{op}", staff(hrOnly, w.consoleCardOp))
	mux.HandleFunc("GET /console/enrol", staff(hrOnly, w.consoleEnrolForm))
	mux.HandleFunc("POST /console/enrol", staff(hrOnly, w.consoleEnrol))
	mux.HandleFunc("GET /console/enrol/csv", staff(hrOnly, w.consoleCSVForm))
	mux.HandleFunc("POST /console/enrol/csv", staff(hrOnly, w.consoleCSVUpload))
	mux.HandleFunc("GET /console/enrol/jobs/{id}", staff(hrOnly, w.consoleJob))
	mux.HandleFunc("GET /console/enrol/jobs/{id}/progress", staff(hrOnly, w.consoleJobProgress))
	mux.HandleFunc("GET /console/audit", staff(auditRoles, w.consoleAudit))
	mux.HandleFunc("GET /console/disputes", staff(moneyRoles, w.consoleDisputes))
	// A refund is a ledger reversal: finance only, as in the API.
	mux.HandleFunc("POST /console/disputes/{id}/refund", staff([]auth.Role{auth.RoleFinance}, w.consoleDisputeRefund))
	mux.HandleFunc("POST /console/disputes/{id}/reject", staff(moneyRoles, w.consoleDisputeReject))
	mux.HandleFunc("GET /console/ledger", staff([]auth.Role{auth.RoleFinance}, w.consoleLedger))
	mux.HandleFunc("GET /console/ledger/export", staff([]auth.Role{auth.RoleFinance}, w.consoleLedgerExport))
	mux.HandleFunc("GET /console/takings", staff(takingsRoles, w.consoleTakings))
	mux.HandleFunc("GET /console/takings/export", staff(takingsRoles, w.consoleTakingsExport))
	mux.HandleFunc("GET /console/terminals", staff(terminalRoles, w.consoleTerminals))
	mux.HandleFunc("POST /console/providers", staff(operatorOnly, w.consoleCreateProvider))
	mux.HandleFunc("POST /console/terminals", staff(operatorOnly, w.consoleCreateTerminal))
	mux.HandleFunc("POST /console/terminals/{id}/disable", staff(terminalRoles, w.consoleDisableTerminal))
	mux.HandleFunc("POST /console/terminals/{id}/reissue", staff(operatorOnly, w.consoleReissueTerminal))
	mux.HandleFunc("POST /console/providers/{id}/{op}", staff(operatorOnly, w.consoleProviderState))
	// A provider's staff users: the operator only (as the API's
	// /v1/providers/{id}/staff); a provider's own staff see none of it.
	mux.HandleFunc("GET /console/providers/{id}/staff", staff(operatorOnly, w.consoleProviderStaff))
	mux.HandleFunc("POST /console/providers/{id}/staff", staff(operatorOnly, w.consoleCreateProviderStaff))
	mux.HandleFunc("POST /console/providers/{id}/staff/disable", staff(operatorOnly, w.consoleDisableProviderStaff))
	mux.HandleFunc("GET /console/subsidies", staff(moneyRoles, w.consoleSubsidies))
	mux.HandleFunc("POST /console/subsidies", staff(financeOnly, w.consoleCreateProgramme))
	mux.HandleFunc("POST /console/subsidies/{id}/fund", staff(financeOnly, w.consoleFundProgramme))
	mux.HandleFunc("POST /console/subsidies/payouts", staff(hrOnly, w.consolePayoutUpload))
	mux.HandleFunc("GET /console/subsidies/jobs/{id}", staff(hrOnly, w.consolePayJob))
	mux.HandleFunc("GET /console/subsidies/jobs/{id}/progress", staff(hrOnly, w.consolePayJobProgress))
	mux.HandleFunc("GET /console/scenarios", staff(hrOnly, w.consoleScenarios))
	mux.HandleFunc("GET /console/scenarios/{id}", staff(hrOnly, w.consoleScenario))
	mux.HandleFunc("POST /console/scenarios/{id}", staff(hrOnly, w.consoleScenarioSave))
	mux.HandleFunc("GET /console/dashboard", staff(dashRoles, w.consoleDashboard))
	mux.HandleFunc("GET /console/charts/{name}", staff(dashRoles, w.consoleChart))
}

func (w *Web) staffLoginForm(rq *req) error {
	return rq.render(200, "c_login.html", "c.login.title", loginData{Pre: rq.preCSRF(), Next: rq.r.URL.Query().Get("next")})
}

func (w *Web) staffLogin(rq *req) error {
	user := strings.TrimSpace(rq.r.PostFormValue("user"))
	data := loginData{Pre: rq.preCSRF(), User: user, Next: rq.r.PostFormValue("next")}
	if err := rq.checkCSRF(); err != nil {
		return rq.renderWithError(err, "c_login.html", "c.login.title", data)
	}
	pw := rq.r.PostFormValue("password")
	if user == "" || pw == "" {
		return rq.renderWithError(apperr.Invalid("user", "enter your user name and password", "请输入用户名和密码"), "c_login.html", "c.login.title", data)
	}
	tok, p, err := w.d.Auth.LoginStaff(rq.r.Context(), user, pw, w.d.StaffTTL)
	if err != nil {
		return rq.renderWithError(err, "c_login.html", "c.login.title", data)
	}
	if err := rq.startSession(tok, p); err != nil {
		return err
	}
	w.d.Auth.Audit(rq.r.Context(), p, "console_sign_in", "", "")
	next := safeNext(data.Next)
	if !strings.HasPrefix(next, "/console/") {
		next = "/console/"
	}
	return redirect(next)
}

// Role reports whether the signed-in staff member has one of the roles
// (for templates: {{if .Role "hr_admin" "finance"}}).
func (rq *req) Role(roles ...string) bool {
	if rq.S == nil {
		return false
	}
	for _, r := range roles {
		if string(rq.S.P.Role) == r {
			return true
		}
	}
	return false
}

func (w *Web) consoleHome(rq *req) error {
	return rq.render(200, "c_home.html", "c.home.title", nil)
}

type searchData struct {
	Q       string
	Results []resident.Resident
	Cards   map[string][]resident.Card
}

func (w *Web) consoleSearch(rq *req) error {
	q := rq.r.URL.Query().Get("q") // links made before the form posted
	if rq.r.Method == http.MethodPost {
		q = rq.r.PostFormValue("q")
	}
	q = strings.TrimSpace(q)
	d := searchData{Q: q, Cards: map[string][]resident.Card{}}
	if q == "" {
		return rq.render(200, "c_search.html", "c.search.title", d)
	}
	ctx := rq.r.Context()
	list, err := w.d.Residents.Search(ctx, q, 20)
	if err != nil {
		return rq.renderWithError(err, "c_search.html", "c.search.title", d)
	}
	for _, r := range list {
		r.Name = r.MaskedName()
		d.Results = append(d.Results, r)
		cards, _ := w.d.Residents.CardsOf(ctx, r.ID)
		d.Cards[r.ID] = cards
	}
	if err := w.d.Auth.AuditEach(ctx, rq.S.P, "search_residents", resident.IDs(list), "results="+strconv.Itoa(len(list))+" web"); err != nil {
		// No audit, no personal data.
		return rq.renderWithError(err, "c_search.html", "c.search.title", searchData{Q: q})
	}
	return rq.render(200, "c_search.html", "c.search.title", d)
}

type residentPage struct {
	Resident resident.Resident
	FullID   string
	Cards    []cardWithEvents
	// Flags are every holder flag, on where the resident has it (the
	// form's checkboxes).
	Flags []flagChoice
}

// flagChoice is one holder flag's checkbox.
type flagChoice struct {
	Flag string
	On   bool
}

// flagChoices lists every holder flag, on where have has it.
func flagChoices(have []string) []flagChoice {
	out := make([]flagChoice, 0, len(resident.KnownFlags))
	for _, f := range resident.KnownFlags {
		out = append(out, flagChoice{Flag: f.Flag, On: slices.Contains(have, f.Flag)})
	}
	return out
}

type cardWithEvents struct {
	resident.Card
	Events []resident.CardEvent
}

func (w *Web) residentPageData(ctx context.Context, p auth.Principal, id string, reveal bool) (residentPage, error) {
	r, err := w.d.Residents.Get(ctx, id)
	if err != nil {
		return residentPage{}, err
	}
	action := "read_resident"
	d := residentPage{Resident: r, Flags: flagChoices(r.Flags)}
	if reveal {
		full, err := w.d.Residents.RevealIDNumber(ctx, id)
		if err != nil {
			return residentPage{}, err
		}
		d.FullID = full
		action = "reveal_id_number"
	}
	if err := w.d.Auth.Audit(ctx, p, action, id, "web"); err != nil {
		return residentPage{}, err // no audit, no personal data
	}
	cards, err := w.d.Residents.CardsOf(ctx, id)
	if err != nil {
		return residentPage{}, err
	}
	for _, c := range cards {
		ev, _ := w.d.Residents.CardEvents(ctx, c.Number)
		d.Cards = append(d.Cards, cardWithEvents{Card: c, Events: ev})
	}
	return d, nil
}

func (w *Web) consoleResident(rq *req) error {
	d, err := w.residentPageData(rq.r.Context(), rq.S.P, rq.r.PathValue("id"), false)
	if err != nil {
		return err
	}
	return rq.render(200, "c_resident.html", "c.resident.title", d)
}

// consoleReveal shows the full ID number (a POST: an audited action, never
// a link that a crawler or a prefetch could follow).
func (w *Web) consoleReveal(rq *req) error {
	d, err := w.residentPageData(rq.r.Context(), rq.S.P, rq.r.PathValue("id"), true)
	if err != nil {
		return err
	}
	return rq.render(200, "c_resident.html", "c.resident.title", d)
}

// consoleSetFlags replaces the resident's holder flags with the form's
// checked ones (none checked: none) through Deps.SetFlags, the node's
// SetResidentFlags, as the API does: the setter sealed with the flags, and
// one audit entry "set_flags" with how many, not which (the audit log is
// not sealed; a disability is health data). The scan path's cached copy
// of the resident is dropped by the resident service itself
// (resident.OnChange): the next scan decides with them.
func (w *Web) consoleSetFlags(rq *req) error {
	if w.d.SetFlags == nil {
		return unavailable("holder flags")
	}
	ctx := rq.r.Context()
	id := rq.r.PathValue("id")
	_, err := w.d.SetFlags(ctx, rq.S.P, id, rq.r.PostForm["flag"])
	if err == nil {
		return redirect("/console/residents/" + id + "?m=flags")
	}
	d, derr := w.residentPageData(ctx, rq.S.P, id, false)
	if derr != nil {
		return err
	}
	return rq.renderWithError(err, "c_resident.html", "c.resident.title", d)
}

func (w *Web) consoleCardOp(rq *req) error {
	ctx := rq.r.Context()
	number, op := rq.r.PathValue("number"), rq.r.PathValue("op")
	actor := rq.S.P.String()
	c, err := w.d.Residents.Card(ctx, number)
	if err != nil {
		return err
	}
	switch op {
	case "lost":
		_, err = w.d.Residents.ReportLost(ctx, number, actor)
	case "recover":
		_, err = w.d.Residents.Recover(ctx, number, actor)
	case "replace":
		_, err = w.d.Residents.Replace(ctx, number, actor)
	case "cancel":
		_, err = w.d.Residents.Cancel(ctx, number, actor)
	case "unlock":
		err = w.d.Residents.UnlockPIN(ctx, number, actor)
	case "pin":
		err = w.d.Residents.SetPIN(ctx, number, rq.r.PostFormValue("pin"), actor)
	default:
		return notFound()
	}
	if err == nil {
		w.d.Auth.Audit(ctx, rq.S.P, "card_"+op, number, "web")
		if op == "lost" || op == "replace" || op == "cancel" || op == "pin" {
			// A card that stopped, or a PIN set at the counter (forgotten,
			// or known to someone else): every session signed in with it ends.
			w.d.Auth.RevokeSubject(ctx, auth.KindResident, c.Number)
		}
		if w.d.AfterCardChange != nil {
			w.d.AfterCardChange(ctx)
		}
		return redirect("/console/residents/" + c.ResidentID + "?m=card_" + op)
	}
	d, derr := w.residentPageData(ctx, rq.S.P, c.ResidentID, false)
	if derr != nil {
		return err
	}
	return rq.renderWithError(err, "c_resident.html", "c.resident.title", d)
}

type enrolForm struct {
	Name, IDNumber, Category, PIN string
	IssueCard                     bool
	Flags                         []string
	Done                          *resident.Resident
	Card                          *resident.Card
}

// FlagChoices are the form's holder-flag checkboxes.
func (f enrolForm) FlagChoices() []flagChoice { return flagChoices(f.Flags) }

func (w *Web) consoleEnrolForm(rq *req) error {
	return rq.render(200, "c_enrol.html", "c.enrol.title", enrolForm{IssueCard: true, Category: resident.CategoryLocal})
}

// validateEnrol applies the API's checks to a form or CSV row.
func validateEnrol(name, idNumber, category, pin string) error {
	switch {
	case strings.TrimSpace(name) == "":
		return apperr.Invalid("name", "name is required", "姓名为必填项")
	case strings.TrimSpace(idNumber) == "":
		return apperr.Invalid("id_number", "ID number is required", "证件号码为必填项")
	case strings.TrimSpace(category) == "":
		return apperr.Invalid("category", "category is required", "人员类别为必填项")
	}
	if pin != "" {
		return resident.ValidatePIN(pin)
	}
	return nil
}

func (w *Web) consoleEnrol(rq *req) error {
	f := enrolForm{Name: rq.r.PostFormValue("name"), IDNumber: rq.r.PostFormValue("id_number"), Category: rq.r.PostFormValue("category"),
		PIN: rq.r.PostFormValue("pin"), IssueCard: rq.r.PostFormValue("issue_card") != "", Flags: rq.r.PostForm["flag"]}
	if w.d.Enrol == nil {
		return unavailable("enrolment")
	}
	err := validateEnrol(f.Name, f.IDNumber, f.Category, f.PIN)
	if err == nil {
		var r resident.Resident
		var c *resident.Card
		r, c, err = w.d.Enrol(rq.r.Context(), rq.S.P, resident.EnrolInput{Name: f.Name, IDNumber: f.IDNumber, Category: f.Category, Flags: f.Flags}, f.IssueCard, f.PIN)
		if err == nil {
			return redirect("/console/residents/" + r.ID + "?m=enrolled")
		}
		_ = c
	}
	f.PIN = ""
	return rq.renderWithError(err, "c_enrol.html", "c.enrol.title", f)
}

type auditData struct {
	Subject string
	Entries []auth.AuditEntry
	Next    int64
}

func (w *Web) consoleAudit(rq *req) error {
	q := rq.r.URL.Query()
	before, _ := strconv.ParseInt(q.Get("before"), 10, 64)
	d := auditData{Subject: strings.TrimSpace(q.Get("subject"))}
	log, err := w.d.Auth.AuditLog(rq.r.Context(), d.Subject, before, 100)
	if err != nil {
		return err
	}
	d.Entries = log
	if len(log) == 100 {
		d.Next = log[len(log)-1].ID
	}
	return rq.render(200, "c_audit.html", "c.audit.title", d)
}

type disputesData struct {
	Status   string
	Disputes []Dispute
	// After a refused refund or rejection: the dispute and what was
	// typed for it (note or reason), put back in its form.
	KeepID, KeepNote, KeepReason string
}

func (w *Web) consoleDisputes(rq *req) error {
	st := rq.r.URL.Query().Get("status")
	if st == "" {
		st = DisputeOpen
	}
	if st == "all" {
		st = ""
	}
	ds, err := w.Disputes(rq.r.Context(), "", st)
	if err != nil {
		return err
	}
	if err := w.auditDisputes(rq, ds); err != nil {
		return err // no audit, no personal data
	}
	return rq.render(200, "c_disputes.html", "c.disputes.title", disputesData{Status: rq.r.URL.Query().Get("status"), Disputes: ds})
}

// auditDisputes records, one row per resident, that the staff member is
// shown these disputes (a card number, a charge, the resident's words).
func (w *Web) auditDisputes(rq *req, ds []Dispute) error {
	if len(ds) == 0 {
		return nil
	}
	var ids []string
	seen := map[string]bool{}
	for _, d := range ds {
		if !seen[d.ResidentID] {
			seen[d.ResidentID] = true
			ids = append(ids, d.ResidentID)
		}
	}
	return w.d.Auth.AuditEach(rq.r.Context(), rq.S.P, "read_disputes", ids, "disputes="+strconv.Itoa(len(ds))+" web")
}

func (w *Web) consoleDisputeRefund(rq *req) error {
	if _, err := w.RefundDispute(rq.r.Context(), rq.S.P, rq.r.PathValue("id"), rq.r.PostFormValue("note")); err != nil {
		return w.disputesWithError(rq, err, disputesData{KeepID: rq.r.PathValue("id"), KeepNote: rq.r.PostFormValue("note")})
	}
	return redirect("/console/disputes?m=refunded")
}

func (w *Web) consoleDisputeReject(rq *req) error {
	if _, err := w.RejectDispute(rq.r.Context(), rq.S.P, rq.r.PathValue("id"), rq.r.PostFormValue("reason")); err != nil {
		return w.disputesWithError(rq, err, disputesData{KeepID: rq.r.PathValue("id"), KeepReason: rq.r.PostFormValue("reason")})
	}
	return redirect("/console/disputes?m=rejected")
}

func (w *Web) disputesWithError(rq *req, err error, keep disputesData) error {
	ds, derr := w.Disputes(rq.r.Context(), "", DisputeOpen)
	if derr != nil {
		return err
	}
	if derr := w.auditDisputes(rq, ds); derr != nil {
		return err
	}
	keep.Disputes = ds
	return rq.renderWithError(err, "c_disputes.html", "c.disputes.title", keep)
}
