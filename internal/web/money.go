package web

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/xuri/excelize/v2"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/ledger"
)

type ledgerData struct {
	Check    *ledger.CheckResult
	CheckErr string
	Account  string
	From, To string
	Lines    []stmtLine
	More     int // movements in the range beyond the lines shown
	Info     *ledger.AccountInfo
}

func (w *Web) needLedger() error {
	if w.d.Ledger == nil {
		return unavailable("ledger")
	}
	return nil
}

// consoleLedger shows the ledger check and, with ?account=, a statement.
func (w *Web) consoleLedger(rq *req) error {
	if err := w.needLedger(); err != nil {
		return err
	}
	q := rq.r.URL.Query()
	d := ledgerData{Account: strings.TrimSpace(q.Get("account")), From: q.Get("from"), To: q.Get("to")}
	if q.Get("check") != "" {
		c, err := w.d.Ledger.CheckWithin(rq.r.Context(), ledger.RequestCheckLimit)
		if err != nil {
			d.CheckErr = rq.ErrText(err)
		} else {
			d.Check = &c
		}
		w.d.Auth.Audit(rq.r.Context(), rq.S.P, "ledger_check", "", "")
	}
	if d.Account != "" {
		// Recorded before it is shown: no record, no statement.
		if err := w.d.Auth.Audit(rq.r.Context(), rq.S.P, "read_statement", d.Account, "web"); err != nil {
			return err
		}
		info, err := w.d.Ledger.Balance(rq.r.Context(), d.Account)
		if err != nil {
			return rq.renderWithError(err, "c_ledger.html", "c.ledger.title", d)
		}
		d.Info = &info
		lines, err := rq.statement(d.Account, d.From, d.To, q.Get("dir"), screenScan)
		if err != nil {
			return rq.renderWithError(err, "c_ledger.html", "c.ledger.title", d)
		}
		d.Lines, d.More = shown(lines)
	}
	return rq.render(200, "c_ledger.html", "c.ledger.title", d)
}

func (w *Web) consoleLedgerExport(rq *req) error {
	if err := w.needLedger(); err != nil {
		return err
	}
	q := rq.r.URL.Query()
	acct := strings.TrimSpace(q.Get("account"))
	if acct == "" {
		return apperr.Invalid("account", "name the account to export", "请指定要导出的账户")
	}
	lines, err := rq.statement(acct, q.Get("from"), q.Get("to"), q.Get("dir"), exportLines)
	if err != nil {
		return err
	}
	if err := w.d.Auth.Audit(rq.r.Context(), rq.S.P, "export_statement", acct, q.Get("format")); err != nil {
		return err // no record, no export
	}
	return rq.export(q.Get("format"), "statement-"+safeFile(acct), lines)
}

// takingsProvider is the provider whose takings the caller may see:
// providers only their own.
func (rq *req) takingsProvider() (string, error) {
	want := strings.TrimSpace(rq.r.URL.Query().Get("provider"))
	if rq.S.P.Role == auth.RoleProvider {
		if want != "" && want != rq.S.P.ProviderID {
			return "", apperr.Newf(apperr.Forbidden, "a provider may see only its own takings", "服务商只能查看本单位的收入")
		}
		return rq.S.P.ProviderID, nil
	}
	return want, nil
}

type takingsData struct {
	Provider     string
	ProviderName string
	// Providers to choose from (not for a provider's own staff).
	Providers []providerOption
	From, To  string
	Info      *ledger.AccountInfo
	Lines     []stmtLine
	More      int // movements in the range beyond the lines shown
	Total     int64
}

func (w *Web) consoleTakings(rq *req) error {
	if err := w.needLedger(); err != nil {
		return err
	}
	p, err := rq.takingsProvider()
	if err != nil {
		return err
	}
	q := rq.r.URL.Query()
	d := takingsData{Provider: p, From: q.Get("from"), To: q.Get("to")}
	names := w.providerNames(rq.r.Context())
	d.ProviderName = names[p]
	if rq.S.P.Role != auth.RoleProvider {
		for id, n := range names {
			d.Providers = append(d.Providers, providerOption{ID: id, Name: n})
		}
		sort.Slice(d.Providers, func(i, j int) bool { return d.Providers[i].Name < d.Providers[j].Name })
	}
	if p != "" {
		acct := ledger.ReceivableID(p)
		info, err := w.d.Ledger.Balance(rq.r.Context(), acct)
		if err != nil {
			return rq.renderWithError(err, "c_takings.html", "c.takings.title", d)
		}
		d.Info = &info
		lines, err := rq.statement(acct, d.From, d.To, "", screenScan)
		if err != nil {
			return rq.renderWithError(err, "c_takings.html", "c.takings.title", d)
		}
		for _, l := range lines { // the period's total counts every line, shown or not
			d.Total += l.Delta
		}
		d.Lines, d.More = shown(lines)
	}
	return rq.render(200, "c_takings.html", "c.takings.title", d)
}

func (w *Web) consoleTakingsExport(rq *req) error {
	if err := w.needLedger(); err != nil {
		return err
	}
	p, err := rq.takingsProvider()
	if err != nil {
		return err
	}
	if p == "" {
		return apperr.Invalid("provider", "name the provider", "请指定服务商")
	}
	q := rq.r.URL.Query()
	lines, err := rq.statement(ledger.ReceivableID(p), q.Get("from"), q.Get("to"), "", exportLines)
	if err != nil {
		return err
	}
	return rq.export(q.Get("format"), "settlement-"+safeFile(p), lines)
}

func safeFile(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, s)
}

// export writes statement lines as CSV (UTF-8 with BOM, so spreadsheet
// programs read the Chinese right) or XLSX.
func (rq *req) export(format, name string, lines []stmtLine) error {
	head := []string{rq.T("col.id"), rq.T("col.time"), rq.T("col.kind"), rq.T("col.memo"), rq.T("col.amount"), rq.T("col.balance"), rq.T("col.account")}
	row := func(l stmtLine) []string {
		return []string{l.ID, fmtTime(l.At), rq.Kind(l.Kind), l.Memo, yuan(l.Delta), yuan(l.Balance), l.Account}
	}
	switch format {
	case "", "csv":
		var buf bytes.Buffer
		buf.WriteString("\ufeff")
		cw := csv.NewWriter(&buf)
		cw.Write(head)
		for _, l := range lines {
			cw.Write(csvSafe(row(l)))
		}
		cw.Flush()
		rq.w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		rq.w.Header().Set("Content-Disposition", `attachment; filename="`+name+`.csv"`)
		_, err := rq.w.Write(buf.Bytes())
		return err
	case "xlsx":
		f := excelize.NewFile()
		defer f.Close()
		sh := "Sheet1"
		for i, h := range head {
			cell, _ := excelize.CoordinatesToCellName(i+1, 1)
			f.SetCellValue(sh, cell, h)
		}
		for r, l := range lines {
			vals := []any{l.ID, fmtTime(l.At), rq.Kind(l.Kind), l.Memo, float64(l.Delta) / 100, float64(l.Balance) / 100, l.Account}
			for i, v := range vals {
				cell, _ := excelize.CoordinatesToCellName(i+1, r+2)
				f.SetCellValue(sh, cell, v)
			}
		}
		rq.w.Header().Set("Content-Type", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
		rq.w.Header().Set("Content-Disposition", `attachment; filename="`+name+`.xlsx"`)
		return f.Write(rq.w)
	}
	return apperr.Invalid("format", "format is csv or xlsx", "格式应为 csv 或 xlsx")
}

// csvSafe defuses spreadsheet formulas in text cells (CSV injection).
func csvSafe(rec []string) []string {
	for i, s := range rec {
		if s != "" && strings.ContainsRune("=+@\t\r", rune(s[0])) {
			rec[i] = "'" + s
		}
		if s != "" && s[0] == '-' {
			if _, err := strconv.ParseFloat(s, 64); err != nil {
				rec[i] = "'" + s
			}
		}
	}
	return rec
}

type providerOption struct{ ID, Name string }

var _ = fmt.Sprint
