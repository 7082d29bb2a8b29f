package idnum

import (
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
)

var now = time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)

// withCheck completes 17 digits with their MOD 11-2 check character.
func withCheck(body string) string { return body + string(CheckChar(body)) }

// with2017Check completes 14 characters with their ICAO check digit.
func with2017Check(body string) string { return body + itoa(icaoCheck(body)) }

func date(y, m, d int) time.Time { return time.Date(y, time.Month(m), d, 0, 0, 0, 0, time.UTC) }

func TestCheckCharKnownExample(t *testing.T) {
	if c := CheckChar("11010519491231002"); c != 'X' {
		t.Fatalf("check char = %q, want X", c)
	}
	if CheckChar("1101051949123100") != 0 || CheckChar("1101051949123100A") != 0 {
		t.Fatal("CheckChar accepted a bad body")
	}
}

func TestParseValid(t *testing.T) {
	cases := []struct {
		in   string
		want Number
	}{
		{"11010519491231002X", Number{Raw: "11010519491231002X", Kind: KindCitizen, Region: "110105", BirthDate: date(1949, 12, 31), Sex: "F"}},
		{"11010519491231002x", Number{Raw: "11010519491231002X", Kind: KindCitizen, Region: "110105", BirthDate: date(1949, 12, 31), Sex: "F"}},
		{" \t11010519491231002X\n", Number{Raw: "11010519491231002X", Kind: KindCitizen, Region: "110105", BirthDate: date(1949, 12, 31), Sex: "F"}},
		{withCheck("41010220000229011"), Number{Kind: KindCitizen, Region: "410102", BirthDate: date(2000, 2, 29), Sex: "M"}},
		{withCheck("81000019800101001"), Number{Kind: KindCitizen, Region: "810000", BirthDate: date(1980, 1, 1), Sex: "M"}},
		{withCheck("41010219000101002"), Number{Kind: KindCitizen, Region: "410102", BirthDate: date(1900, 1, 1), Sex: "F"}},
		// born today: now is 12:00 UTC = 20:00 CST on 1 June
		{withCheck("41010220240601003"), Number{Kind: KindCitizen, Region: "410102", BirthDate: date(2024, 6, 1), Sex: "M"}},
		// 2023 five-star card: Beijing office, Kazakhstan (398), 1990-12-31, female
		{"911398199012310021", Number{Raw: "911398199012310021", Kind: KindPermanentResident, Region: "110000", BirthDate: date(1990, 12, 31), Sex: "F", Nationality: "KAZ"}},
		{withCheck("94100419850715011"), Number{Kind: KindPermanentResident, Region: "410000", BirthDate: date(1985, 7, 15), Sex: "M", Nationality: "AFG"}},
		// 2017 card: Kazakhstan, Beijing office 1100, 901231, sequence 0 (female), check 5
		{"KAZ110090123105", Number{Raw: "KAZ110090123105", Kind: KindPermanentResident2017, Region: "110000", BirthDate: date(1990, 12, 31), Sex: "F", Nationality: "KAZ"}},
		{"kaz110090123105", Number{Raw: "KAZ110090123105", Kind: KindPermanentResident2017, Region: "110000", BirthDate: date(1990, 12, 31), Sex: "F", Nationality: "KAZ"}},
		// YYMMDD: 05 → 2005, 30 → 1930 (2030 would be in the future)
		{with2017Check("USA41010501011"), Number{Kind: KindPermanentResident2017, Region: "410100", BirthDate: date(2005, 1, 1), Sex: "M", Nationality: "USA"}},
		{with2017Check("DEU31013001012"), Number{Kind: KindPermanentResident2017, Region: "310100", BirthDate: date(1930, 1, 1), Sex: "F", Nationality: "DEU"}},
		// 29 February 00 exists only in 2000
		{with2017Check("FRA44030002293"), Number{Kind: KindPermanentResident2017, Region: "440300", BirthDate: date(2000, 2, 29), Sex: "M", Nationality: "FRA"}},
	}
	for _, c := range cases {
		got, err := Parse(c.in, now)
		if err != nil {
			t.Errorf("Parse(%q): %v", c.in, err)
			continue
		}
		want := c.want
		if want.Raw == "" {
			want.Raw = strings.TrimSpace(c.in)
		}
		if got != want {
			t.Errorf("Parse(%q) = %+v, want %+v", c.in, got, want)
		}
	}
}

func TestParseInvalid(t *testing.T) {
	cases := []struct {
		name string
		in   string
		code apperr.Code
	}{
		{"empty", "", apperr.BadLength},
		{"spaces only", "   ", apperr.BadLength},
		{"17 chars", "11010519491231002", apperr.BadLength},
		{"19 chars", "11010519491231002X1", apperr.BadLength},
		{"15 digits first generation", "110105491231002", apperr.BadLength},
		{"letter inside", "1101051949A231002X", apperr.BadFormat},
		{"X not last", "1101051949123100X2", apperr.BadFormat},
		{"inner space", "110105 9491231002X", apperr.BadFormat},
		{"full-width digits", "１１０１０５１９４９１２３１００２Ｘ", apperr.BadFormat},
		{"mixed width", "11010519491231002Ｘ", apperr.BadFormat},
		{"wrong check", "110105194912310021", apperr.BadCheckDigit},
		{"transposed digits", "11010591491231002X", apperr.BadBirthDate},
		{"swap in sequence", "11010519491231020X", apperr.BadCheckDigit},
		{"province 99", withCheck("99010519491231002"), apperr.BadRegion},
		{"province 00", withCheck("00010519491231002"), apperr.BadRegion},
		{"province 10", withCheck("10010519491231002"), apperr.BadRegion},
		{"30 February", withCheck("11010519990230002"), apperr.BadBirthDate},
		{"29 February 1900", withCheck("11010519000229002"), apperr.BadBirthDate},
		{"month 13", withCheck("11010519991301002"), apperr.BadBirthDate},
		{"day 00", withCheck("11010519990100002"), apperr.BadBirthDate},
		{"tomorrow in China", withCheck("11010520240602002"), apperr.BadBirthDate},
		{"far future", withCheck("11010530000101002"), apperr.BadBirthDate},
		{"before 1900", withCheck("11010518991231002"), apperr.BadBirthDate},
		{"2023 wrong check", "911398199012310022", apperr.BadCheckDigit},
		{"2023 province 99", withCheck("99939819901231002"), apperr.BadRegion},
		{"2023 Taiwan office", withCheck("97139819901231002"), apperr.BadRegion},
		{"2023 nationality 999", withCheck("91199919901231002"), apperr.BadNationality},
		{"2023 nationality China", withCheck("91115619901231002"), apperr.BadNationality},
		{"2023 nationality Hong Kong", withCheck("91134419901231002"), apperr.BadNationality},
		{"2023 31 April", withCheck("91139819900431002"), apperr.BadBirthDate},
		{"2023 X inside", "9113981990123100X1", apperr.BadFormat},
		{"2017 wrong check", "KAZ110090123107", apperr.BadCheckDigit},
		{"2017 unknown nationality", with2017Check("KAA11009012310"), apperr.BadNationality},
		{"2017 China", with2017Check("CHN11009012310"), apperr.BadNationality},
		{"2017 province 99", with2017Check("KAZ99009012310"), apperr.BadRegion},
		{"2017 31 February", with2017Check("KAZ11009002310"), apperr.BadBirthDate},
		{"2017 29 February 01", with2017Check("KAZ11000102290"), apperr.BadBirthDate},
		{"2017 digit in letters", "KA7110090123105", apperr.BadFormat},
		{"2017 letter in digits", "KAZ11009012310A", apperr.BadFormat},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(c.in, now)
			if got := apperr.CodeOf(err); got != c.code {
				t.Fatalf("Parse(%q) code = %q (%v), want %q", c.in, got, err, c.code)
			}
			e := apperr.As(err)
			if e.Detail == "" || e.DetailZh == "" {
				t.Errorf("missing detail: %+v", e)
			}
			if e.Field != "id_number" {
				t.Errorf("field = %q", e.Field)
			}
			// Never echo the number (or its birth date) in an error.
			if n := strings.TrimSpace(c.in); len(n) >= 8 && (strings.Contains(e.Error(), n) || strings.Contains(e.DetailZh, n)) {
				t.Errorf("error text repeats the number: %v", e)
			}
			if len(c.in) == 18 && strings.Contains(e.Error(), c.in[6:14]) {
				t.Errorf("error text repeats the birth date: %v", e)
			}
		})
	}
}

func TestTodayIsChinaDate(t *testing.T) {
	// 2024-06-01 17:00 UTC is already 2 June in China.
	late := time.Date(2024, 6, 1, 17, 0, 0, 0, time.UTC)
	if _, err := Parse(withCheck("11010520240602002"), late); err != nil {
		t.Fatalf("born on the Chinese today: %v", err)
	}
	if _, err := Parse(withCheck("11010520240603002"), late); apperr.CodeOf(err) != apperr.BadBirthDate {
		t.Fatalf("born tomorrow: %v", err)
	}
}

func TestCheckDigitCatchesSingleErrors(t *testing.T) {
	// MOD 11-2 catches every single-character substitution.
	valid := "11010519491231002X"
	for i := 0; i < 18; i++ {
		for _, c := range "0123456789X" {
			if byte(c) == valid[i] {
				continue
			}
			s := valid[:i] + string(c) + valid[i+1:]
			if _, err := Parse(s, now); err == nil {
				t.Fatalf("substitution at %d accepted: %s", i, s)
			}
		}
	}
}

func TestCheckResultJSON(t *testing.T) {
	b, _ := json.Marshal(CheckResult("11010519491231002X", now))
	if want := `{"valid":true,"kind":"citizen","region":"110105","birth_date":"1949-12-31","sex":"F"}`; string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
	b, _ = json.Marshal(CheckResult("911398199012310021", now))
	if want := `{"valid":true,"kind":"permanent_resident","region":"110000","birth_date":"1990-12-31","sex":"F","nationality":"KAZ"}`; string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
	b, _ = json.Marshal(CheckResult("110105194912310021", now))
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["valid"] != false {
		t.Fatalf("invalid result has extra members: %s", b)
	}
	e := got["error"].(map[string]any)
	if len(e) != 3 || e["code"] != "bad_check_digit" || e["message"] == "" || e["message_zh"] == "" {
		t.Fatalf("error object: %s", b)
	}
}

func TestMask(t *testing.T) {
	cases := map[string]string{
		"11010519491231002X":   "1101**********002X",
		" 11010519491231002x ": "1101**********002X",
		"KAZ110090123105":      "KAZ1*******3105",
		"123456789":            "1234*6789",
		"12345678":             "********",
		"1":                    "*",
		"":                     "",
		"张三李四王五赵六钱七":           "张三李四**赵六钱七",
	}
	for in, want := range cases {
		if got := Mask(in); got != want {
			t.Errorf("Mask(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestGenerateRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	regions := []string{"410102", "110105", "310115", "650102", "330106"}
	for i := 0; i < 3000; i++ {
		kind := []string{KindCitizen, KindPermanentResident, KindPermanentResident2017}[i%3]
		birth := date(1925+rng.IntN(99), 1+rng.IntN(12), 1+rng.IntN(28))
		sex := []string{"M", "F"}[rng.IntN(2)]
		region := regions[rng.IntN(len(regions))]
		s := Generate(rng, kind, region, birth, sex)
		n, err := Parse(s, now)
		if err != nil {
			t.Fatalf("Generate(%s,%s,%s,%s) = %q: %v", kind, region, birth.Format(time.DateOnly), sex, s, err)
		}
		if n.Kind != kind || !n.BirthDate.Equal(birth) || n.Sex != sex {
			t.Fatalf("%q parsed as %+v", s, n)
		}
		switch kind {
		case KindCitizen:
			if n.Region != region || n.Nationality != "" {
				t.Fatalf("%q parsed as %+v", s, n)
			}
		case KindPermanentResident:
			if n.Region != region[:2]+"0000" || n.Nationality == "" {
				t.Fatalf("%q parsed as %+v", s, n)
			}
		case KindPermanentResident2017:
			if n.Region != region[:4]+"00" || n.Nationality == "" {
				t.Fatalf("%q parsed as %+v", s, n)
			}
		}
	}
	if s := GenerateNationality(rng, KindPermanentResident, "410102", "USA", date(1980, 5, 6), "M"); s[3:6] != "840" {
		t.Fatalf("nationality not used: %s", s)
	}
}

func TestGenerateRejectsBadInput(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	b := date(1980, 1, 1)
	for _, c := range []struct{ kind, region, nat, sex string }{
		{"passport", "410102", "USA", "M"},
		{KindCitizen, "990102", "", "M"},
		{KindCitizen, "4101", "", "M"},
		{KindCitizen, "410102", "", "X"},
		{KindPermanentResident, "710000", "USA", "F"},
		{KindPermanentResident, "410000", "CHN", "F"},
		{KindPermanentResident2017, "41", "USA", "F"},
		{KindPermanentResident2017, "4101", "ZZZ", "F"},
	} {
		if s := GenerateNationality(rng, c.kind, c.region, c.nat, b, c.sex); s != "" {
			t.Errorf("GenerateNationality(%+v) = %q, want \"\"", c, s)
		}
	}
	if s := Generate(rng, KindCitizen, "410102", date(1899, 1, 1), "M"); s != "" {
		t.Errorf("born 1899: %q", s)
	}
}

func TestNationalityTable(t *testing.T) {
	if len(alphaToNum) != 249 || len(numToAlpha) != 249 {
		t.Fatalf("table has %d/%d codes", len(alphaToNum), len(numToAlpha))
	}
	for a, n := range map[string]string{"USA": "840", "DEU": "276", "KAZ": "398", "GBR": "826", "AFG": "004", "ZWE": "716", "SSD": "728"} {
		if NumericNationality(a) != n {
			t.Errorf("%s → %s, want %s", a, NumericNationality(a), n)
		}
	}
	for _, a := range Nationalities() {
		if notForeign[a] {
			t.Errorf("Nationalities lists %s", a)
		}
	}
}

func TestAge(t *testing.T) {
	b := date(2000, 2, 29)
	cases := []struct {
		at   time.Time
		want int
	}{
		{time.Date(2001, 2, 28, 12, 0, 0, 0, cst), 0},
		{time.Date(2001, 3, 1, 0, 0, 0, 0, cst), 1},
		{time.Date(2004, 2, 29, 0, 0, 0, 0, cst), 4},
		{time.Date(2004, 2, 28, 15, 59, 0, 0, time.UTC), 3}, // 23:59 CST
		{time.Date(2004, 2, 28, 16, 0, 0, 0, time.UTC), 4},  // 00:00 CST on the 29th
		{time.Date(1999, 1, 1, 0, 0, 0, 0, cst), 0},
	}
	for _, c := range cases {
		if got := Age(b, c.at); got != c.want {
			t.Errorf("Age at %v = %d, want %d", c.at, got, c.want)
		}
	}
}
