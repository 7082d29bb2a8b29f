package web_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/idnum"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

type enrolSnap struct {
	Total, Done              int
	Finished                 bool
	Enrolled, Exists, Errors int
}

// enrolList uploads a bulk enrolment file and waits for the job to finish;
// it returns the counts and the job page.
func enrolList(t *testing.T, b *browser, file string) (enrolSnap, string) {
	t.Helper()
	st, body, h := b.upload("/console/enrol/csv", map[string]string{"csrf": b.csrf("/console/enrol/csv")}, file, "pupils.csv")
	loc := h.Get("Location")
	if st != http.StatusSeeOther || !strings.HasPrefix(loc, "/console/enrol/jobs/") {
		t.Fatalf("upload: %d %s %.1500s", st, loc, contentOf(body))
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, js, _ := b.do("GET", loc+"/progress", nil)
		var s enrolSnap
		if err := json.Unmarshal([]byte(js), &s); err != nil {
			t.Fatalf("progress %q: %v", js, err)
		}
		if s.Finished {
			_, page, _ := b.do("GET", loc, nil)
			return s, page
		}
		if time.Now().After(deadline) {
			t.Fatalf("enrolment job not finished: %+v", s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// jobRowRe is a row of the job page: its line, status, resident and card.
var jobRowRe = regexp.MustCompile(`<tr class="row-(\w+)"><td>(\d+)</td><td>[^<]*</td><td>(?:<a href="/console/residents/(res_\w+)">([^<]*)</a>)?</td><td>(.*?)</td></tr>`)

type jobRow struct{ status, resident, card, message string }

// jobRows maps a job page's rows by their line in the file.
func jobRows(page string) map[string]jobRow {
	out := map[string]jobRow{}
	for _, m := range jobRowRe.FindAllStringSubmatch(page, -1) {
		out[m[2]] = jobRow{m[1], m[3], m[4], m[5]}
	}
	return out
}

// TestConsoleEnrolCSVFlags: a school enrols its pupils from a file with a
// 身份标记 column; each resident's flags take effect (the API reads them
// back, sealed with who set them; the campus gate admits the student and
// turns away the resident enrolled without flags) and are audited as the
// flags form audits them, without naming them. A line with an unknown
// flag is reported with its line and the bad value, in both languages,
// and enrols no one; the other lines are enrolled. Other roles may not
// upload a file at all.
func TestConsoleEnrolCSVFlags(t *testing.T) {
	eachBackend(t, 3, func(t *testing.T, tn *nodetest.Node) {
		ctx := t.Context()
		rng := rand.New(rand.NewPCG(21, 22))
		id := func(age int) string {
			return idnum.Generate(rng, idnum.KindCitizen, "410105", time.Now().AddDate(-age, 0, -7), "F")
		}
		pupil, teacher, plain, wizard, spill := id(15), id(40), id(30), id(16), id(17)
		file := "姓名,证件号码,人员类别,密码,身份标记\r\n" + // line 1
			"王同学," + pupil + ",本市户籍,,学生;残疾人\r\n" + // line 2
			"\r\n" + // line 3: blank
			"李老师," + teacher + ",local,,Teacher\r\n" + // line 4
			"赵市民," + plain + ",local,,\r\n" + // line 5
			"钱巫师," + wizard + ",local,,学生;巫师\r\n" + // line 6: unknown flag
			"孙同学," + spill + ",local,,student,disabled\r\n" // line 7: an unquoted comma

		hr := newBrowser(t, tn.URL).staffAs(tn, "hr_admin")

		// finance may not upload a file (with or without flags).
		fin := newBrowser(t, tn.URL).staffAs(tn, "finance")
		if st, _, _ := fin.upload("/console/enrol/csv", map[string]string{"csrf": fin.csrf("/console/ledger")}, file, "x.csv"); st != http.StatusForbidden {
			t.Fatalf("finance uploading an enrolment file: %d", st)
		}

		snap, page := enrolList(t, hr, file)
		if snap.Total != 5 || snap.Enrolled != 3 || snap.Errors != 2 || snap.Exists != 0 {
			t.Fatalf("first upload: %+v\n%.3000s", snap, contentOf(page))
		}
		rows := jobRows(page)
		for _, line := range []string{"2", "4", "5"} {
			if rows[line].status != "enrolled" || rows[line].resident == "" || rows[line].card == "" {
				t.Fatalf("line %s: %+v\n%.3000s", line, rows[line], contentOf(page))
			}
		}
		if r := rows["6"]; r.status != "error" || !strings.Contains(r.message, "未知的身份标记") || !strings.Contains(r.message, "巫师") || !strings.Contains(r.message, "validation_failed") {
			t.Fatalf("line 6 (an unknown flag): %+v", r)
		}
		if r := rows["7"]; r.status != "error" || !strings.Contains(r.message, "分隔") {
			t.Fatalf("line 7 (flags split by an unquoted comma): %+v", r)
		}
		for _, num := range []string{wizard, spill} {
			if found, err := tn.Residents.Search(ctx, num, 5); err != nil || len(found) != 0 {
				t.Fatalf("a refused line enrolled someone: %+v %v", found, err)
			}
		}
		hr.do("GET", "/lang?l=en", nil)
		_, en, _ := hr.do("GET", jobID(t, page), nil)
		hr.do("GET", "/lang?l=zh", nil)
		if r := jobRows(en)["6"]; !strings.Contains(r.message, "unknown holder flag") || !strings.Contains(r.message, "巫师") {
			t.Fatalf("line 6 in English: %+v", r)
		}

		// The flags took effect: read back over the API, sealed with who
		// set them, audited without naming them.
		api := tn.Client(tn.Demo.Staff["hr_admin"].Token)
		for line, want := range map[string][]string{"2": {"disabled", "student"}, "4": {"teacher"}, "5": {}} {
			var v struct {
				Flags *[]string `json:"flags"`
			}
			api.JSON(t, "GET", "/v1/residents/"+rows[line].resident, nil, 200, &v)
			if v.Flags == nil || !slices.Equal(*v.Flags, want) {
				t.Fatalf("line %s: flags %v, want %q", line, v.Flags, want)
			}
			r, err := tn.Residents.Get(ctx, rows[line].resident)
			if err != nil {
				t.Fatal(err)
			}
			sets := audited(t, tn, "set_flags", rows[line].resident)
			if len(want) == 0 {
				if r.FlagsSetBy != "" || len(sets) != 0 {
					t.Fatalf("line %s without flags: set by %q, audit %+v", line, r.FlagsSetBy, sets)
				}
				continue
			}
			if !strings.HasPrefix(r.FlagsSetBy, "hr_admin:") || r.FlagsSetAt.IsZero() {
				t.Fatalf("line %s: flags set by %q at %v", line, r.FlagsSetBy, r.FlagsSetAt)
			}
			if len(sets) != 1 || sets[0].ActorRole != "hr_admin" || sets[0].Detail != fmt.Sprintf("flags=%d enrolment", len(want)) {
				t.Fatalf("line %s: set_flags audit %+v", line, sets)
			}
		}
		_, resPage, _ := hr.do("GET", "/console/residents/"+rows["2"].resident, nil)
		mustContain(t, "the enrolled pupil's page", resPage, `data-flag="student">学生<`, `data-flag="disabled">残疾人<`, `id="flags-set"`)

		// The campus gate admits the student (and the teacher) and turns
		// away the resident enrolled without flags.
		var gate string
		for _, term := range tn.Demo.Terminals {
			if term.Scenario == "campus.gate" {
				gate = term.Token
			}
		}
		if gate == "" {
			t.Fatal("no campus gate in the demo")
		}
		for line, want := range map[string]string{"2": "accepted", "4": "accepted", "5": "declined"} {
			var a struct{ Decision, Reason string }
			tn.Client(gate).JSON(t, "POST", "/v1/scans", map[string]any{"idempotency_key": "csv-flags-" + line, "scenario": "campus.gate", "card_number": rows[line].card}, 200, &a)
			if a.Decision != want {
				t.Fatalf("line %s at the campus gate: %+v, want %s", line, a, want)
			}
		}

		// The same file again: nothing applied twice, the flags unchanged.
		snap, _ = enrolList(t, hr, file)
		if snap.Enrolled != 0 || snap.Exists != 3 || snap.Errors != 2 {
			t.Fatalf("second upload: %+v", snap)
		}
		if n := len(audited(t, tn, "set_flags", rows["2"].resident)); n != 1 {
			t.Fatalf("%d set_flags rows after the second upload", n)
		}
	})
}

var jobLinkRe = regexp.MustCompile(`data-progress="(/console/enrol/jobs/job_\w+)/progress"`)

func jobID(t *testing.T, page string) string {
	t.Helper()
	m := jobLinkRe.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no job on the page: %.1000s", page)
	}
	return m[1]
}
