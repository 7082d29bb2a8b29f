package node

import (
	"context"
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

// CreateProviderStaff creates a staff user of the provider providerID
// (role provider) with a generated password, audited create_staff with p
// as the actor; the password is returned once and only its hash is
// stored. A disabled provider gets no new staff (forbidden).
func (n *Node) CreateProviderStaff(ctx context.Context, p auth.Principal, providerID, username, displayName string) (auth.StaffUser, string, error) {
	s := n.scans()
	if s == nil {
		return auth.StaffUser{}, "", apperr.New(apperr.Unavailable)
	}
	pr, err := s.Terminals.Provider(ctx, providerID)
	if err != nil {
		return auth.StaffUser{}, "", err
	}
	if pr.Disabled {
		return auth.StaffUser{}, "", apperr.Newf(apperr.Forbidden, "the provider is disabled: its staff cannot sign in", "该服务商已停用，其工作人员无法登录")
	}
	pw := auth.GeneratePassword()
	u, err := n.Auth.AddStaff(ctx, p, username, displayName, auth.RoleProvider, pw, pr.ID)
	if err != nil {
		return auth.StaffUser{}, "", err
	}
	return u, pw, nil
}

// ProviderStaff lists the staff users of the provider providerID, by user
// name (never a password hash).
func (n *Node) ProviderStaff(ctx context.Context, providerID string) ([]auth.StaffUser, error) {
	s := n.scans()
	if s == nil {
		return nil, apperr.New(apperr.Unavailable)
	}
	pr, err := s.Terminals.Provider(ctx, providerID)
	if err != nil {
		return nil, err
	}
	all, err := n.Auth.ListStaff(ctx)
	if err != nil {
		return nil, err
	}
	out := []auth.StaffUser{}
	for _, u := range all {
		if u.ProviderID == pr.ID {
			out = append(out, u)
		}
	}
	return out, nil
}

// DisableProviderStaff disables the staff user named username of the
// provider providerID (audited disable_staff, p the actor): they cannot
// sign in and their sessions end at once. A user of another provider, or
// one of the city's own staff, is not found here.
func (n *Node) DisableProviderStaff(ctx context.Context, p auth.Principal, providerID, username string) (auth.StaffUser, error) {
	u, _, err := n.Auth.StaffByUsername(ctx, username)
	if apperr.CodeOf(err) == apperr.NotFound || err == nil && (u.ProviderID == "" || u.ProviderID != providerID) {
		// The operator manages provider staff here, not the city's.
		return auth.StaffUser{}, apperr.Newf(apperr.NotFound, "the provider has no staff user of this name", "该服务商没有此用户名的工作人员")
	}
	if err != nil {
		return auth.StaffUser{}, err
	}
	return n.Auth.DisableStaff(ctx, p, u.Username)
}

func (n *Node) providerStaffRoutes() {
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/providers/{id}/staff", Summary: "Create a staff user of the provider; the generated password is shown once", Tag: "terminals",
		Roles: operatorOnly, Request: providerStaffRequest{}, Response: providerStaffCreated{}, Status: http.StatusCreated,
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req providerStaffRequest
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			u, pw, err := n.CreateProviderStaff(r.Context(), p, r.PathValue("id"), req.Username, req.DisplayName)
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
			out, err := n.ProviderStaff(r.Context(), r.PathValue("id"))
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, out)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/providers/{id}/staff/{username}/disable", Summary: "Disable a staff user of the provider: they cannot sign in, and their sessions end at once", Tag: "terminals",
		Roles: operatorOnly, Response: auth.StaffUser{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			out, err := n.DisableProviderStaff(r.Context(), p, r.PathValue("id"), r.PathValue("username"))
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, out)
		},
	})
}
