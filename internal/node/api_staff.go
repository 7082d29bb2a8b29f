package node

import (
	"net/http"
	"time"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/httpapi"
)

// StaffSessionTTL is how long a staff API token lasts.
const StaffSessionTTL = 12 * time.Hour

type staffLoginRequest struct {
	User     string `json:"user"`
	Password string `json:"password"`
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
			if err := httpapi.Required("user", req.User, "password", req.Password); err != nil {
				return err
			}
			tok, p, err := n.Auth.LoginStaff(r.Context(), req.User, req.Password, StaffSessionTTL)
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, tokenResponse{Token: tok, ExpiresAt: p.ExpiresAt, Role: string(p.Role)})
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
