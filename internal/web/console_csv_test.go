package web

import (
	"strings"
	"testing"
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
