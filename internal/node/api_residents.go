package node

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/httpapi"
	"github.com/yikatong/yikatong/internal/resident"
)

// ResidentSessionTTL is how long a resident's sign-in lasts.
const ResidentSessionTTL = 30 * time.Minute

type enrolRequest struct {
	Name     string `json:"name"`
	IDNumber string `json:"id_number"`
	Category string `json:"category" doc:"local | insured_nonlocal | permanent_resident"`
	// IssueCard issues a card at once (default true when omitted).
	IssueCard *bool    `json:"issue_card,omitempty"`
	PIN       string   `json:"pin,omitempty" doc:"6 digits; may be set later at a counter"`
	Flags     []string `json:"flags,omitempty" doc:"holder flags: student, teacher, disabled, veteran (may be set later: PUT /v1/residents/{id}/flags)"`
}

// flagsRequest replaces a resident's holder flags.
type flagsRequest struct {
	Flags *[]string `json:"flags" doc:"the resident's holder flags, all of them ([] for none): student, teacher, disabled, veteran"`
}

// residentView is what staff see of a resident. The full ID number appears
// only when hr_admin asks for it with ?reveal=id_number (audited), and so
// does the birth date: the masked number hides only two region digits
// besides it (and the check digit narrows those), so the two together
// would be the full number.
type residentView struct {
	ID             string          `json:"id"`
	Name           string          `json:"name"`
	IDNumberMasked string          `json:"id_number_masked"`
	IDNumber       string          `json:"id_number,omitempty"`
	IDKind         string          `json:"id_kind"`
	Category       string          `json:"category"`
	Sex            string          `json:"sex"`
	BirthYear      int             `json:"birth_year"`
	BirthDate      string          `json:"birth_date,omitempty" doc:"only with ?reveal=id_number: beside the masked number it would give the full one away"`
	CreatedAt      time.Time       `json:"created_at"`
	Flags          []string        `json:"flags,omitzero" doc:"holder flags (student, teacher, disabled, veteran); shown when one resident is read, never in search results"`
	Cards          []resident.Card `json:"cards,omitempty"`
}

func viewResident(r resident.Resident) residentView {
	return residentView{ID: r.ID, Name: r.Name, IDNumberMasked: r.IDMasked, IDKind: r.IDKind, Category: r.Category, Sex: r.Sex, BirthYear: r.BirthDate.Year(), CreatedAt: r.CreatedAt}
}

// viewResidentFlags is viewResident with the holder flags ([] for none).
func viewResidentFlags(r resident.Resident) residentView {
	v := viewResident(r)
	v.Flags = append([]string{}, r.Flags...)
	return v
}

type enrolResponse struct {
	Resident residentView   `json:"resident"`
	Card     *resident.Card `json:"card,omitempty"`
}

type pinRequest struct {
	OldPIN string `json:"old_pin,omitempty" doc:"the resident's current PIN (residents only)"`
	NewPIN string `json:"new_pin"`
}

// issueCardRequest is the optional body of POST /v1/residents/{id}/cards.
type issueCardRequest struct {
	NewPIN string `json:"new_pin,omitempty" doc:"the new card's PIN, 6 digits; omitted: none yet (set it later: PUT /v1/cards/{number}/pin)"`
}

type searchRequest struct {
	Q string `json:"q" doc:"a card number or an ID number"`
}

type residentLoginRequest struct {
	CardNumber string `json:"card_number"`
	PIN        string `json:"pin"`
}

type cardDetail struct {
	resident.Card
	Events []resident.CardEvent `json:"events"`
}

var hrOnly = []auth.Role{auth.RoleHRAdmin}

func (n *Node) residentRoutes() {
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/residents", Summary: "Create (enrol) a resident and, by default, issue a card", Tag: "residents",
		Roles: hrOnly, Request: enrolRequest{}, Response: enrolResponse{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req enrolRequest
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			if err := httpapi.Required("name", req.Name, "id_number", req.IDNumber, "category", req.Category); err != nil {
				return err
			}
			if req.PIN != "" {
				if err := resident.ValidatePIN(req.PIN); err != nil {
					return err
				}
			}
			res, card, err := n.Enrol(r.Context(), p, resident.EnrolInput{Name: req.Name, IDNumber: req.IDNumber, Category: req.Category, Flags: req.Flags}, req.IssueCard == nil || *req.IssueCard, req.PIN)
			if err != nil {
				return err
			}
			out := enrolResponse{Resident: viewResidentFlags(res), Card: card}
			return httpapi.WriteJSON(w, http.StatusCreated, out)
		},
	})
	search := func(w http.ResponseWriter, r *http.Request, p auth.Principal, q string) error {
		q = strings.TrimSpace(q)
		if q == "" {
			return apperr.Invalid("q", "give a card number or ID number to search for", "请输入卡号或证件号码")
		}
		list, err := n.Residents.Search(r.Context(), q, 20)
		if err != nil {
			return err
		}
		out := []residentView{}
		for _, res := range list {
			v := viewResident(res)
			v.Name = res.MaskedName()
			out = append(out, v)
		}
		if err := n.Auth.AuditEach(r.Context(), p, "search_residents", resident.IDs(list), "results="+itoa(len(out))); err != nil {
			return err // no audit, no personal data
		}
		return httpapi.WriteJSON(w, http.StatusOK, out)
	}
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/residents/search", Summary: "Search residents by card number or ID number ({\"q\"}); answers are masked. Prefer it to GET ?q=: an ID number in a URL stays in proxies' logs", Tag: "residents",
		Roles: hrOnly, Request: searchRequest{}, Response: []residentView{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req searchRequest
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			return search(w, r, p, req.Q)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/residents", Summary: "Search residents by card number or ID number (?q=); answers are masked (POST /v1/residents/search keeps the number out of the URL)", Tag: "residents",
		Roles: hrOnly, Response: []residentView{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			return search(w, r, p, r.URL.Query().Get("q"))
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/residents/{id}", Summary: "A resident with cards; ?reveal=id_number shows the full ID number (audited)", Tag: "residents",
		Roles: hrOnly, Response: residentView{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			id := r.PathValue("id")
			res, err := n.Residents.Get(r.Context(), id)
			if err != nil {
				return err
			}
			v := viewResidentFlags(res)
			action := "read_resident"
			if r.URL.Query().Get("reveal") == "id_number" {
				full, err := n.Residents.RevealIDNumber(r.Context(), id)
				if err != nil {
					return err
				}
				v.IDNumber = full
				v.BirthDate = res.BirthDate.Format("2006-01-02")
				action = "reveal_id_number"
			}
			if err := n.Auth.Audit(r.Context(), p, action, id, ""); err != nil {
				return err // no audit, no personal data
			}
			cards, err := n.Residents.CardsOf(r.Context(), id)
			if err != nil {
				return err
			}
			v.Cards = cards
			return httpapi.WriteJSON(w, http.StatusOK, v)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "PUT /v1/residents/{id}/flags", Summary: "Set a resident's holder flags (student, teacher, disabled, veteran; the whole set, [] for none), audited; the next scan and new e-codes carry them", Tag: "residents",
		Roles: hrOnly, Request: flagsRequest{}, Response: residentView{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req flagsRequest
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			if req.Flags == nil {
				return apperr.Invalid("flags", "give the resident's flags, [] for none", "请给出居民的身份标记，无标记时为 []")
			}
			res, err := n.SetResidentFlags(r.Context(), p, r.PathValue("id"), *req.Flags)
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, viewResidentFlags(res))
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/residents/{id}/cards", Summary: "Create (issue) a card for a resident with no live card", Tag: "cards",
		Roles: hrOnly, Request: issueCardRequest{}, RequestOptional: true, Response: resident.Card{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req issueCardRequest
			if err := httpapi.DecodeOptionalJSON(r, &req); err != nil {
				return err
			}
			c, err := n.Residents.IssueCardBy(r.Context(), r.PathValue("id"), req.NewPIN, p.Subject)
			if err != nil {
				return err
			}
			n.Auth.Audit(r.Context(), p, "issue_card", r.PathValue("id"), c.Number)
			n.afterCardChange(r.Context())
			return httpapi.WriteJSON(w, http.StatusCreated, c)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/cards/{number}", Summary: "A card with its history", Tag: "cards",
		Roles: hrOnly, Response: cardDetail{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			c, err := n.Residents.Card(r.Context(), r.PathValue("number"))
			if err != nil {
				return err
			}
			// The card names its holder (resident_id) and its history.
			if err := n.Auth.Audit(r.Context(), p, "read_card", c.Number, c.ResidentID); err != nil {
				return err // no audit, no personal data
			}
			ev, err := n.Residents.CardEvents(r.Context(), c.Number)
			if err != nil {
				return err
			}
			if ev == nil {
				ev = []resident.CardEvent{}
			}
			return httpapi.WriteJSON(w, http.StatusOK, cardDetail{Card: c, Events: ev})
		},
	})
	type cardOp struct {
		path, summary string
		roles         []auth.Role
		do            func(ctx context.Context, number, actor string) (resident.Card, error)
	}
	ops := []cardOp{
		{"lost", "Report a card lost (挂失): its codes stop working at once", []auth.Role{auth.RoleHRAdmin, auth.RoleResident}, n.Residents.ReportLost},
		{"recover", "Recover a lost card (解挂)", hrOnly, n.Residents.Recover},
		{"replace", "Replace a card (补换): new number and code token; the old card is dead", hrOnly, n.Residents.Replace},
		{"cancel", "Cancel a card (注销)", hrOnly, n.Residents.Cancel},
		{"unlock", "Unlock a card locked by wrong PINs", hrOnly, func(ctx context.Context, number, actor string) (resident.Card, error) {
			if err := n.Residents.UnlockPIN(ctx, number, actor); err != nil {
				return resident.Card{}, err
			}
			return n.Residents.Card(ctx, number)
		}},
	}
	for _, op := range ops {
		n.API.Handle(httpapi.Route{
			Pattern: "POST /v1/cards/{number}/" + op.path, Summary: op.summary, Tag: "cards",
			Roles: op.roles, Response: resident.Card{},
			Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
				number := r.PathValue("number")
				if err := n.ownCard(p, number); err != nil {
					return err
				}
				c, err := op.do(r.Context(), number, p.String())
				if err != nil {
					return err
				}
				if p.Kind == auth.KindStaff {
					n.Auth.Audit(r.Context(), p, "card_"+op.path, number, "")
				}
				if op.path != "unlock" && op.path != "recover" {
					// A dead or lost card's resident sessions end now (sessions
					// are keyed by the normalised number of the old card).
					if err := n.Auth.RevokeSubject(r.Context(), auth.KindResident, resident.NormalizeCardNumber(number)); err != nil {
						return err
					}
				}
				n.afterCardChange(r.Context())
				return httpapi.WriteJSON(w, http.StatusOK, c)
			},
		})
	}
	n.API.Handle(httpapi.Route{
		Pattern: "PUT /v1/cards/{number}/pin", Summary: "Change a PIN (resident: old_pin + new_pin) or set it (hr_admin: new_pin)", Tag: "cards",
		Roles: []auth.Role{auth.RoleHRAdmin, auth.RoleResident}, Request: pinRequest{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			number := r.PathValue("number")
			if err := n.ownCard(p, number); err != nil {
				return err
			}
			var req pinRequest
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			if err := httpapi.Required("new_pin", req.NewPIN); err != nil {
				return err
			}
			var err error
			if p.Role == auth.RoleResident {
				if err := httpapi.Required("old_pin", req.OldPIN); err != nil {
					return err
				}
				err = n.Residents.ChangePIN(r.Context(), number, req.OldPIN, req.NewPIN)
				if e := apperr.As(err); e != nil && e.Code == apperr.BadPIN {
					// A wrong old PIN is refused, but the session is fine:
					// 403, not 401 (whose WWW-Authenticate clients read as
					// "sign in again"). It still counts toward the lock-out.
					refused := *e
					refused.Status = http.StatusForbidden
					err = &refused
				}
				if err == nil {
					// Whoever else signed in with the old PIN is signed out;
					// the session that changed it stays.
					err = n.Auth.RevokeSubjectExcept(r.Context(), auth.KindResident, p.Subject, httpapi.BearerToken(r))
				}
			} else {
				err = n.Residents.SetPIN(r.Context(), number, req.NewPIN, p.String())
				if err == nil {
					n.Auth.Audit(r.Context(), p, "set_pin", number, "")
					// A PIN set at the counter (forgotten, or known to
					// someone else) ends every session signed in with the old one.
					err = n.Auth.RevokeSubject(r.Context(), auth.KindResident, resident.NormalizeCardNumber(number))
				}
			}
			if err != nil {
				return err
			}
			w.WriteHeader(http.StatusNoContent)
			return nil
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/auth/resident", Summary: "Resident sign-in with card number and PIN (6 wrong PINs lock the card)", Tag: "auth",
		Request: residentLoginRequest{}, Response: tokenResponse{},
		Handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
			var req residentLoginRequest
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			if err := httpapi.Required("card_number", req.CardNumber, "pin", req.PIN); err != nil {
				return err
			}
			tok, exp, err := n.ResidentLogin(r.Context(), req.CardNumber, req.PIN)
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, tokenResponse{Token: tok, ExpiresAt: exp})
		},
	})
}

// ResidentLogin checks card number + PIN and returns a resident token.
func (n *Node) ResidentLogin(ctx context.Context, cardNumber, pin string) (string, time.Time, error) {
	c, err := n.Residents.VerifyPIN(ctx, cardNumber, pin)
	if err != nil {
		return "", time.Time{}, err
	}
	if c.Status != resident.StatusActive {
		return "", time.Time{}, apperr.Newf(apperr.CardNotActive, "the card is "+c.Status+"; it cannot be used to sign in", "卡片状态为"+statusZh(c.Status)+"，无法登录")
	}
	tok, p, err := n.Auth.IssueToken(ctx, auth.Principal{Kind: auth.KindResident, Subject: c.Number, Role: auth.RoleResident}, ResidentSessionTTL)
	if err != nil {
		return "", time.Time{}, err
	}
	return tok, p.ExpiresAt, nil
}

// ownCard lets residents act only on their own card.
func (n *Node) ownCard(p auth.Principal, number string) error {
	if p.Role == auth.RoleResident && resident.NormalizeCardNumber(number) != p.Subject {
		return apperr.Newf(apperr.Forbidden, "residents may act only on their own card", "居民只能操作本人的卡")
	}
	return nil
}

// Enrol enrols a resident, optionally issuing a card with pin, and opens the
// resident's accounts.
//
// Holder flags given at enrolment (the API's flags, the console's form and
// its bulk CSV file) are sealed and audited as SetResidentFlags does: in
// the resident's blob with who set them and when, and "set_flags" naming
// how many ("… enrolment").
func (n *Node) Enrol(ctx context.Context, p auth.Principal, in resident.EnrolInput, issueCard bool, pin string) (resident.Resident, *resident.Card, error) {
	in.FlagsBy = p.String()
	res, err := n.Residents.Enrol(ctx, in)
	if err != nil {
		return resident.Resident{}, nil, err
	}
	n.Auth.Audit(ctx, p, "enrol_resident", res.ID, in.Category)
	if len(res.Flags) > 0 {
		n.auditFlags(ctx, p, res.ID, len(res.Flags), "enrolment")
	}
	if err := n.openResidentAccounts(ctx, res.ID); err != nil {
		return res, nil, err
	}
	if !issueCard {
		return res, nil, nil
	}
	c, err := n.Residents.IssueCardBy(ctx, res.ID, pin, p.String())
	if err != nil {
		return res, nil, err
	}
	return res, &c, nil
}

// SetResidentFlags replaces a resident's holder flags and audits the
// change ("set_flags", subject the resident; the detail names how many
// flags, not which: the audit log is not sealed, and a disability is
// health data). The scan path forgets its cached copy of the resident
// (resident.OnChange), so the next scan decides with the new flags.
func (n *Node) SetResidentFlags(ctx context.Context, p auth.Principal, residentID string, flags []string) (resident.Resident, error) {
	res, err := n.Residents.SetFlags(ctx, residentID, flags, p.String())
	if err != nil {
		return resident.Resident{}, err
	}
	n.auditFlags(ctx, p, residentID, len(res.Flags), "")
	return res, nil
}

// auditFlags records that p set a resident's holder flags: "set_flags",
// subject the resident, the detail "flags=<how many>" and where (how:
// "enrolment", or empty). A failure to audit is logged: the flags are
// already stored.
func (n *Node) auditFlags(ctx context.Context, p auth.Principal, residentID string, count int, how string) {
	detail := "flags=" + itoa(count)
	if how != "" {
		detail += " " + how
	}
	if err := n.Auth.Audit(ctx, p, "set_flags", residentID, detail); err != nil {
		n.Log.Warn("auditing set_flags", "resident", residentID, "err", err)
	}
}

func statusZh(s string) string {
	switch s {
	case resident.StatusActive:
		return "正常"
	case resident.StatusLost:
		return "挂失"
	case resident.StatusReplaced:
		return "已补换"
	case resident.StatusCancelled:
		return "已注销"
	}
	return s
}

func itoa(i int) string { return strconv.Itoa(i) }
