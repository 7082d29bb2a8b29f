package web

import (
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
)

// req is one page request.
type req struct {
	w    http.ResponseWriter
	r    *http.Request
	web  *Web
	Lang string
	Big  bool
	S    *session
	// scn caches the catalogue's scenario names for this request.
	scn map[string][2]string
}

// handlerFunc handles a page; an error is shown as an error page.
type handlerFunc func(rq *req) error

// page wraps a handler: language, mode, error pages.
func (w *Web) page(h handlerFunc) http.HandlerFunc {
	return func(rw http.ResponseWriter, r *http.Request) {
		rq := w.newReq(rw, r)
		if err := h(rq); err != nil {
			rq.fail(err)
		}
	}
}

func (w *Web) newReq(rw http.ResponseWriter, r *http.Request) *req {
	rq := &req{w: rw, r: r, web: w, Lang: "zh"}
	if c, err := r.Cookie("lang"); err == nil && c.Value == "en" {
		rq.Lang = "en"
	}
	if c, err := r.Cookie("mode"); err == nil && c.Value == "big" {
		rq.Big = true
	}
	rw.Header().Set("X-Content-Type-Options", "nosniff")
	rw.Header().Set("X-Frame-Options", "DENY")
	rw.Header().Set("Referrer-Policy", "same-origin")
	rw.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'")
	rw.Header().Set("Cache-Control", "no-store")
	return rq
}

// T translates a message key into the request's language.
func (rq *req) T(key string) string { return tr(rq.Lang, key) }

// Msg picks the English or Chinese text.
func (rq *req) Msg(en, zh string) string {
	if rq.Lang == "en" {
		return en
	}
	return zh
}

// ErrText is the person's-language text of err.
func (rq *req) ErrText(err error) string {
	en, zh := apperr.As(err).Text()
	return rq.Msg(en, zh)
}

// view is what every template gets.
type view struct {
	*req
	Title string
	CSRF  string
	Path  string
	Flash string
	Error string
	Data  any
}

func (rq *req) render(status int, name, title string, data any) error {
	t, ok := rq.web.pages[name]
	if !ok {
		return fmt.Errorf("no template %s", name)
	}
	v := view{req: rq, Title: rq.T(title), Path: rq.pagePath(), Data: data}
	if rq.S != nil {
		v.CSRF = rq.S.CSRF
	}
	if f := rq.r.URL.Query().Get("m"); f != "" {
		if _, known := messages["flash."+f]; known { // an unknown message key shows nothing
			v.Flash = rq.T("flash." + f)
		}
	}
	rq.w.Header().Set("Content-Type", "text/html; charset=utf-8")
	rq.w.WriteHeader(status)
	return t.ExecuteTemplate(rq.w, "layout", v)
}

// pagePath is where the language and display switches come back to: the
// page itself for a GET; for the answer to a form (a POST-only path,
// which a GET would not find), the page the form was on (the Referer:
// same-origin by this site's Referrer-Policy), else the console's or the
// resident's home.
func (rq *req) pagePath() string {
	r := rq.r
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return r.URL.RequestURI()
	}
	if ref, err := url.Parse(r.Referer()); err == nil && ref.Host == r.Host && ref.Path != "" {
		if p := safeNext(ref.RequestURI()); p != "/" || ref.Path == "/" {
			return p
		}
	}
	switch {
	case strings.HasPrefix(r.URL.Path, "/console/"):
		return "/console/"
	case strings.HasPrefix(r.URL.Path, "/r/"):
		return "/r/"
	}
	return "/"
}

// renderErr renders a page with an error message above it.
func (rq *req) renderWithError(err error, name, title string, data any) error {
	e := apperr.As(err)
	if e.Code == apperr.Internal {
		rq.web.log.Error("web page error", "path", rq.r.URL.Path, "err", err)
	}
	t := rq.web.pages[name]
	v := view{req: rq, Title: rq.T(title), Path: rq.pagePath(), Data: data, Error: rq.ErrText(e)}
	if rq.S != nil {
		v.CSRF = rq.S.CSRF
	}
	rq.w.Header().Set("Content-Type", "text/html; charset=utf-8")
	rq.w.WriteHeader(e.Status)
	return t.ExecuteTemplate(rq.w, "layout", v)
}

// fail shows err as an error page (or redirects to sign-in).
func (rq *req) fail(err error) {
	var rd redirectErr
	if errors.As(err, &rd) {
		http.Redirect(rq.w, rq.r, rd.to, http.StatusSeeOther)
		return
	}
	e := apperr.As(err)
	if e.Code == apperr.Internal {
		rq.web.log.Error("web page error", "path", rq.r.URL.Path, "err", err)
	}
	status := e.Status
	if status == 0 {
		status = 500
	}
	if err := rq.render(status, "error.html", "error.title", map[string]any{"Code": string(e.Code), "Text": rq.ErrText(e)}); err != nil {
		rq.web.log.Error("rendering error page", "err", err)
	}
}

// redirectErr makes a handler redirect.
type redirectErr struct{ to string }

func (r redirectErr) Error() string { return "redirect to " + r.to }

func redirect(to string) error { return redirectErr{to} }

func notFound() error {
	return apperr.Newf(apperr.NotFound, "there is no such page", "页面不存在")
}

func (w *Web) landing(rq *req) error {
	return rq.render(200, "landing.html", "landing.title", nil)
}

// setLang switches the language (cookie) and returns to next.
func (w *Web) setLang(rw http.ResponseWriter, r *http.Request) {
	l := "zh"
	if r.URL.Query().Get("l") == "en" {
		l = "en"
	}
	http.SetCookie(rw, &http.Cookie{Name: "lang", Value: l, Path: "/", MaxAge: 365 * 86400, SameSite: http.SameSiteLaxMode, HttpOnly: true})
	http.Redirect(rw, r, safeNext(r.URL.Query().Get("next")), http.StatusSeeOther)
}

// setMode switches the elderly-friendly mode on or off.
func (w *Web) setMode(rw http.ResponseWriter, r *http.Request) {
	v, age := "big", 365*86400
	if r.URL.Query().Get("big") != "1" {
		v, age = "", -1
	}
	http.SetCookie(rw, &http.Cookie{Name: "mode", Value: v, Path: "/", MaxAge: age, SameSite: http.SameSiteLaxMode, HttpOnly: true})
	http.Redirect(rw, r, safeNext(r.URL.Query().Get("next")), http.StatusSeeOther)
}

// safeNext keeps redirects on this site.
func safeNext(next string) string {
	if next == "" || !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return "/"
	}
	u, err := url.Parse(next)
	if err != nil || u.Host != "" || u.Scheme != "" {
		return "/"
	}
	return next
}

// yuan formats fen as yuan: 1234 → "12.34", -5 → "-0.05".
func yuan(fen int64) string {
	sign := ""
	if fen < 0 {
		sign, fen = "-", -fen
	}
	return fmt.Sprintf("%s%d.%02d", sign, fen/100, fen%100)
}

var cst = time.FixedZone("CST", 8*3600)

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.In(cst).Format("2006-01-02 15:04:05")
}

func parsePages() (map[string]*template.Template, error) {
	funcs := template.FuncMap{
		"yuan":      yuan,
		"yuanc":     yuanGrouped,
		"money":     money,
		"signed":    signedMoney,
		"hasPrefix": strings.HasPrefix,
		"time":      fmtTime,
		"query":     url.QueryEscape,
		"add":       func(a, b int) int { return a + b },
		"pct": func(a, b int) int {
			if b == 0 {
				return 0
			}
			return a * 100 / b
		},
	}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		base := path.Base(n)
		if base == "layout.html" {
			continue
		}
		t, err := template.New(base).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("parsing %s: %w", n, err)
		}
		pages[base] = t
	}
	return pages, nil
}
