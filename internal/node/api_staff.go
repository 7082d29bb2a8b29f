package node

import (
	"net/http"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/httpapi"
)

// StaffSessionTTL is how long a staff API token lasts.
const StaffSessionTTL = 12 * time.Hour

// staffLoginRequest is the body of POST /v1/auth/staff. "user" is the
// documented member; "username", the name POST /v1/providers/{id}/staff
// creates a user with, is taken as a synonym.
type staffLoginRequest struct {
	User     string `json:"user" doc:"the staff user name (or send it as username)"`
	Username string `json:"username,omitempty" doc:"a synonym of user; give one of the two (both: the same name)"`
	Password string `json:"password"`
}

// name is the user name the request signs in with: user or username (not
// two different names).
func (req staffLoginRequest) name() (string, error) {
	switch {
	case req.Username == "":
		return req.User, nil
	case req.User == "" || req.User == req.Username:
		return req.Username, nil
	}
	return "", apperr.Invalid("username", `"user" and "username" name different users; give the user name once, as "user"`,
		`"user" 与 "username" 给出的用户名不同；请只给一次用户名（"user"）`)
}

// passwordChange is the body of POST /v1/auth/staff/password.
type passwordChange struct {
	CurrentPassword string `json:"current_password"`
	NewPassword     string `json:"new_password" doc:"at least 8 characters"`
}

type tokenResponse struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	Role      string    `json:"role,omitempty"`
}

func (n *Node) staffRoutes() {
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/auth/staff", Summary: "Staff sign-in with user name and password (5 wrong passwords in a row lock the name for 15 minutes or more)", Tag: "auth",
		Request: staffLoginRequest{}, Response: tokenResponse{},
		Handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
			var req staffLoginRequest
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			user, err := req.name()
			if err != nil {
				return err
			}
			if err := httpapi.Required("user", user, "password", req.Password); err != nil {
				return err
			}
			tok, p, err := n.Auth.LoginStaff(r.Context(), user, req.Password, StaffSessionTTL)
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, tokenResponse{Token: tok, ExpiresAt: p.ExpiresAt, Role: string(p.Role)})
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/auth/staff/password", Summary: "A signed-in staff user changes their own password (the current one is asked; wrong ones count toward the sign-in lock); their other sessions end, this one goes on", Tag: "auth",
		Roles: []auth.Role{auth.RoleHRAdmin, auth.RoleFinance, auth.RoleOperator, auth.RoleProvider}, Request: passwordChange{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req passwordChange
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			if err := httpapi.Required("current_password", req.CurrentPassword, "new_password", req.NewPassword); err != nil {
				return err
			}
			if err := n.Auth.ChangeOwnPassword(r.Context(), p, httpapi.BearerToken(r), req.CurrentPassword, req.NewPassword); err != nil {
				return err
			}
			w.WriteHeader(http.StatusNoContent)
			return nil
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/auth/logout", Summary: "Sign out: the token presented stops working at once (staff and residents)", Tag: "auth",
		Roles: []auth.Role{auth.RoleHRAdmin, auth.RoleFinance, auth.RoleOperator, auth.RoleProvider, auth.RoleResident},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			if err := n.Auth.RevokeToken(r.Context(), httpapi.BearerToken(r)); err != nil {
				return err
			}
			w.WriteHeader(http.StatusNoContent)
			return nil
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/audit", Summary: "The audit log, newest first (?subject=, ?before=, ?limit=)", Tag: "audit",
		Roles: []auth.Role{auth.RoleHRAdmin, auth.RoleFinance}, Response: []auth.AuditEntry{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			q := r.URL.Query()
			before, err := intParam(q.Get("before"), "before")
			if err != nil {
				return err
			}
			limit, err := intParam(q.Get("limit"), "limit")
			if err != nil {
				return err
			}
			log, err := n.Auth.AuditLog(r.Context(), q.Get("subject"), before, int(limit))
			if err != nil {
				return err
			}
			if log == nil {
				log = []auth.AuditEntry{}
			}
			return httpapi.WriteJSON(w, http.StatusOK, log)
		},
	})
}
