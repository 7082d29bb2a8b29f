package node

import (
	"net/http"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/httpapi"
)

// Provider staff accounts, managed by the operator who onboards the
// provider (a bus company's, a hospital's or a school's people who read
// their takings and manage their terminals): created with a generated
// password shown once, listed, and disabled (their sessions end at once).
// The city's own staff (hr_admin, finance, operator) are created on the
// node's host with `yikatong staff`; both paths write the same audit
// entries (create_staff, disable_staff).

type providerStaffRequest struct {
	Username    string `json:"username"`
	DisplayName string `json:"display_name"`
}

type providerStaffCreated struct {
	User auth.StaffUser `json:"user"`
	// Password is shown once, in this answer; only its hash is stored.
	Password string `json:"password"`
}

func (n *Node) providerStaffRoutes() {
	ts := n.scans().Terminals
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/providers/{id}/staff", Summary: "Create a staff user of the provider; the generated password is shown once", Tag: "terminals",
		Roles: operatorOnly, Request: providerStaffRequest{}, Response: providerStaffCreated{}, Status: http.StatusCreated,
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req providerStaffRequest
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			pr, err := ts.Provider(r.Context(), r.PathValue("id"))
			if err != nil {
				return err
			}
			if pr.Disabled {
				return apperr.Newf(apperr.Forbidden, "the provider is disabled: its staff cannot sign in", "该服务商已停用，其工作人员无法登录")
			}
			pw := auth.GeneratePassword()
			u, err := n.Auth.AddStaff(r.Context(), p, req.Username, req.DisplayName, auth.RoleProvider, pw, pr.ID)
			if err != nil {
				return err
			}
			w.Header().Set("Cache-Control", "no-store")
			return httpapi.WriteJSON(w, http.StatusCreated, providerStaffCreated{User: u, Password: pw})
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/providers/{id}/staff", Summary: "The provider's staff users (never passwords)", Tag: "terminals",
		Roles: operatorOnly, Response: []auth.StaffUser{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			pr, err := ts.Provider(r.Context(), r.PathValue("id"))
			if err != nil {
				return err
			}
			all, err := n.Auth.ListStaff(r.Context())
			if err != nil {
				return err
			}
			out := []auth.StaffUser{}
			for _, u := range all {
				if u.ProviderID == pr.ID {
					out = append(out, u)
				}
			}
			return httpapi.WriteJSON(w, http.StatusOK, out)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/providers/{id}/staff/{username}/disable", Summary: "Disable a staff user of the provider: they cannot sign in, and their sessions end at once", Tag: "terminals",
		Roles: operatorOnly, Response: auth.StaffUser{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			u, _, err := n.Auth.StaffByUsername(r.Context(), r.PathValue("username"))
			if apperr.CodeOf(err) == apperr.NotFound || err == nil && u.ProviderID != r.PathValue("id") {
				// The operator manages provider staff here, not the city's.
				return apperr.Newf(apperr.NotFound, "the provider has no staff user of this name", "该服务商没有此用户名的工作人员")
			}
			if err != nil {
				return err
			}
			out, err := n.Auth.DisableStaff(r.Context(), p, u.Username)
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, out)
		},
	})
}
