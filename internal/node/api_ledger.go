package node

import (
	"context"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/httpapi"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/subsidy"
)

// ledgerCheck is GET /v1/ledger/check (CONTRACT.md).
type ledgerCheck struct {
	Accounts  int64    `json:"accounts"`
	Transfers int64    `json:"transfers"`
	SumFen    int64    `json:"sum_fen"`
	JournalOK bool     `json:"journal_ok"`
	Problems  []string `json:"problems,omitempty"`
}

type topUpRequest struct {
	IdempotencyKey string `json:"idempotency_key"`
	CardNumber     string `json:"card_number,omitempty"`
	ResidentID     string `json:"resident_id,omitempty"`
	Account        string `json:"account,omitempty" doc:"wallet (default) or medical"`
	AmountFen      int64  `json:"amount_fen"`
	Channel        string `json:"channel,omitempty" doc:"e.g. bank, counter"`
}

// transferView is a transfer as the API shows it.
type transferView struct {
	ID        string            `json:"id"`
	Type      string            `json:"type"`
	Kind      string            `json:"kind,omitempty"`
	Debit     string            `json:"debit"`
	Credit    string            `json:"credit"`
	AmountFen int64             `json:"amount_fen"`
	Currency  string            `json:"currency"`
	Ref       string            `json:"ref,omitempty"`
	Memo      string            `json:"memo,omitempty"`
	Meta      map[string]string `json:"meta,omitempty"`
	At        time.Time         `json:"at"`
	Replayed  bool              `json:"replayed,omitempty"`
}

func viewTransfer(t ledger.Transfer) transferView {
	return transferView{ID: t.ID, Type: t.Type, Kind: t.Kind, Debit: t.Debit, Credit: t.Credit, AmountFen: t.Amount, Currency: t.Currency, Ref: t.Ref, Memo: t.Memo, Meta: t.Meta, At: t.At, Replayed: t.Replayed}
}

type accountView struct {
	ID           string    `json:"id"`
	Kind         string    `json:"kind"`
	Currency     string    `json:"currency"`
	BalanceFen   int64     `json:"balance_fen"`
	PendingFen   int64     `json:"pending_fen"`
	AvailableFen int64     `json:"available_fen"`
	FloorFen     int64     `json:"floor_fen"`
	Status       string    `json:"status"`
	Label        string    `json:"label,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
}

func viewAccount(a ledger.AccountInfo) accountView {
	return accountView{ID: a.ID, Kind: a.Kind, Currency: a.Currency, BalanceFen: a.Balance, PendingFen: a.Pending, AvailableFen: a.Available, FloorFen: a.Floor, Status: a.Status, Label: a.Label, CreatedAt: a.CreatedAt}
}

type statementLine struct {
	transferView
	DeltaFen        int64 `json:"delta_fen"`
	BalanceAfterFen int64 `json:"balance_after_fen"`
}

type statementPage struct {
	Account string          `json:"account"`
	Entries []statementLine `json:"entries"`
	Next    string          `json:"next,omitempty"`
}

type meView struct {
	Name           string        `json:"name"`
	IDNumberMasked string        `json:"id_number_masked"`
	Category       string        `json:"category"`
	Card           resident.Card `json:"card"`
	Wallet         accountView   `json:"wallet"`
	Medical        accountView   `json:"medical"`
	OwedFen        int64         `json:"owed_fen" doc:"outstanding offline \"ride first, pay later\" debt, collected from the next top-ups (GET /v1/residents/{id}/debts)"`
}

type reversalRequest struct {
	IdempotencyKey string `json:"idempotency_key"`
	AmountFen      int64  `json:"amount_fen"`
	Reason         string `json:"reason"`
}

type programmeRequest struct {
	ID    string `json:"id" doc:"programme id, e.g. farm-2026"`
	Label string `json:"label"`
}

type fundRequest struct {
	IdempotencyKey string `json:"idempotency_key"`
	AmountFen      int64  `json:"amount_fen"`
}

var financeOnly = []auth.Role{auth.RoleFinance}

func (n *Node) ledgerRoutes() {
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/ledger/check", Summary: "Check the books: balances sum to zero, each balance equals its postings, the journal chain is intact", Tag: "ledger",
		Roles: financeOnly, Response: ledgerCheck{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			res, err := n.Ledger.CheckWithin(r.Context(), ledger.RequestCheckLimit)
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, ledgerCheck{Accounts: res.Accounts, Transfers: res.Transfers, SumFen: res.SumFen, JournalOK: res.JournalOK, Problems: res.Problems})
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/topups", Summary: "Top up a resident's wallet (bank channel or counter) or credit the medical account (finance)", Tag: "ledger",
		Roles: []auth.Role{auth.RoleFinance, auth.RoleOperator}, Request: topUpRequest{}, Response: transferView{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req topUpRequest
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			if err := httpapi.Required("idempotency_key", req.IdempotencyKey); err != nil {
				return err
			}
			if req.AmountFen <= 0 {
				return apperr.New(apperr.InvalidAmount)
			}
			if req.AmountFen > MaxTopUpFen {
				return apperr.Newf(apperr.InvalidAmount, "one top-up is at most 1,000,000 yuan (100000000 fen)", "单笔充值不超过100万元（100000000分）")
			}
			residentID := req.ResidentID
			if req.CardNumber != "" {
				id, err := n.Residents.HolderOf(r.Context(), req.CardNumber)
				if err != nil {
					return err
				}
				if residentID != "" && residentID != id {
					return apperr.Invalid("resident_id", "the card belongs to another resident than resident_id", "该卡不属于 resident_id 所指的居民")
				}
				residentID = id
			}
			if residentID == "" {
				return apperr.Invalid("card_number", "give card_number or resident_id", "请提供卡号或居民编号")
			}
			if req.CardNumber == "" {
				// A card already names an enrolled resident; a bare id is checked.
				if _, err := n.Residents.Get(r.Context(), residentID); err != nil {
					return err
				}
			}
			// Accounts are opened at enrolment; ids are derived, so no look-up here.
			wallet, medical := ledger.WalletID(residentID), ledger.MedicalID(residentID)
			channel := req.Channel
			if channel == "" {
				channel = string(p.Role)
			}
			meta := map[string]string{"channel": channel, "by": p.Subject}
			// The key space is the caller's: two operators cannot collide.
			key := "topup:" + p.Subject + ":" + req.IdempotencyKey
			var t ledger.Transfer
			var err error
			owes := false // the resident may owe offline debt (wallet top-ups)
			switch req.Account {
			case "", "wallet":
				t, owes, err = n.scans().Debts.Credit(r.Context(), ledger.TransferRequest{Key: key, Debit: ledger.AccountBank, Credit: wallet, Amount: req.AmountFen, Kind: "topup", Meta: meta}, residentID)
			case "medical":
				if p.Role != auth.RoleFinance {
					return apperr.Newf(apperr.Forbidden, "only finance may credit medical accounts", "仅财政人员可为医保个人账户入账")
				}
				t, err = n.Ledger.Transfer(r.Context(), ledger.TransferRequest{Key: key, Debit: ledger.AccountMedicalFund, Credit: medical, Amount: req.AmountFen, Kind: "medical_contribution", Meta: meta})
			default:
				return apperr.Invalid("account", "account must be wallet or medical", "账户须为 wallet 或 medical")
			}
			if apperr.CodeOf(err) == apperr.UnknownAccount {
				// A resident enrolled before accounts were opened at
				// enrolment: open them and let the client retry the same key.
				if _, _, oerr := n.Ledger.OpenResidentAccounts(r.Context(), residentID); oerr == nil {
					err = apperr.Newf(apperr.Unavailable, "the resident's accounts were just opened; retry with the same idempotency key", "居民账户刚刚开立，请使用相同幂等键重试")
				}
			}
			if err != nil {
				return err
			}
			if owes {
				// Offline debt is collected from the money just credited
				// (a retried top-up collects only what is still owed).
				n.collectDebts(r.Context(), residentID)
			}
			return httpapi.WriteJSON(w, http.StatusOK, viewTransfer(t))
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/accounts/{id}", Summary: "An account's balance", Tag: "ledger",
		Roles: []auth.Role{auth.RoleFinance, auth.RoleResident}, Response: accountView{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			id := r.PathValue("id")
			if err := n.ownAccount(r.Context(), p, id); err != nil {
				return err
			}
			a, err := n.Ledger.Balance(r.Context(), id)
			if err != nil {
				return err
			}
			if err := n.auditResidentAccount(r, p, "read_account", id); err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, viewAccount(a))
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/accounts/{id}/statement", Summary: "An account's statement (?from=&to= dates, ?cursor=, ?limit=)", Tag: "ledger",
		Roles: []auth.Role{auth.RoleFinance, auth.RoleResident}, Response: statementPage{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			id := r.PathValue("id")
			if err := n.ownAccount(r.Context(), p, id); err != nil {
				return err
			}
			if err := n.auditResidentAccount(r, p, "read_statement", id); err != nil {
				return err
			}
			page, err := n.statement(r, id)
			if err != nil {
				return err
			}
			if err := n.auditCounterparts(r, p, page); err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, page)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/me", Summary: "The signed-in resident: masked identity, card, wallet and medical balances", Tag: "residents",
		Roles: []auth.Role{auth.RoleResident}, Response: meView{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			me, err := n.Me(r.Context(), p.Subject)
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, me)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/transfers/{id}/reversal", Summary: "Reverse (part of) a transfer, e.g. to refund a disputed charge", Tag: "ledger",
		Roles: financeOnly, Request: reversalRequest{}, Response: transferView{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req reversalRequest
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			if err := httpapi.Required("idempotency_key", req.IdempotencyKey, "reason", req.Reason); err != nil {
				return err
			}
			// A charge cleared with another city, or a part of a ride on
			// credit, is not reversed alone (scan.CheckReversible).
			if err := scan.CheckReversible(r.Context(), n.Ledger, r.PathValue("id")); err != nil {
				return err
			}
			t, err := n.Ledger.Reverse(r.Context(), "reversal:"+p.Subject+":"+req.IdempotencyKey, r.PathValue("id"), req.AmountFen)
			if err != nil {
				return err
			}
			n.Auth.Audit(r.Context(), p, "reverse_transfer", r.PathValue("id"), req.Reason)
			return httpapi.WriteJSON(w, http.StatusOK, viewTransfer(t))
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/subsidies", Summary: "Create a subsidy programme (惠民惠农补贴) account", Tag: "subsidies",
		Roles: financeOnly, Request: programmeRequest{}, Response: accountView{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req programmeRequest
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			if err := httpapi.Required("id", req.ID, "label", req.Label); err != nil {
				return err
			}
			a, err := n.Subsidies.CreateProgramme(r.Context(), req.ID, req.Label)
			if err != nil {
				return err
			}
			n.Auth.Audit(r.Context(), p, "create_programme", req.ID, req.Label)
			return httpapi.WriteJSON(w, http.StatusCreated, viewAccount(a))
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/subsidies/{id}", Summary: "A subsidy programme's balance", Tag: "subsidies",
		Roles: []auth.Role{auth.RoleFinance, auth.RoleHRAdmin}, Response: accountView{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			a, err := n.Ledger.Balance(r.Context(), ledger.ProgrammeID(r.PathValue("id")))
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, viewAccount(a))
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/subsidies/{id}/funding", Summary: "Fund a programme from the treasury", Tag: "subsidies",
		Roles: financeOnly, Request: fundRequest{}, Response: transferView{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req fundRequest
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			if err := httpapi.Required("idempotency_key", req.IdempotencyKey); err != nil {
				return err
			}
			t, err := n.Subsidies.Fund(r.Context(), r.PathValue("id"), "fund:"+p.Subject+":"+req.IdempotencyKey, req.AmountFen)
			if err != nil {
				return err
			}
			n.Auth.Audit(r.Context(), p, "fund_programme", r.PathValue("id"), itoa(int(req.AmountFen)))
			return httpapi.WriteJSON(w, http.StatusOK, viewTransfer(t))
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/subsidies/{id}/payouts", Summary: "Upload a payout list (CSV: ID or card number, amount_fen, reference); each line is paid once however often it is uploaded", Tag: "subsidies",
		Roles: hrOnly, RequestType: "text/csv", Response: subsidy.Report{}, MaxBody: 32 << 20,
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			rep, err := n.Subsidies.Upload(r.Context(), r.PathValue("id"), io.Reader(r.Body))
			if err != nil {
				return err
			}
			n.Auth.Audit(r.Context(), p, "upload_payouts", r.PathValue("id"), "")
			return httpapi.WriteJSON(w, http.StatusOK, rep)
		},
	})
}

// statement reads the page of account id's statement the query asks for.
func (n *Node) statement(r *http.Request, id string) (statementPage, error) {
	q := r.URL.Query()
	from, err := timeParam(q.Get("from"), "from")
	if err != nil {
		return statementPage{}, err
	}
	to, err := timeParam(q.Get("to"), "to")
	if err != nil {
		return statementPage{}, err
	}
	if !to.IsZero() && len(q.Get("to")) == len("2006-01-02") {
		to = to.AddDate(0, 0, 1) // a date "to" includes that day
	}
	limit, err := intParam(q.Get("limit"), "limit")
	if err != nil {
		return statementPage{}, err
	}
	entries, next, err := n.Ledger.Statement(r.Context(), id, from, to, q.Get("cursor"), int(limit))
	if err != nil {
		return statementPage{}, err
	}
	page := statementPage{Account: id, Entries: make([]statementLine, 0, len(entries)), Next: next}
	for _, e := range entries {
		page.Entries = append(page.Entries, statementLine{transferView: viewTransfer(e.Transfer), DeltaFen: e.Delta, BalanceAfterFen: e.BalanceAfter})
	}
	return page, nil
}

// auditCounterparts records, before a statement page is shown to staff,
// a read of every resident account among its lines' other sides: a
// provider's statement names the wallet behind each fare, with the
// terminal, scenario and time (where the resident was). The account of
// the statement itself is recorded by auditResidentAccount.
func (n *Node) auditCounterparts(r *http.Request, p auth.Principal, page statementPage) error {
	if p.Role == auth.RoleResident {
		return nil
	}
	seen := map[string]bool{page.Account: true}
	var ids []string
	for _, e := range page.Entries {
		for _, id := range []string{e.Debit, e.Credit} {
			if !seen[id] && (strings.HasPrefix(id, "w:") || strings.HasPrefix(id, "m:")) {
				seen[id] = true
				ids = append(ids, id)
			}
		}
	}
	if len(ids) == 0 {
		return nil
	}
	return n.Auth.AuditEach(r.Context(), p, "read_statement", ids, "counterpart in "+page.Account+" api") // no audit, no personal data
}

// MaxTopUpFen bounds one top-up (1,000,000 yuan): far above any real
// one, it turns a slip of the keyboard into an error, not a booking.
const MaxTopUpFen = 100_000_000

// auditResidentAccount records a staff read of a resident's own account
// (wallet "w:…", medical account "m:…": personal data) before it is
// answered; a resident reading their own is not recorded.
func (n *Node) auditResidentAccount(r *http.Request, p auth.Principal, action, id string) error {
	if p.Role == auth.RoleResident || !(strings.HasPrefix(id, "w:") || strings.HasPrefix(id, "m:")) {
		return nil
	}
	return n.Auth.Audit(r.Context(), p, action, id, "api") // no audit, no personal data
}

// ownAccount lets residents read only their own wallet and medical account.
func (n *Node) ownAccount(ctx context.Context, p auth.Principal, accountID string) error {
	if p.Role != auth.RoleResident {
		return nil
	}
	c, err := n.Residents.Card(ctx, p.Subject)
	if err != nil {
		return err
	}
	if accountID != ledger.WalletID(c.ResidentID) && accountID != ledger.MedicalID(c.ResidentID) {
		return apperr.Newf(apperr.Forbidden, "residents may read only their own accounts", "居民只能查看本人账户")
	}
	return nil
}

// Me returns what a signed-in resident sees about themself.
func (n *Node) Me(ctx context.Context, cardNumber string) (meView, error) {
	c, err := n.Residents.Card(ctx, cardNumber)
	if err != nil {
		return meView{}, err
	}
	res, err := n.Residents.Get(ctx, c.ResidentID)
	if err != nil {
		return meView{}, err
	}
	wID, mID := ledger.WalletID(res.ID), ledger.MedicalID(res.ID)
	wa, err := n.Ledger.Balance(ctx, wID)
	if apperr.CodeOf(err) == apperr.UnknownAccount {
		if wID, mID, err = n.Ledger.OpenResidentAccounts(ctx, res.ID); err == nil {
			wa, err = n.Ledger.Balance(ctx, wID)
		}
	}
	if err != nil {
		return meView{}, err
	}
	ma, err := n.Ledger.Balance(ctx, mID)
	if err != nil {
		return meView{}, err
	}
	owed, err := n.scans().Debts.Owed(ctx, res.ID)
	if err != nil {
		return meView{}, err
	}
	return meView{Name: res.Name, IDNumberMasked: res.IDMasked, Category: res.Category, Card: c, Wallet: viewAccount(wa), Medical: viewAccount(ma), OwedFen: owed}, nil
}
