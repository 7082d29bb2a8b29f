package web

import (
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/resident"
)

// TestConsoleEnrolCSVLineNumbers: a bad row is reported with its
// line in the file, also after a blank line (which the CSV reader skips)
// and after a quoted field spanning two lines.
func TestConsoleEnrolCSVLineNumbers(t *testing.T) {
	file := "name,id_number,category\n" + // line 1
		"\n" + // line 2: blank
		"张三,,local\n" + // line 3: no ID number
		"\"李\n四\",11010519491231002X,local\n" + // lines 4-5
		"王五,,local\n" // line 6: no ID number
	rows, err := parseEnrolCSV(strings.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	var bad []int
	for _, r := range rows {
		if r.err != nil {
			bad = append(bad, r.line)
		}
	}
	if len(bad) != 2 || bad[0] != 3 || bad[1] != 6 {
		t.Fatalf("bad rows reported on lines %v, want [3 6]", bad)
	}
}

// TestConsoleParseYuanSigns: a sign inside an amount is refused,
// not read as another amount ("2.+5" is not ¥2.05).
func TestConsoleParseYuanSigns(t *testing.T) {
	for _, s := range []string{"2.+5", "+2.50", "2.+", "1,000.+5"} {
		if fen, err := parseYuan(s); err == nil {
			t.Errorf("parseYuan(%q) = %d fen, want an error", s, fen)
		}
	}
	if fen, err := parseYuan("2.5"); err != nil || fen != 250 {
		t.Fatalf("2.5: %d %v", fen, err)
	}
}

// TestEnrolCSVFlags: an optional flags column (身份标记, flags, …) gives
// each row its holder flags, as codes or labels in either language, any
// case, several separated by ";" (or "|", "、", "；", a comma inside
// quotes). An unknown flag, or flags spilling past the header's columns
// (unquoted commas), is an error for that line alone, naming its line in
// the file and the bad value.
func TestEnrolCSVFlags(t *testing.T) {
	const id = "11010519491231002X"
	for _, head := range []string{"姓名,证件号码,人员类别,身份标记", "name,id_number,category,flags", "name,id_number,category,Holder Flags", "姓名,证件号码,人员类别,标记"} {
		file := head + "\r\n" +
			"甲," + id + ",本市户籍,学生;残疾人\r\n" + // line 2
			"乙," + id + ",local,STUDENT|teacher\r\n" + // line 3
			"丙," + id + ",local,\r\n" + // line 4: none
			"丁," + id + ",local\r\n" + // line 5: the cell missing, none
			"\r\n" + // line 6: blank
			"戊," + id + ",local,学生;巫师\r\n" + // line 7: unknown
			"己," + id + ",local,\"teacher, veteran\"\r\n" + // line 8: a quoted comma
			"庚," + id + ",local,student,disabled\r\n" + // line 9: an unquoted comma
			"辛," + id + ",local,退役军人、老师\r\n" + // line 10
			"壬," + id + ",local,无\r\n" // line 11
		rows, err := parseEnrolCSV(strings.NewReader(file))
		if err != nil {
			t.Fatalf("%s: %v", head, err)
		}
		want := []struct {
			line  int
			flags []string
			bad   string
		}{
			{2, []string{"disabled", "student"}, ""}, {3, []string{"student", "teacher"}, ""}, {4, nil, ""}, {5, nil, ""},
			{7, nil, `"巫师"`}, {8, []string{"teacher", "veteran"}, ""}, {9, nil, ";"}, {10, []string{"teacher", "veteran"}, ""}, {11, nil, ""},
		}
		if len(rows) != len(want) {
			t.Fatalf("%s: %d rows, want %d", head, len(rows), len(want))
		}
		for i, w := range want {
			r := rows[i]
			if r.line != w.line || !slices.Equal(r.in.Flags, w.flags) {
				t.Errorf("%s: row %d: line %d flags %q (%v), want line %d flags %q", head, i, r.line, r.in.Flags, r.err, w.line, w.flags)
			}
			if w.bad == "" {
				if r.err != nil {
					t.Errorf("%s: line %d: %v", head, r.line, r.err)
				}
				continue
			}
			e := apperr.As(r.err)
			if e == nil || e.Code != apperr.ValidationFailed || e.Field != "flags" {
				t.Errorf("%s: line %d: %v, want validation_failed on flags", head, r.line, r.err)
				continue
			}
			if en, zh := e.Text(); !strings.Contains(en, w.bad) || !strings.Contains(zh, w.bad) {
				t.Errorf("%s: line %d: %q / %q do not name %s", head, r.line, en, zh, w.bad)
			}
		}
	}

	// Without a flags column nobody gets flags, and a stray field past
	// the header is ignored as before.
	rows, err := parseEnrolCSV(strings.NewReader("name,id_number,category\n甲," + id + ",local,student\n"))
	if err != nil || len(rows) != 1 || rows[0].err != nil || rows[0].in.Flags != nil {
		t.Fatalf("no flags column: %+v %v", rows, err)
	}
	// The header's error names the optional column.
	if _, err := parseEnrolCSV(strings.NewReader("name,flags\n甲,student\n")); err == nil || !strings.Contains(err.Error(), "flags") {
		t.Fatalf("a header without id_number: %v", err)
	}
}

// FuzzParseEnrolCSV: any file parses without a panic; rows come in
// file order with real line numbers; a row without an error has only
// known flags, sorted and unique.
func FuzzParseEnrolCSV(f *testing.F) {
	f.Add("name,id_number,category\n张三,11010519491231002X,local\n")
	f.Add("姓名,证件号码,人员类别,身份标记\n张三,11010519491231002X,本市户籍,学生;残疾人\n")
	f.Add("name,id_number,category,flags,pin\n\"a\nb\",11010519491231002X,local,\"student,teacher\",123456\n\nx,y,local,wizard|student,1\n")
	f.Add("flags,name,id_number,category\nstudent,disabled,a,b,c\n")
	f.Add("\ufeffname,id_number,category,flags\n张三,11010519491231002X,local,无\n李四,1,local,\"\n")
	f.Fuzz(func(t *testing.T, file string) {
		rows, err := parseEnrolCSV(strings.NewReader(file))
		if err != nil {
			if len(rows) != 0 {
				t.Fatalf("rows with an error: %v", err)
			}
			return
		}
		last := 1
		for _, r := range rows {
			if r.line < last && r.line != 0 {
				t.Fatalf("line %d after line %d", r.line, last)
			}
			if r.line > last {
				last = r.line
			}
			if r.err != nil {
				if apperr.As(r.err) == nil {
					t.Fatalf("line %d: %v is not an apperr", r.line, r.err)
				}
				continue
			}
			if r.line < 2 {
				t.Fatalf("a good row on line %d", r.line)
			}
			if !slices.IsSorted(r.in.Flags) || len(slices.Compact(slices.Clone(r.in.Flags))) != len(r.in.Flags) {
				t.Fatalf("line %d: flags %q", r.line, r.in.Flags)
			}
			for _, fl := range r.in.Flags {
				if !resident.IsFlag(fl) {
					t.Fatalf("line %d: unknown flag %q accepted", r.line, fl)
				}
			}
			if !utf8.ValidString(r.in.Name) {
				t.Fatalf("line %d: a name that is not UTF-8", r.line)
			}
		}
	})
}
