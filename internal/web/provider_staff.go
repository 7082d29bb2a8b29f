package web

import (
	"net/url"
	"strings"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/terminal"
)

// A provider's staff users in the console (operator only, as in the API's
// /v1/providers/{id}/staff): listed, created with a generated password
// and disabled. The password is shown once, on the page that answers the
// POST (Cache-Control: no-store, as every page), and is neither stored
// nor logged here; the node's functions audit create_staff and
// disable_staff.

// newStaff is shown once after creation.
type newStaff struct {
	User     auth.StaffUser
	Password string
}

type providerStaffData struct {
	Provider terminal.Provider
	Staff    []auth.StaffUser
	Created  *newStaff
	// Form values kept after an error.
	Username, DisplayName string
}

func (w *Web) needProviderStaff() error {
	if w.d.Providers == nil || w.d.ProviderStaff == nil || w.d.CreateProviderStaff == nil || w.d.DisableProviderStaff == nil {
		return unavailable("provider staff")
	}
	return nil
}

// staffProvider returns the provider named by the path's {id}.
func (w *Web) staffProvider(rq *req) (terminal.Provider, error) {
	ps, err := w.d.Providers(rq.r.Context())
	if err != nil {
		return terminal.Provider{}, err
	}
	id := rq.r.PathValue("id")
	for _, p := range ps {
		if p.ID == id {
			return p, nil
		}
	}
	return terminal.Provider{}, apperr.Newf(apperr.NotFound, "there is no such provider", "不存在该服务商")
}

func (w *Web) providerStaffPage(rq *req, status int, err error, d providerStaffData) error {
	p, perr := w.staffProvider(rq)
	if perr != nil {
		return perr
	}
	d.Provider = p
	if d.Staff, perr = w.d.ProviderStaff(rq.r.Context(), p.ID); perr != nil {
		return perr
	}
	if err != nil {
		return rq.renderWithError(err, "c_pstaff.html", "c.pstaff.title", d)
	}
	return rq.render(status, "c_pstaff.html", "c.pstaff.title", d)
}

func (w *Web) consoleProviderStaff(rq *req) error {
	if err := w.needProviderStaff(); err != nil {
		return err
	}
	return w.providerStaffPage(rq, 200, nil, providerStaffData{})
}

func (w *Web) consoleCreateProviderStaff(rq *req) error {
	if err := w.needProviderStaff(); err != nil {
		return err
	}
	d := providerStaffData{Username: strings.TrimSpace(rq.r.PostFormValue("username")), DisplayName: strings.TrimSpace(rq.r.PostFormValue("display_name"))}
	p, err := w.staffProvider(rq)
	if err != nil {
		return err
	}
	u, pw, err := w.d.CreateProviderStaff(rq.r.Context(), rq.S.P, p.ID, d.Username, d.DisplayName)
	if err != nil {
		return w.providerStaffPage(rq, 200, err, d)
	}
	return w.providerStaffPage(rq, 200, nil, providerStaffData{Created: &newStaff{User: u, Password: pw}})
}

func (w *Web) consoleDisableProviderStaff(rq *req) error {
	if err := w.needProviderStaff(); err != nil {
		return err
	}
	p, err := w.staffProvider(rq)
	if err != nil {
		return err
	}
	if _, err := w.d.DisableProviderStaff(rq.r.Context(), rq.S.P, p.ID, rq.r.PostFormValue("username")); err != nil {
		return w.providerStaffPage(rq, 200, err, providerStaffData{})
	}
	return redirect("/console/providers/" + url.PathEscape(p.ID) + "/staff?m=staff_disabled")
}
