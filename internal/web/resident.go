package web

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"

	qrcode "github.com/skip2/go-qrcode"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/resident"
)

func (w *Web) residentRoutes(mux *http.ServeMux) {
	res := func(h handlerFunc) http.HandlerFunc { return w.withSession(auth.KindResident, "/r/login", nil, h) }
	mux.HandleFunc("GET /r/login", w.page(w.residentLoginForm))
	mux.HandleFunc("POST /r/login", w.page(w.residentLogin))
	mux.HandleFunc("GET /r/{$}", res(w.residentHome))
	mux.HandleFunc("GET /r", func(rw http.ResponseWriter, r *http.Request) { http.Redirect(rw, r, "/r/", http.StatusSeeOther) })
	mux.HandleFunc("GET /r/code.json", w.residentCodeJSON)
	mux.HandleFunc("GET /r/statement", res(w.residentStatement))
	mux.HandleFunc("GET /r/lost", res(w.residentLostForm))
	mux.HandleFunc("POST /r/lost", res(w.residentLost))
	// The confirmation has its own address (the session has ended), so
	// its language switch and a reload show it again.
	mux.HandleFunc("GET /r/lost/done", w.page(func(rq *req) error {
		return rq.render(200, "r_lost_done.html", "r.lost.title", nil)
	}))
	mux.HandleFunc("GET /r/pin", res(w.residentPINForm))
	mux.HandleFunc("POST /r/pin", res(w.residentPIN))
	mux.HandleFunc("GET /r/disputes", res(w.residentDisputes))
	mux.HandleFunc("POST /r/disputes", res(w.residentDispute))
	mux.HandleFunc("POST /r/logout", res(func(rq *req) error {
		rq.endSession()
		return redirect("/r/login?m=signedout")
	}))
}

type loginData struct {
	Pre        string
	CardNumber string
	User       string
	Next       string
}

func (w *Web) residentLoginForm(rq *req) error {
	return rq.render(200, "r_login.html", "r.login.title", loginData{Pre: rq.preCSRF(), Next: rq.r.URL.Query().Get("next")})
}

func (w *Web) residentLogin(rq *req) error {
	card := strings.TrimSpace(rq.r.PostFormValue("card_number"))
	pin := rq.r.PostFormValue("pin")
	data := loginData{Pre: rq.preCSRF(), CardNumber: card, Next: rq.r.PostFormValue("next")}
	if err := rq.checkCSRF(); err != nil {
		return rq.renderWithError(err, "r_login.html", "r.login.title", data)
	}
	if card == "" || pin == "" {
		return rq.renderWithError(apperr.Invalid("card_number", "enter your card number and PIN", "请输入卡号和密码"), "r_login.html", "r.login.title", data)
	}
	if w.d.ResidentLogin == nil {
		return unavailable("sign-in")
	}
	tok, _, err := w.d.ResidentLogin(rq.r.Context(), card, pin)
	if err != nil {
		return rq.renderWithError(w.signInNextStep(rq, card, err), "r_login.html", "r.login.title", data)
	}
	p, err := w.d.Auth.Authenticate(rq.r.Context(), tok)
	if err != nil {
		return err
	}
	if err := rq.startSession(tok, p); err != nil {
		return err
	}
	next := safeNext(data.Next)
	if !strings.HasPrefix(next, "/r/") {
		next = "/r/"
	}
	return redirect(next)
}

// signInNextStep turns "the card is lost/replaced/cancelled" into what the
// resident can do about it.
func (w *Web) signInNextStep(rq *req, card string, err error) error {
	if apperr.CodeOf(err) != apperr.CardNotActive {
		return err
	}
	c, cerr := w.d.Residents.Card(rq.r.Context(), card)
	if cerr != nil {
		return err
	}
	e := apperr.As(err)
	switch c.Status {
	case resident.StatusLost:
		e = apperr.Newf(apperr.CardNotActive,
			"This card has been reported lost. If you find it, bring your ID document to a service counter to recover it, or ask for a replacement card.",
			"该卡已挂失。找回后请携带身份证件到服务窗口解挂，或办理补卡。")
	case resident.StatusReplaced:
		e = apperr.Newf(apperr.CardNotActive,
			"This card has been replaced; sign in with the new card's number.",
			"该卡已补换，请使用新卡卡号登录。")
	case resident.StatusCancelled:
		e = apperr.Newf(apperr.CardNotActive,
			"This card has been cancelled. A service counter can issue a new card.",
			"该卡已注销。如需继续使用，请到服务窗口办理新卡。")
	}
	return e
}

// unavailableZh names, in Chinese, what unavailable is told is missing
// (the English name must not show on a Chinese page).
var unavailableZh = map[string]string{
	"e-code":          "电子码",
	"enrolment":       "居民登记",
	"ledger":          "账务",
	"provider staff":  "服务商工作人员管理",
	"scan statistics": "扫码统计",
	"scans":           "扫码受理",
	"sign-in":         "登录",
	"subsidies":       "补贴发放",
	"terminals":       "终端管理",
}

func unavailable(what string) error {
	zh := "本节点暂不提供此功能"
	if n, ok := unavailableZh[what]; ok {
		zh = "本节点暂不提供此功能（" + n + "）"
	}
	return apperr.Newf(apperr.Unavailable, what+" is not available on this node yet", zh)
}

// residentContext is the signed-in resident and card.
type residentContext struct {
	Card     resident.Card
	Resident resident.Resident
}

func (rq *req) resident() (residentContext, error) {
	ctx := rq.r.Context()
	c, err := rq.web.d.Residents.Card(ctx, rq.S.P.Subject)
	if err != nil {
		return residentContext{}, err
	}
	r, err := rq.web.d.Residents.Get(ctx, c.ResidentID)
	if err != nil {
		return residentContext{}, err
	}
	return residentContext{Card: c, Resident: r}, nil
}

type codeView struct {
	Code      string       `json:"code"`
	ExpiresAt string       `json:"expires_at"`
	Seconds   int          `json:"seconds"`
	QR        template.URL `json:"qr"` // a data: URL of our own PNG
	Error     string       `json:"error,omitempty"`
}

func (rq *req) issueCode(cardNumber string) (codeView, error) {
	if rq.web.d.IssueCode == nil {
		return codeView{}, unavailable("e-code")
	}
	code, exp, err := rq.web.d.IssueCode(rq.r.Context(), cardNumber)
	if err != nil {
		return codeView{}, err
	}
	png, err := qrPNG(code)
	if err != nil {
		return codeView{}, apperr.Wrap(apperr.Internal, err)
	}
	secs := int(time.Until(exp).Seconds())
	if d := exp.Sub(rq.web.d.Now()); d > 0 {
		secs = int(d.Seconds())
	}
	return codeView{Code: code, ExpiresAt: exp.UTC().Format(time.RFC3339), Seconds: secs,
		QR: template.URL("data:image/png;base64," + base64.StdEncoding.EncodeToString(png))}, nil
}

// qrPNG draws code as a QR symbol of at least 320 pixels a side, every
// module the same whole number of pixels. go-qrcode fitted to an exact
// size (320) mixes modules of 4 and 5 pixels for an e-code's symbol
// (version 10, 65 modules with the quiet zone), which a reader takes for
// a distorted symbol: about one code in fifty was not read from the
// page's own image.
func qrPNG(code string) ([]byte, error) {
	q, err := qrcode.New(code, qrcode.Medium)
	if err != nil {
		return nil, err
	}
	modules := len(q.Bitmap()) // the symbol with its quiet zone
	return q.PNG(-((320 + modules - 1) / modules))
}

type balances struct {
	Available bool
	Wallet    int64
	Medical   int64
}

func (rq *req) balances(residentID string) balances {
	l := rq.web.d.Ledger
	if l == nil {
		return balances{}
	}
	w, err1 := l.Balance(rq.r.Context(), ledger.WalletID(residentID))
	m, err2 := l.Balance(rq.r.Context(), ledger.MedicalID(residentID))
	if err1 != nil || err2 != nil {
		return balances{}
	}
	return balances{Available: true, Wallet: w.Available, Medical: m.Available}
}

type homeData struct {
	residentContext
	Code     codeView
	CodeErr  string
	Balances balances
}

func (w *Web) residentHome(rq *req) error {
	rc, err := rq.resident()
	if err != nil {
		return err
	}
	d := homeData{residentContext: rc, Balances: rq.balances(rc.Resident.ID)}
	if cv, err := rq.issueCode(rc.Card.Number); err != nil {
		d.CodeErr = rq.ErrText(err)
	} else {
		d.Code = cv
	}
	return rq.render(200, "r_home.html", "r.home.title", d)
}

// residentCodeJSON renews the e-code for the page's script.
func (w *Web) residentCodeJSON(rw http.ResponseWriter, r *http.Request) {
	rq := w.newReq(rw, r)
	rw.Header().Set("Content-Type", "application/json")
	write := func(status int, v codeView) {
		rw.WriteHeader(status)
		json.NewEncoder(rw).Encode(v)
	}
	if err := rq.loadSession(); err != nil || rq.S.P.Kind != auth.KindResident {
		write(401, codeView{Error: rq.T("flash.expired")})
		return
	}
	cv, err := rq.issueCode(rq.S.P.Subject)
	if err != nil {
		write(apperr.As(err).Status, codeView{Error: rq.ErrText(err)})
		return
	}
	write(200, cv)
}

type stmtLine struct {
	ID       string
	At       time.Time
	Kind     string
	Memo     string
	Delta    int64
	Balance  int64
	Account  string
	Disputed string // dispute status, if any
}

type stmtData struct {
	residentContext
	Available bool
	Account   string
	From, To  string
	Dir       string
	Lines     []stmtLine
	More      int // movements in the range beyond the lines shown
}

func parseDay(s, field string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.ParseInLocation("2006-01-02", s, cst)
	if err != nil {
		return time.Time{}, apperr.Invalid(field, "write dates as year-month-day, e.g. 2026-11-01", "日期格式应为 年-月-日，例如 2026-11-01")
	}
	return t, nil
}

// How many movements a statement reads. A page shows the latest
// screenLines of up to screenScan in its range (and their total); an
// export holds up to exportLines. A range with more is refused with a plain
// message, never cut silently: a settlement file that lacks fares is worse
// than none.
const screenLines = 1000

var (
	screenScan  = 20000
	exportLines = 500000
)

// statement returns the movements of accountID in the days [from, to]
// (dir: "" all, "out" debits, "in" credits), newest first, reading them
// page by page; more than max is an error asking for a shorter range.
func (rq *req) statement(accountID, from, to, dir string, max int) ([]stmtLine, error) {
	f, err := parseDay(from, "from")
	if err != nil {
		return nil, err
	}
	t, err := parseDay(to, "to")
	if err != nil {
		return nil, err
	}
	if !t.IsZero() {
		t = t.AddDate(0, 0, 1)
	}
	var out []stmtLine
	for cursor := ""; ; {
		ents, next, err := rq.web.d.Ledger.Statement(rq.r.Context(), accountID, f, t, cursor, 1000)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if (dir == "out" && e.Delta > 0) || (dir == "in" && e.Delta < 0) {
				continue
			}
			if len(out) == max {
				return nil, apperr.Newf(apperr.ValidationFailed,
					fmt.Sprintf("this range holds more than %d movements: choose a shorter range (from, to)", max),
					fmt.Sprintf("该期间的流水超过 %d 条，请缩短起止日期", max))
			}
			memo := memoText(rq.Lang, e.Memo)
			if memo == "" && e.Meta != nil && e.Meta["scenario"] != "" {
				memo = rq.ScenarioName(e.Meta["scenario"]) // its name, not its id
			}
			out = append(out, stmtLine{ID: e.ID, At: e.At, Kind: e.Kind, Memo: memo, Delta: e.Delta, Balance: e.BalanceAfter, Account: accountID})
		}
		if next == "" {
			break
		}
		cursor = next
	}
	slices.Reverse(out)
	return out, nil
}

// shown cuts a page's lines (newest first) to the latest screenLines and
// says how many more the range holds.
func shown(lines []stmtLine) ([]stmtLine, int) {
	if len(lines) <= screenLines {
		return lines, 0
	}
	return lines[:screenLines], len(lines) - screenLines
}

func (w *Web) residentStatement(rq *req) error {
	rc, err := rq.resident()
	if err != nil {
		return err
	}
	q := rq.r.URL.Query()
	d := stmtData{residentContext: rc, Account: q.Get("account"), From: q.Get("from"), To: q.Get("to"), Dir: q.Get("dir")}
	if d.Account != "medical" {
		d.Account = "wallet"
	}
	if w.d.Ledger == nil {
		return rq.render(200, "r_statement.html", "r.statement.title", d)
	}
	d.Available = true
	acct := ledger.WalletID(rc.Resident.ID)
	if d.Account == "medical" {
		acct = ledger.MedicalID(rc.Resident.ID)
	}
	lines, err := rq.statement(acct, d.From, d.To, d.Dir, screenScan)
	if err != nil {
		return rq.renderWithError(err, "r_statement.html", "r.statement.title", d)
	}
	lines, d.More = shown(lines)
	disputed, err := w.disputeStatusByTransfer(rq.r.Context(), rc.Resident.ID)
	if err != nil {
		return err
	}
	for i := range lines {
		lines[i].Disputed = disputed[lines[i].ID]
	}
	d.Lines = lines
	return rq.render(200, "r_statement.html", "r.statement.title", d)
}

func (w *Web) residentLostForm(rq *req) error {
	rc, err := rq.resident()
	if err != nil {
		return err
	}
	return rq.render(200, "r_lost.html", "r.lost.title", rc)
}

func (w *Web) residentLost(rq *req) error {
	ctx := rq.r.Context()
	number := rq.S.P.Subject
	if _, err := w.d.Residents.ReportLost(ctx, number, rq.S.P.String()); err != nil {
		return err
	}
	if w.d.AfterCardChange != nil {
		w.d.AfterCardChange(ctx)
	}
	rq.endSession()
	w.d.Auth.RevokeSubject(ctx, auth.KindResident, number)
	return redirect("/r/lost/done")
}

func (w *Web) residentPINForm(rq *req) error {
	return rq.render(200, "r_pin.html", "r.pin.title", nil)
}

func (w *Web) residentPIN(rq *req) error {
	oldPIN, newPIN, again := rq.r.PostFormValue("old_pin"), rq.r.PostFormValue("new_pin"), rq.r.PostFormValue("new_pin2")
	var err error
	switch {
	case oldPIN == "" || newPIN == "":
		err = apperr.Invalid("new_pin", "enter the current PIN and the new one", "请输入原密码和新密码")
	case newPIN != again:
		err = apperr.Invalid("new_pin2", "the two new PINs are not the same", "两次输入的新密码不一致")
	default:
		err = w.d.Residents.ChangePIN(rq.r.Context(), rq.S.P.Subject, oldPIN, newPIN)
		if err == nil {
			// Whoever else signed in with the old PIN is signed out; this
			// session stays.
			err = w.d.Auth.RevokeSubjectExcept(rq.r.Context(), auth.KindResident, rq.S.P.Subject, rq.S.token)
		}
	}
	if err != nil {
		return rq.renderWithError(err, "r_pin.html", "r.pin.title", nil)
	}
	return redirect("/r/?m=pinchanged")
}
