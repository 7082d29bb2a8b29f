package web

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/text/encoding/simplifiedchinese"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/resident"
)

// Bulk enrolment from CSV. The file's first line names the columns:
// name, id_number, category, and optionally pin, issue_card (1/0,
// default 1) and flags: the resident's holder flags, none or several
// separated by ";" (学生;残疾人, student|disabled:
// resident.FlagsFromText), sealed and audited as the flags form and
// PUT /v1/residents/{id}/flags set them (node.Enrol). Only hr_admin may
// upload a file, and only hr_admin may set flags: a role let in here later
// would have to be refused a flags column. Every row is checked like the
// API checks one enrolment and applied on its own: a bad row is reported
// with its line number and the reason, and does not stop the others. Uploading the same file again
// applies nothing twice: a resident is unique by ID number, so rows already
// enrolled are reported as "already enrolled" and skipped.
//
// The upload answers at once with a job page; the rows are applied in the
// background and the page's progress bar polls the job. Jobs live in this
// process's memory (an upload is followed on the node that took it) and are
// forgotten an hour after they finish.

const (
	maxCSVBytes = 5 << 20
	maxCSVRows  = 20000
)

// rowResult is one CSV row's outcome.
type rowResult struct {
	Line     int    `json:"line"`
	Status   string `json:"status"` // enrolled, exists, error
	Resident string `json:"resident,omitempty"`
	Card     string `json:"card,omitempty"`
	Code     string `json:"code,omitempty"`
	Message  string `json:"message,omitempty"`
	MsgZh    string `json:"message_zh,omitempty"`
}

type job struct {
	ID       string
	Owner    string
	File     string
	mu       sync.Mutex
	total    int
	done     int
	results  []rowResult
	finished time.Time
}

type jobSnapshot struct {
	ID       string      `json:"id"`
	File     string      `json:"file"`
	Total    int         `json:"total"`
	Done     int         `json:"done"`
	Finished bool        `json:"finished"`
	Enrolled int         `json:"enrolled"`
	Exists   int         `json:"exists"`
	Errors   int         `json:"errors"`
	Rows     []rowResult `json:"rows,omitempty"`
}

func (j *job) snapshot(withRows bool) jobSnapshot {
	j.mu.Lock()
	defer j.mu.Unlock()
	s := jobSnapshot{ID: j.ID, File: j.File, Total: j.total, Done: j.done, Finished: !j.finished.IsZero()}
	for _, r := range j.results {
		switch r.Status {
		case "enrolled":
			s.Enrolled++
		case "exists":
			s.Exists++
		default:
			s.Errors++
		}
	}
	if withRows {
		s.Rows = append([]rowResult(nil), j.results...)
	}
	return s
}

// ownedJob is a background job (an enrolment or a payout list) that only
// the staff member who started it may follow.
type ownedJob interface {
	owner() string
	finishedAt() time.Time
}

func (j *job) owner() string { return j.Owner }

func (j *job) finishedAt() time.Time {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.finished
}

type jobs struct {
	mu sync.Mutex
	m  map[string]ownedJob
}

func newJobs() *jobs { return &jobs{m: map[string]ownedJob{}} }

func (js *jobs) add(id string, j ownedJob) {
	js.mu.Lock()
	defer js.mu.Unlock()
	for id, o := range js.m {
		if f := o.finishedAt(); !f.IsZero() && time.Since(f) > time.Hour {
			delete(js.m, id)
		}
	}
	js.m[id] = j
}

func (js *jobs) get(id, owner string) (ownedJob, error) {
	js.mu.Lock()
	defer js.mu.Unlock()
	j, ok := js.m[id]
	if !ok || j.owner() != owner {
		return nil, apperr.Newf(apperr.NotFound, "no such upload (uploads are kept for an hour)", "上传记录不存在（记录保留一小时）")
	}
	return j, nil
}

// enrolJob finds an enrolment job of the caller.
func (w *Web) enrolJob(rq *req) (*job, error) {
	x, err := w.jobs.get(rq.r.PathValue("id"), rq.S.P.Subject)
	if err != nil {
		return nil, err
	}
	j, ok := x.(*job)
	if !ok {
		return nil, notFound()
	}
	return j, nil
}

// csvRow is a parsed row before enrolment.
type csvRow struct {
	line      int
	in        resident.EnrolInput
	pin       string
	issueCard bool
	err       error
}

// parseEnrolCSV reads the file; a structural problem (no header, missing
// column, too many rows) is an error for the whole file, a bad row only
// for that row.
func parseEnrolCSV(r io.Reader) ([]csvRow, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.TrimLeadingSpace = true
	head, err := cr.Read()
	if err != nil {
		return nil, apperr.Invalid("file", "the file is empty or not CSV", "文件为空或不是 CSV 格式")
	}
	col := map[string]int{}
	for i, h := range head {
		h = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(h, "\ufeff")))
		if en, ok := enrolColumns[h]; ok {
			h = en
		}
		col[h] = i
	}
	for _, need := range []string{"name", "id_number", "category"} {
		if _, ok := col[need]; !ok {
			return nil, apperr.Invalid("file", "the first line must name the columns name,id_number,category (and optionally pin,issue_card,flags); "+need+" is missing",
				"首行须为列名 name,id_number,category（可选 pin,issue_card,flags），缺少 "+need)
		}
	}
	_, hasFlags := col["flags"]
	get := func(rec []string, name string) string {
		i, ok := col[name]
		if !ok || i >= len(rec) {
			return ""
		}
		return strings.TrimSpace(rec[i])
	}
	var rows []csvRow
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if len(rows) >= maxCSVRows {
			return nil, apperr.Invalid("file", "at most 20000 rows per file", "每个文件最多 20000 行")
		}
		// The line the record starts on in the file: the reader skips
		// blank lines and a quoted field may span several lines, so
		// counting records would name the wrong line.
		row := csvRow{issueCard: true}
		if err == nil {
			row.line, _ = cr.FieldPos(0)
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				row.line = pe.StartLine
			}
			row.err = apperr.Invalid("row", "the line is not valid CSV (check the quotes)", "该行不是有效的 CSV（请检查引号）")
			rows = append(rows, row)
			continue
		}
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue // blank line
		}
		row.in = resident.EnrolInput{Name: get(rec, "name"), IDNumber: get(rec, "id_number"), Category: categoryCode(get(rec, "category"))}
		row.pin = get(rec, "pin")
		switch strings.ToLower(get(rec, "issue_card")) {
		case "", "1", "yes", "true", "是":
		case "0", "no", "false", "否":
			row.issueCard = false
		default:
			row.err = apperr.Invalid("issue_card", "issue_card is 1 or 0", "issue_card 应为 1 或 0")
		}
		if hasFlags && row.err == nil {
			// Flags separated by commas but not quoted spill into fields
			// the header does not name: refuse the line rather than enrol
			// with only the first flag.
			for _, f := range rec[min(len(head), len(rec)):] {
				if strings.TrimSpace(f) != "" {
					row.err = apperr.Invalid("flags", "the line has more fields than the first line names columns: separate several flags with \";\", not with commas",
						"该行的字段比首行列名多：多个身份标记请以“;”分隔，不要用逗号")
					break
				}
			}
			if row.err == nil {
				row.in.Flags, row.err = resident.FlagsFromText(get(rec, "flags"))
			}
		}
		for _, f := range rec {
			if !utf8.ValidString(f) {
				row.err = apperr.Invalid("row", "the line is not UTF-8 text (save the file as UTF-8)", "该行不是 UTF-8 文本（请以 UTF-8 保存文件）")
			}
		}
		if row.err == nil {
			row.err = validateEnrol(row.in.Name, row.in.IDNumber, row.in.Category, row.pin)
		}
		rows = append(rows, row)
	}
	if len(rows) == 0 {
		return nil, apperr.Invalid("file", "the file has no rows after the header", "文件除表头外没有数据行")
	}
	return rows, nil
}

// enrolColumns are the Chinese column names a file may use instead of the
// English ones (and other English names of the flags column).
var enrolColumns = map[string]string{
	"姓名": "name", "证件号码": "id_number", "证件号": "id_number", "身份证号码": "id_number", "身份证号": "id_number",
	"人员类别": "category", "类别": "category", "密码": "pin", "初始密码": "pin", "发卡": "issue_card", "是否发卡": "issue_card",
	"身份标记": "flags", "标记": "flags", "持卡人标记": "flags", "flag": "flags", "holder_flags": "flags", "holder flags": "flags",
}

// categoryCode reads a category as its code (local, …) or as a label the
// pages show for it, in either language, or a common Chinese variant.
func categoryCode(s string) string {
	t := strings.ToLower(strings.TrimSpace(s))
	for _, c := range []string{resident.CategoryLocal, resident.CategoryInsuredNonlocal, resident.CategoryPermanentResident} {
		if t == c {
			return c
		}
		if m, ok := messages["cat."+c]; ok && (t == strings.ToLower(m[0]) || t == strings.ToLower(m[1])) {
			return c
		}
	}
	switch t {
	case "本地", "本市", "本地户籍", "本市户口", "本地户口":
		return resident.CategoryLocal
	case "参保异地", "异地参保", "参保非本地", "非本市户籍参保", "参保非本地户籍":
		return resident.CategoryInsuredNonlocal
	case "外国人", "永久居留", "外国人永久居留身份证", "外国人永久居留者":
		return resident.CategoryPermanentResident
	}
	return strings.TrimSpace(s)
}

// utf8Text returns the file as UTF-8: a file that is not valid UTF-8 is
// read as GB18030 (a superset of GBK), which is what Excel writes when a
// Chinese Windows saves "CSV". golang.org/x/text is the Go team's own
// module (already required by the node); its simplifiedchinese decoder is
// the standard one.
func utf8Text(b []byte) []byte {
	if utf8.Valid(b) {
		return b
	}
	out, err := simplifiedchinese.GB18030.NewDecoder().Bytes(b)
	if err != nil {
		return b // each row then says it is not UTF-8
	}
	return out
}

// runEnrolJob applies the rows one by one.
func (w *Web) runEnrolJob(ctx context.Context, p auth.Principal, j *job, rows []csvRow) {
	defer func() {
		j.mu.Lock()
		j.finished = time.Now()
		j.mu.Unlock()
	}()
	for _, row := range rows {
		res := rowResult{Line: row.line}
		err := row.err
		if err == nil {
			var r resident.Resident
			var c *resident.Card
			r, c, err = w.d.Enrol(ctx, p, row.in, row.issueCard, row.pin)
			if err == nil {
				res.Status, res.Resident = "enrolled", r.ID
				if c != nil {
					res.Card = c.Number
				}
			}
		}
		if err != nil {
			e := apperr.As(err)
			res.Code = string(e.Code)
			res.Message, res.MsgZh = e.Text()
			res.Status = "error"
			if e.Code == apperr.AlreadyExists {
				res.Status = "exists"
				res.Message, res.MsgZh = "already enrolled; not applied again", "已登记，未重复导入"
			}
		}
		j.mu.Lock()
		j.results = append(j.results, res)
		j.done++
		j.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
	}
}

func (w *Web) consoleCSVForm(rq *req) error {
	return rq.render(200, "c_csv.html", "c.csv.title", nil)
}

func (w *Web) consoleCSVUpload(rq *req) error {
	if w.d.Enrol == nil {
		return unavailable("enrolment")
	}
	rq.r.Body = http.MaxBytesReader(rq.w, rq.r.Body, maxCSVBytes+64<<10)
	f, hdr, err := rq.r.FormFile("file")
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return rq.renderWithError(apperr.Newf(apperr.BodyTooLarge, "the file is larger than 5 MB; split it", "文件超过 5 MB，请拆分后上传"), "c_csv.html", "c.csv.title", nil)
		}
		return rq.renderWithError(apperr.Invalid("file", "choose a CSV file to upload", "请选择要上传的 CSV 文件"), "c_csv.html", "c.csv.title", nil)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCSVBytes))
	if err != nil {
		return rq.renderWithError(apperr.Invalid("file", "the file could not be read; upload it again", "无法读取文件，请重新上传"), "c_csv.html", "c.csv.title", nil)
	}
	rows, err := parseEnrolCSV(bytes.NewReader(utf8Text(data)))
	if err != nil {
		return rq.renderWithError(err, "c_csv.html", "c.csv.title", nil)
	}
	j := &job{ID: auth.RandomID("job_"), Owner: rq.S.P.Subject, File: hdr.Filename, total: len(rows)}
	w.jobs.add(j.ID, j)
	w.d.Auth.Audit(rq.r.Context(), rq.S.P, "enrol_csv", j.ID, hdrName(hdr.Filename))
	ctx, cancel := context.WithTimeout(context.WithoutCancel(rq.r.Context()), 30*time.Minute)
	go func() {
		defer cancel()
		w.runEnrolJob(ctx, rq.S.P, j, rows)
	}()
	return redirect("/console/enrol/jobs/" + j.ID)
}

func hdrName(s string) string {
	if utf8.RuneCountInString(s) > 100 {
		return string([]rune(s)[:100])
	}
	return s
}

func (w *Web) consoleJob(rq *req) error {
	j, err := w.enrolJob(rq)
	if err != nil {
		return err
	}
	return rq.render(200, "c_job.html", "c.csv.title", j.snapshot(true))
}

func (w *Web) consoleJobProgress(rq *req) error {
	j, err := w.enrolJob(rq)
	if err != nil {
		return err
	}
	rq.w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(rq.w).Encode(j.snapshot(false))
}
