package web

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/text/encoding/simplifiedchinese"

	"github.com/yikatong/yikatong/internal/apperr"
)

func TestMoneyFormats(t *testing.T) {
	for fen, want := range map[int64][3]string{
		0:          {"0.00", "¥0.00", "+¥0.00"},
		5:          {"0.05", "¥0.05", "+¥0.05"},
		-200:       {"-2.00", "−¥2.00", "−¥2.00"},
		15000:      {"150.00", "¥150.00", "+¥150.00"},
		10000000:   {"100,000.00", "¥100,000.00", "+¥100,000.00"},
		-123456789: {"-1,234,567.89", "−¥1,234,567.89", "−¥1,234,567.89"},
	} {
		if g := [3]string{yuanGrouped(fen), money(fen), signedMoney(fen)}; g != want {
			t.Errorf("%d: %q, want %q", fen, g, want)
		}
	}
}

// Every transfer kind written in internal/ (grep "Kind:") has a label in
// both languages.
func TestEveryTransferKindHasALabel(t *testing.T) {
	for _, k := range []string{"topup", "medical_contribution", "reversal", "scan_charge", "scan_payout", "scan_medical", "scan_credit",
		"debt_collection", "subsidy", "subsidy_funding", "fed_charge", "fed_medical", "fed_credit", "fed_adjust", "fed_loss"} {
		m, ok := messages["kind."+k]
		if !ok || m[0] == "" || m[1] == "" || strings.Contains(m[0], "_") {
			t.Errorf("kind %s: %q", k, m)
		}
	}
}

func TestMemoText(t *testing.T) {
	m := "cross-city fare corrected / 异地消费调整"
	if memoText("zh", m) != "异地消费调整" || memoText("en", m) != "cross-city fare corrected" || memoText("zh", "plain") != "plain" {
		t.Fatal(memoText("zh", m), memoText("en", m))
	}
}

// A file saved by Chinese Excel (GBK), with Chinese column names and
// category labels, reads like the English UTF-8 one.
func TestEnrolCSVFromChineseExcel(t *testing.T) {
	text := "姓名,证件号码,人员类别,密码\r\n张三,11010519491231002X,本市户籍,\r\n李四,11010519491231002X,参保异地,\r\n王五,11010519491231002X,外国人永久居留,\r\n赵六,11010519491231002X,\"Insured, non-local\"\r\n"
	gbk, err := simplifiedchinese.GBK.NewEncoder().Bytes([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if utf8.Valid(gbk) {
		t.Fatal("the test file is valid UTF-8")
	}
	rows, err := parseEnrolCSV(bytes.NewReader(utf8Text(gbk)))
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ name, cat string }{{"张三", "local"}, {"李四", "insured_nonlocal"}, {"王五", "permanent_resident"}, {"赵六", "insured_nonlocal"}}
	if len(rows) != len(want) {
		t.Fatalf("%d rows", len(rows))
	}
	for i, w := range want {
		if rows[i].in.Name != w.name || rows[i].in.Category != w.cat || rows[i].in.IDNumber != "11010519491231002X" {
			t.Errorf("row %d: %+v", i, rows[i].in)
		}
	}
	for _, c := range [][2]string{{"本市户籍", "local"}, {"本地", "local"}, {"参保非本市户籍", "insured_nonlocal"}, {"异地参保", "insured_nonlocal"},
		{"Foreign permanent resident", "permanent_resident"}, {"local", "local"}, {"unknown", "unknown"}} {
		if g := categoryCode(c[0]); g != c[1] {
			t.Errorf("%s: %s, want %s", c[0], g, c[1])
		}
	}
}

func TestParseYuanForms(t *testing.T) {
	for in, want := range map[string]int64{"2": 200, "2.5": 250, "10,000.00": 1_000_000, "1,234,567.8": 123_456_780, "６０": 6000,
		"６０．５": 6050, "60元": 6000, "¥60": 6000, "￥ 1,000 元": 100_000, " 150.00 ": 15000} {
		if g, err := parseYuan(in); err != nil || g != want {
			t.Errorf("%q: %d %v, want %d", in, g, err, want)
		}
	}
	for _, in := range []string{"", "1,00", "10,0000", "2.555", "-1", "abc", "1.2.3", ",100"} {
		if g, err := parseYuan(in); err == nil {
			t.Errorf("%q: %d, want refused", in, g)
		}
	}
	// Below zero is said as such, not as a format error.
	for _, in := range []string{"-1", "－5", "¥-2.50", "-0.01元"} {
		if _, err := parseYuan(in); err == nil || !strings.Contains(zhText(err), "金额不能为负数") {
			t.Errorf("%q: %v, want 'cannot be below zero'", in, err)
		}
	}
	if _, err := parseDay("11/01/2026", "from"); err == nil || !strings.Contains(err.Error(), "year-month-day") {
		t.Fatalf("date error: %v", err)
	}
}

func zhText(err error) string {
	_, zh := apperr.As(err).Text()
	return zh
}
