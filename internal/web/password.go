package web

import "github.com/yikatong/yikatong/internal/apperr"

// consolePasswordForm and consolePassword: a signed-in staff user changes
// their own password (auth.ChangeOwnPassword: the current one asked, wrong
// ones counting toward the sign-in lock, audited); their other sessions
// end, this one goes on.
func (w *Web) consolePasswordForm(rq *req) error {
	return rq.render(200, "c_password.html", "c.pw.title", nil)
}

func (w *Web) consolePassword(rq *req) error {
	cur, next, again := rq.r.PostFormValue("current_password"), rq.r.PostFormValue("new_password"), rq.r.PostFormValue("new_password2")
	var err error
	switch {
	case cur == "" || next == "":
		err = apperr.Invalid("new_password", "enter the current password and the new one", "请输入当前密码和新密码")
	case next != again:
		err = apperr.Invalid("new_password2", "the two new passwords are not the same", "两次输入的新密码不一致")
	default:
		err = w.d.Auth.ChangeOwnPassword(rq.r.Context(), rq.S.P, rq.S.token, cur, next)
	}
	if err != nil {
		return rq.renderWithError(err, "c_password.html", "c.pw.title", nil)
	}
	return redirect("/console/?m=password_changed")
}
