package web

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/subsidy"
)

// Subsidy programmes (惠民惠农补贴) in the console. Finance creates a
// programme and funds it from the treasury; hr_admin uploads payout lists
// (CSV: ID number or card number, amount, reference). Amounts are in yuan
// unless the header names fen for the amount column (金额（分）, amount_fen,
// as the API's lists, which are always in fen, are written); a bare 金额 is
// yuan here, fen in the API (splitPayoutList; the page says so). The
// paying is internal/subsidy's: every line is paid at most once however
// often a list is uploaded (its ledger idempotency key is programme +
// reference).
//
// The web layer adds a progress display: it splits the list into chunks of
// payChunk lines and hands them to subsidy.Service.Upload one after the
// other in the background, so the page's progress bar moves as chunks are
// paid. Line numbers in the report are those of the uploaded file. Each
// programme's funding form carries its own key made when the form was
// drawn, so submitting it twice (a double click, the back button) funds
// once, and funding another programme from the same page is another
// request.

const (
	maxPayoutBytes = 8 << 20
	payChunk       = 250
)

// programme is a subsidy programme with its figures.
type programme struct {
	ID      string
	Label   string
	Balance int64
	Budget  int64  // funded so far
	Paid    int64  // paid out, net of reversals
	FundKey string // idempotency key of this programme's funding form
	// FundAmount is what was typed in this programme's funding form, kept
	// after an error.
	FundAmount string
}

// PathID is the id as a URL path segment. Ids are restricted to a safe
// form now (internal/subsidy), but programmes made before may hold '/',
// '?' or '#'.
func (p programme) PathID() string { return url.PathEscape(p.ID) }

// programmes lists every programme (a subsidy_programme ledger account)
// with what was funded and paid, read from the ledger's tables.
func (w *Web) programmes(ctx context.Context) ([]programme, error) {
	rows, err := w.d.DB.R.QueryContext(ctx, `SELECT id, label, balance_fen FROM ledger_accounts WHERE kind = $1 ORDER BY id`, ledger.KindSubsidy)
	if err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	var out []programme
	for rows.Next() {
		var p programme
		if err := rows.Scan(&p.ID, &p.Label, &p.Balance); err != nil {
			rows.Close()
			return nil, apperr.Wrap(apperr.Internal, err)
		}
		out = append(out, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	sums := func(q string) (map[string]int64, error) {
		m := map[string]int64{}
		rows, err := w.d.DB.R.QueryContext(ctx, q)
		if err != nil {
			return nil, apperr.Wrap(apperr.Internal, err)
		}
		defer rows.Close()
		for rows.Next() {
			var k string
			var v int64
			if err := rows.Scan(&k, &v); err != nil {
				return nil, apperr.Wrap(apperr.Internal, err)
			}
			m[k] = v
		}
		return m, rows.Err()
	}
	funded, err := sums(`SELECT credit, SUM(amount) FROM ledger_journal WHERE type IN ('transfer','post') AND credit LIKE 'sp:%' GROUP BY credit`)
	if err != nil {
		return nil, err
	}
	paid, err := sums(`SELECT debit, SUM(amount) FROM ledger_journal WHERE type IN ('transfer','post') AND debit LIKE 'sp:%' GROUP BY debit`)
	if err != nil {
		return nil, err
	}
	back, err := sums(`SELECT credit, SUM(amount) FROM ledger_journal WHERE type = 'reversal' AND credit LIKE 'sp:%' GROUP BY credit`)
	if err != nil {
		return nil, err
	}
	for i := range out {
		id := out[i].ID
		out[i].Budget, out[i].Paid = funded[id], paid[id]-back[id]
		out[i].ID = strings.TrimPrefix(id, "sp:")
		if out[i].Label == "" {
			out[i].Label = out[i].ID
		}
	}
	return out, nil
}

type subsidiesData struct {
	Programmes []programme
	// Form values kept after an error.
	ID, Label string
	// FundID, FundAmount: the funding form that failed.
	FundID, FundAmount string
}

func (w *Web) needSubsidies() error {
	if w.d.Subsidies == nil || w.d.Ledger == nil {
		return unavailable("subsidies")
	}
	return nil
}

func (w *Web) subsidiesPage(rq *req, err error, d subsidiesData) error {
	ps, perr := w.programmes(rq.r.Context())
	if perr != nil {
		return perr
	}
	for i := range ps {
		ps[i].FundKey = randToken(12)
		if d.FundID != "" && ps[i].ID == d.FundID {
			ps[i].FundAmount = d.FundAmount
		}
	}
	d.Programmes = ps
	if err != nil {
		return rq.renderWithError(err, "c_subsidies.html", "c.subsidies.title", d)
	}
	return rq.render(200, "c_subsidies.html", "c.subsidies.title", d)
}

func (w *Web) consoleSubsidies(rq *req) error {
	if err := w.needSubsidies(); err != nil {
		return err
	}
	return w.subsidiesPage(rq, nil, subsidiesData{})
}

func (w *Web) consoleCreateProgramme(rq *req) error {
	if err := w.needSubsidies(); err != nil {
		return err
	}
	d := subsidiesData{ID: strings.TrimSpace(rq.r.PostFormValue("id")), Label: strings.TrimSpace(rq.r.PostFormValue("label"))}
	var err error
	switch {
	case d.Label == "":
		err = apperr.Invalid("label", "give the programme a name", "请填写补贴项目名称")
	case utf8.RuneCountInString(d.Label) > 100:
		err = apperr.Invalid("label", "the name is at most 100 characters", "名称最多 100 个字")
	default:
		_, err = w.d.Subsidies.CreateProgramme(rq.r.Context(), d.ID, d.Label)
	}
	if err != nil {
		return w.subsidiesPage(rq, err, d)
	}
	w.d.Auth.Audit(rq.r.Context(), rq.S.P, "create_programme", d.ID, d.Label)
	return redirect("/console/subsidies?m=programme_created")
}

func (w *Web) consoleFundProgramme(rq *req) error {
	if err := w.needSubsidies(); err != nil {
		return err
	}
	id := rq.r.PathValue("id")
	key := rq.r.PostFormValue("key")
	typed := strings.TrimSpace(rq.r.PostFormValue("amount"))
	amount, err := parseYuan(typed)
	if err == nil && amount <= 0 {
		err = apperr.Invalid("amount", "the amount must be more than zero", "金额须大于零")
	}
	if err == nil && (key == "" || len(key) > 64) {
		err = apperr.Invalid("key", "the form is out of date; reload the page and try again", "表单已过期，请刷新页面后重试")
	}
	if err == nil {
		if _, err = w.d.Ledger.Balance(rq.r.Context(), ledger.ProgrammeID(id)); err == nil {
			var t ledger.Transfer
			t, err = w.d.Subsidies.Fund(rq.r.Context(), id, "fund:"+rq.S.P.Subject+":"+key, amount)
			if err == nil {
				if !t.Replayed {
					w.d.Auth.Audit(rq.r.Context(), rq.S.P, "fund_programme", id, strconv.FormatInt(amount, 10))
				}
				return redirect("/console/subsidies?m=funded")
			}
		}
	}
	return w.subsidiesPage(rq, err, subsidiesData{FundID: id, FundAmount: typed})
}

// payJob is a payout list being paid in the background.
type payJob struct {
	ID        string
	Owner     string
	Programme string
	File      string

	mu       sync.Mutex
	total    int
	done     int
	lines    []subsidy.LineResult
	paidFen  int64
	finished time.Time
}

func (j *payJob) owner() string { return j.Owner }

func (j *payJob) finishedAt() time.Time {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.finished
}

type paySnapshot struct {
	ID          string               `json:"id"`
	Programme   string               `json:"programme"`
	File        string               `json:"file"`
	Total       int                  `json:"total"`
	Done        int                  `json:"done"`
	Finished    bool                 `json:"finished"`
	Paid        int                  `json:"paid"`
	AlreadyPaid int                  `json:"already_paid"`
	Refused     int                  `json:"refused"`
	PaidFen     int64                `json:"paid_fen"`
	Lines       []subsidy.LineResult `json:"lines,omitempty"`
}

func (j *payJob) snapshot(withLines bool) paySnapshot {
	j.mu.Lock()
	defer j.mu.Unlock()
	s := paySnapshot{ID: j.ID, Programme: j.Programme, File: j.File, Total: j.total, Done: j.done, Finished: !j.finished.IsZero(), PaidFen: j.paidFen}
	for _, l := range j.lines {
		switch l.Status {
		case subsidy.Paid:
			s.Paid++
		case subsidy.AlreadyPaid:
			s.AlreadyPaid++
		default:
			s.Refused++
		}
	}
	if withLines {
		s.Lines = append([]subsidy.LineResult(nil), j.lines...)
		sort.SliceStable(s.Lines, func(a, b int) bool { return s.Lines[a].Line < s.Lines[b].Line })
	}
	return s
}

// payRecord is one record of an uploaded list, with its line in the file.
type payRecord struct {
	line int
	rec  []string
}

// splitPayoutList reads the list's records. A line that is not CSV at all
// is reported at once as malformed; a header line is dropped, taken for
// one by subsidy.Upload's own rule (subsidy.HeaderUnit): a first line
// naming an amount column in its second column, with no number there. A
// first line naming the amount elsewhere is a line if it holds a digit
// (150.00 with a reference 补贴金额2024), a header refusing the list
// whole if not.
//
// Amounts are converted to whole fen here and checked (a bad one is
// reported refused, bad_amount), so that what subsidy.Upload gets in
// chunks without their header holds a positive integer in every second
// column, and no line starting a chunk can be taken for a header there.
// Their unit is the one the header names for the amount column: fen under
// 金额（分） or amount_fen (as the API's lists are written), yuan under
// 金额（元） or amount_yuan; without a unit (金额, amount), or without a
// header, yuan ("150" or "150.00" is ¥150), as the page says. A header
// naming both units, or another (万元, 角, cents), refuses the list whole:
// read in the wrong unit, a list would be paid a hundredth or a hundred
// times what was meant.
func splitPayoutList(r io.Reader) (recs []payRecord, bad []subsidy.LineResult, err error) {
	inFen := false
	cr := csv.NewReader(subsidy.SkipBOM(r))
	cr.FieldsPerRecord = -1
	cr.TrimLeadingSpace = true
	for n := 1; ; n++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if len(recs)+len(bad) >= subsidy.MaxLines {
			return nil, nil, apperr.Invalid("file", "a list has at most 100000 lines; split it", "名单最多 100000 行，请拆分后上传")
		}
		line, _ := cr.FieldPos(0)
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				line = pe.Line
			}
			bad = append(bad, subsidy.LineResult{Line: line, Status: subsidy.Refused, Reason: subsidy.ReasonMalformed})
			continue
		}
		for _, f := range rec {
			if !utf8.ValidString(f) {
				return nil, nil, apperr.Invalid("file", "the file is not UTF-8 text (save it as UTF-8)", "文件不是 UTF-8 文本（请以 UTF-8 保存）")
			}
		}
		if n == 1 {
			header, unit, err := subsidy.HeaderUnit(rec)
			switch {
			case err != nil:
				return nil, nil, apperr.Invalid("file", "the header names the amount in another column than the second: a list's columns are ID or card number, amount, reference",
					"表头中金额不在第二列：名单各列依次为证件号码或卡号、金额、业务流水号")
			case unit == subsidy.UnitMixed || unit == subsidy.UnitOther:
				return nil, nil, apperr.Invalid("file", "the header's amount column must name yuan or fen, one of them, or no unit (then yuan): 金额（元） or amount_yuan, 金额（分） or amount_fen; nothing was paid",
					"表头金额列须写明元或分（只写一种），或不写单位（按元计）：“金额（元）”或 amount_yuan，“金额（分）”或 amount_fen；未发放任何一行")
			case header:
				inFen = unit == subsidy.UnitFen
				continue
			}
		}
		if len(rec) >= 2 {
			fen, ok := payAmount(rec[1], inFen)
			if !ok {
				bad = append(bad, subsidy.LineResult{Line: line, Status: subsidy.Refused, Reason: subsidy.ReasonBadAmount})
				continue
			}
			rec[1] = strconv.FormatInt(fen, 10)
		}
		recs = append(recs, payRecord{line: line, rec: rec})
	}
	if len(recs)+len(bad) == 0 {
		return nil, nil, apperr.Invalid("file", "the list has no lines", "名单没有数据行")
	}
	return recs, bad, nil
}

// payAmount reads a list's amount in fen: a positive whole number of fen
// (inFen), or of yuan with at most two decimals ("150", "150.00", "¥150").
func payAmount(s string, inFen bool) (int64, bool) {
	var fen int64
	var err error
	if inFen {
		fen, err = strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	} else {
		fen, err = parseYuan(s)
	}
	return fen, err == nil && fen > 0
}

// payChunkOf writes records as a CSV list for subsidy.Upload and returns,
// for each line of that list where a record starts, the record's line in
// the uploaded file.
func payChunkOf(recs []payRecord) ([]byte, map[int]int) {
	var buf bytes.Buffer
	cw := csv.NewWriter(&buf)
	lines := map[int]int{}
	for _, r := range recs {
		lines[bytes.Count(buf.Bytes(), []byte{'\n'})+1] = r.line
		cw.Write(r.rec)
		cw.Flush()
	}
	return buf.Bytes(), lines
}

// runPayJob pays the list chunk by chunk.
func (w *Web) runPayJob(ctx context.Context, p auth.Principal, j *payJob, recs []payRecord) {
	for start := 0; start < len(recs); start += payChunk {
		part := recs[start:min(start+payChunk, len(recs))]
		body, lines := payChunkOf(part)
		rep, err := w.d.Subsidies.Upload(ctx, j.Programme, bytes.NewReader(body))
		var out []subsidy.LineResult
		if err != nil {
			// The whole chunk was refused (the node is unavailable, the
			// programme vanished): nothing of it was paid; upload again.
			for _, r := range part {
				out = append(out, subsidy.LineResult{Line: r.line, Status: subsidy.Refused, Reason: subsidy.ReasonUnavailable})
			}
		} else {
			for _, l := range rep.Lines {
				if orig, ok := lines[l.Line]; ok {
					l.Line = orig
				}
				out = append(out, l)
			}
		}
		j.mu.Lock()
		j.lines = append(j.lines, out...)
		j.done += len(part)
		if err == nil {
			j.paidFen += rep.PaidFen
		}
		j.mu.Unlock()
		if ctx.Err() != nil {
			break
		}
	}
	j.mu.Lock()
	j.finished = time.Now()
	j.mu.Unlock()
	s := j.snapshot(false)
	w.d.Auth.Audit(ctx, p, "payouts_done", j.Programme, "job="+j.ID+" paid="+strconv.Itoa(s.Paid)+" already_paid="+strconv.Itoa(s.AlreadyPaid)+
		" refused="+strconv.Itoa(s.Refused)+" paid_fen="+strconv.FormatInt(s.PaidFen, 10))
}

func (w *Web) consolePayoutUpload(rq *req) error {
	if err := w.needSubsidies(); err != nil {
		return err
	}
	ctx := rq.r.Context()
	rq.r.Body = http.MaxBytesReader(rq.w, rq.r.Body, maxPayoutBytes+64<<10)
	fail := func(err error) error { return w.subsidiesPage(rq, err, subsidiesData{}) }
	f, hdr, err := rq.r.FormFile("file")
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return fail(apperr.Newf(apperr.BodyTooLarge, "the file is larger than 8 MB; split it", "文件超过 8 MB，请拆分后上传"))
		}
		return fail(apperr.Invalid("file", "choose a CSV payout list to upload", "请选择要上传的 CSV 发放名单"))
	}
	defer f.Close()
	id := rq.r.FormValue("programme")
	if a, err := w.d.Ledger.Balance(ctx, ledger.ProgrammeID(id)); err != nil || a.Kind != ledger.KindSubsidy {
		return fail(apperr.Newf(apperr.NotFound, "no such subsidy programme", "补贴项目不存在"))
	}
	recs, bad, err := splitPayoutList(io.LimitReader(f, maxPayoutBytes))
	if err != nil {
		return fail(err)
	}
	j := &payJob{ID: auth.RandomID("pay_"), Owner: rq.S.P.Subject, Programme: id, File: hdrName(hdr.Filename), total: len(recs) + len(bad), lines: bad, done: len(bad)}
	w.jobs.add(j.ID, j)
	w.d.Auth.Audit(ctx, rq.S.P, "upload_payouts", id, "job="+j.ID+" file="+j.File+" lines="+strconv.Itoa(j.total))
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Minute)
	p := rq.S.P
	go func() {
		defer cancel()
		w.runPayJob(bg, p, j, recs)
	}()
	return redirect("/console/subsidies/jobs/" + j.ID)
}

func (w *Web) payJob(rq *req) (*payJob, error) {
	x, err := w.jobs.get(rq.r.PathValue("id"), rq.S.P.Subject)
	if err != nil {
		return nil, err
	}
	j, ok := x.(*payJob)
	if !ok {
		return nil, notFound()
	}
	return j, nil
}

func (w *Web) consolePayJob(rq *req) error {
	j, err := w.payJob(rq)
	if err != nil {
		return err
	}
	return rq.render(200, "c_payjob.html", "c.payouts.title", j.snapshot(true))
}

func (w *Web) consolePayJobProgress(rq *req) error {
	j, err := w.payJob(rq)
	if err != nil {
		return err
	}
	rq.w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(rq.w).Encode(j.snapshot(false))
}
