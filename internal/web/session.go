package web

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
)

// maxFormBytes bounds a signed-in POST (the largest is a payout list).
const maxFormBytes = 16 << 20

const (
	sessionCookie = "yk_session"
	preCookie     = "yk_pre"
)

// session is a signed-in browser.
type session struct {
	P     auth.Principal
	CSRF  string
	token string
}

func randToken(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashToken(t string) string {
	h := sha256.Sum256([]byte(t))
	return hex.EncodeToString(h[:])
}

func (rq *req) secure() bool { return rq.r.TLS != nil }

// startSession stores a new session for token and sets the cookie.
func (rq *req) startSession(token string, p auth.Principal) error {
	now := rq.web.d.Now().UnixMilli()
	csrf := randToken(24)
	_, err := rq.web.d.DB.W.ExecContext(rq.r.Context(), `INSERT INTO web_sessions(token_hash, kind, csrf, last_seen, created_at) VALUES ($1,$2,$3,$4,$4)`,
		hashToken(token), string(p.Kind), csrf, now)
	if err != nil {
		return apperr.Wrap(apperr.Internal, err)
	}
	http.SetCookie(rq.w, &http.Cookie{Name: sessionCookie, Value: token, Path: "/", HttpOnly: true, Secure: rq.secure(), SameSite: http.SameSiteStrictMode, Expires: p.ExpiresAt})
	rq.S = &session{P: p, CSRF: csrf, token: token}
	return nil
}

// endSession revokes the session's token and forgets it.
func (rq *req) endSession() {
	if c, err := rq.r.Cookie(sessionCookie); err == nil && c.Value != "" {
		ctx := rq.r.Context()
		rq.web.d.Auth.RevokeToken(ctx, c.Value)
		rq.web.d.DB.W.ExecContext(ctx, `DELETE FROM web_sessions WHERE token_hash = $1`, hashToken(c.Value))
	}
	http.SetCookie(rq.w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	rq.S = nil
}

var (
	errNoSession = errors.New("no session")
	errExpired   = errors.New("session expired")
)

// loadSession finds the browser's session; errNoSession or errExpired when
// there is none (the caller redirects to sign-in).
func (rq *req) loadSession() error {
	c, err := rq.r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return errNoSession
	}
	ctx := rq.r.Context()
	p, err := rq.web.d.Auth.Authenticate(ctx, c.Value)
	if err != nil {
		if apperr.CodeOf(err) == apperr.Unauthorized {
			rq.endSession()
			return errExpired
		}
		return err
	}
	var csrf string
	var last int64
	h := hashToken(c.Value)
	err = rq.web.d.DB.R.QueryRowContext(ctx, `SELECT csrf, last_seen FROM web_sessions WHERE token_hash = $1`, h).Scan(&csrf, &last)
	if errors.Is(err, sql.ErrNoRows) {
		// A token made for the API, not a browser session.
		rq.endSession()
		return errExpired
	}
	if err != nil {
		return apperr.Wrap(apperr.Internal, err)
	}
	idle := rq.web.d.StaffIdle
	if p.Kind == auth.KindResident {
		idle = rq.web.d.ResidentIdle
	}
	now := rq.web.d.Now()
	if now.Sub(time.UnixMilli(last)) > idle {
		rq.endSession()
		return errExpired
	}
	if now.Sub(time.UnixMilli(last)) > 5*time.Second {
		rq.web.d.DB.W.ExecContext(ctx, `UPDATE web_sessions SET last_seen = $2 WHERE token_hash = $1`, h, now.UnixMilli())
	}
	rq.S = &session{P: p, CSRF: csrf, token: c.Value}
	return nil
}

// checkCSRF verifies the CSRF token of a state-changing request.
func (rq *req) checkCSRF() error {
	if rq.r.Method == http.MethodGet || rq.r.Method == http.MethodHead {
		return nil
	}
	got := rq.r.Header.Get("X-CSRF-Token")
	if got == "" {
		got = rq.r.PostFormValue("csrf")
	}
	want := ""
	if rq.S != nil {
		want = rq.S.CSRF
	} else if c, err := rq.r.Cookie(preCookie); err == nil {
		want = c.Value
	}
	if want == "" || got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
		return apperr.Newf(apperr.Forbidden,
			"the form's security token is missing or out of date; reload the page and try again",
			"表单安全令牌缺失或已过期，请刷新页面后重试")
	}
	return nil
}

// preCSRF returns the double-submit token for a sign-in form, setting the
// cookie when the browser has none.
func (rq *req) preCSRF() string {
	if c, err := rq.r.Cookie(preCookie); err == nil && len(c.Value) >= 20 {
		return c.Value
	}
	t := randToken(24)
	http.SetCookie(rq.w, &http.Cookie{Name: preCookie, Value: t, Path: "/", HttpOnly: true, Secure: rq.secure(), SameSite: http.SameSiteStrictMode})
	return t
}

// withSession requires a session of kind (and one of roles, if any), and
// a CSRF token on POST. loginPath is where a browser without a session goes.
func (w *Web) withSession(kind auth.Kind, loginPath string, roles []auth.Role, h handlerFunc) http.HandlerFunc {
	return w.page(func(rq *req) error {
		if err := rq.loadSession(); err != nil {
			if errors.Is(err, errNoSession) || errors.Is(err, errExpired) {
				m := "signin"
				if errors.Is(err, errExpired) {
					m = "expired"
				}
				next := ""
				if rq.r.Method == http.MethodGet {
					next = "&next=" + url.QueryEscape(rq.r.URL.RequestURI())
				}
				return redirect(loginPath + "?m=" + m + next)
			}
			return err
		}
		if rq.S.P.Kind != kind {
			if kind == auth.KindStaff {
				return apperr.Newf(apperr.Forbidden, "this page is for the bureau's staff only; residents use their own page", "此页面仅限工作人员使用，居民请使用居民页面")
			}
			return apperr.Newf(apperr.Forbidden, "this page is for residents; staff use the console", "此页面供居民使用，工作人员请使用管理台")
		}
		if len(roles) > 0 && !rq.S.P.Has(roles...) {
			return apperr.Newf(apperr.Forbidden, "your role ("+string(rq.S.P.Role)+") may not open this page", "您的角色（"+roleZh(rq.S.P.Role)+"）无权打开此页面")
		}
		if rq.r.Method == http.MethodPost {
			// Bound what a form may send before anything reads it (the
			// CSRF check parses the body, file uploads included).
			rq.r.Body = http.MaxBytesReader(rq.w, rq.r.Body, maxFormBytes)
			var err error
			if strings.HasPrefix(rq.r.Header.Get("Content-Type"), "multipart/form-data") {
				err = rq.r.ParseMultipartForm(1 << 20)
			} else {
				err = rq.r.ParseForm()
			}
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return apperr.Newf(apperr.BodyTooLarge, "the upload is larger than 16 MB; split the file", "上传内容超过 16 MB，请拆分文件")
			}
		}
		if err := rq.checkCSRF(); err != nil {
			return err
		}
		return h(rq)
	})
}

func roleZh(r auth.Role) string {
	switch r {
	case auth.RoleHRAdmin:
		return "人社管理员"
	case auth.RoleFinance:
		return "财政"
	case auth.RoleOperator:
		return "运营方"
	case auth.RoleProvider:
		return "服务商"
	case auth.RoleResident:
		return "居民"
	}
	return string(r)
}
