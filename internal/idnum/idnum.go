// Package idnum parses and validates the identity numbers a resident may
// enrol with, and masks them for display.
//
// Three kinds are recognised:
//
//   - "citizen": the 18-character citizen ID number of GB 11643-1999
//     (公民身份号码): 6-digit address code (GB/T 2260), 8-digit birth date
//     YYYYMMDD, 3-digit sequence (odd = male, even = female) and an
//     ISO 7064 MOD 11-2 check character (0-9 or X). The first two digits must
//     be a province-level code; 81/82/83 are accepted because the residence
//     permits of Hong Kong, Macao and Taiwan residents carry citizen-format
//     numbers starting 810000/820000/830000. Only the province part of the
//     address code is checked: county codes change every year and a stale
//     table would reject real people.
//   - "permanent_resident": the 2023 foreign permanent resident ID card
//     (新版外国人永久居留身份证, the "five-star card"), 18 characters laid out
//     like a citizen number: "9", the 2-digit province code of the accepting
//     office, the 3-digit ISO 3166-1 numeric nationality code, the birth date
//     YYYYMMDD, a 3-digit sequence (odd = male) and the same MOD 11-2 check
//     character (National Immigration Administration, machine-readable
//     information rules, 2023 edition).
//   - "permanent_resident_2017": the 15-character number of the 2017 (and
//     2004) permanent residence card: ISO 3166-1 alpha-3 nationality (3
//     letters), the 4-digit code of the accepting office (2-digit province +
//     2-digit city), the birth date YYMMDD, one sequence digit (odd = male)
//     and one check digit. The immigration administration publishes only
//     "3 letters + 12 digits"; the check digit is the ICAO 9303 7-3-1 check
//     digit over the first 14 characters (letters A=10 … Z=35), as
//     implemented by established Chinese credential validators and matching
//     the card's machine-readable zone. The century of YYMMDD is the latest
//     one that does not put the birth date in the future.
//
// What is checked, for every kind: length, character set, province code,
// nationality code (an assigned ISO 3166-1 code other than China's own,
// Hong Kong's, Macao's and Taiwan's, whose people hold other documents),
// that the birth date is a real calendar date between 1900-01-01 and today
// (China Standard Time), and the check character. Input is trimmed of
// surrounding white space and upper-cased (so "x" becomes "X").
//
// Error texts never repeat the number or its birth date: they name the part
// that is wrong.
package idnum

import (
	"strings"
	"time"
	"unicode/utf8"

	"github.com/yikatong/yikatong/internal/apperr"
)

// Kinds of numbers.
const (
	KindCitizen               = "citizen"
	KindPermanentResident     = "permanent_resident"
	KindPermanentResident2017 = "permanent_resident_2017"
)

// Number is a parsed, valid identity number.
type Number struct {
	// Raw is the normalised number (trimmed, upper-case).
	Raw  string
	Kind string
	// Region is the 6-digit GB/T 2260 code: the citizen's address code, or
	// the accepting office's province (2023 card, "xx0000") or city (2017
	// card, "xxxx00").
	Region string
	// BirthDate is midnight UTC of the birth date.
	BirthDate time.Time
	// Sex is "M" or "F".
	Sex string
	// Nationality is the ISO 3166-1 alpha-3 code for permanent residents, ""
	// for citizens.
	Nationality string
}

// China Standard Time, used to decide what "today" is for birth dates.
var cst = time.FixedZone("CST", 8*3600)

// earliest accepted birth date.
var minBirth = time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC)

// provinces holds the province-level codes of GB/T 2260 (plus 83, see the
// package doc). mainland marks those with an immigration office that issues
// permanent residence cards.
var provinces = map[string]bool{
	"11": true, "12": true, "13": true, "14": true, "15": true,
	"21": true, "22": true, "23": true,
	"31": true, "32": true, "33": true, "34": true, "35": true, "36": true, "37": true,
	"41": true, "42": true, "43": true, "44": true, "45": true, "46": true,
	"50": true, "51": true, "52": true, "53": true, "54": true,
	"61": true, "62": true, "63": true, "64": true, "65": true,
	"71": false, "81": false, "82": false, "83": false,
}

// weights of ISO 7064 MOD 11-2 for the 17 body digits.
var weights = [17]int{7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2}

const checkChars = "10X98765432"

// CheckChar returns the MOD 11-2 check character for 17 digits. It returns 0
// if body is not 17 ASCII digits.
func CheckChar(body string) byte {
	if len(body) != 17 {
		return 0
	}
	sum := 0
	for i := 0; i < 17; i++ {
		c := body[i]
		if c < '0' || c > '9' {
			return 0
		}
		sum += int(c-'0') * weights[i]
	}
	return checkChars[sum%11]
}

// icaoCheck returns the ICAO 9303 check digit (weights 7,3,1; A=10 … Z=35)
// of s, or -1 on a character outside 0-9, A-Z.
func icaoCheck(s string) int {
	w := [3]int{7, 3, 1}
	sum := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		var v int
		switch {
		case c >= '0' && c <= '9':
			v = int(c - '0')
		case c >= 'A' && c <= 'Z':
			v = int(c-'A') + 10
		default:
			return -1
		}
		sum += v * w[i%3]
	}
	return sum % 10
}

// Normalize trims surrounding white space and upper-cases ASCII letters.
func Normalize(s string) string {
	return strings.ToUpper(strings.TrimSpace(s))
}

func errf(code apperr.Code, en, zh string) *apperr.Error {
	e := apperr.Newf(code, en, zh)
	e.Field = "id_number"
	return e
}

// Parse validates s as of now and returns the parsed number or an
// *apperr.Error with code bad_length, bad_format, bad_region,
// bad_birth_date, bad_check_digit or bad_nationality.
func Parse(s string, now time.Time) (Number, error) {
	s = Normalize(s)
	n := utf8.RuneCountInString(s)
	switch {
	case n == 0:
		return Number{}, errf(apperr.BadLength, "the ID number is empty", "证件号码为空")
	case n != len(s):
		return Number{}, errf(apperr.BadFormat,
			"the ID number may contain only digits, the letter X and (2017 permanent residence cards) three leading letters",
			"证件号码只能包含数字、字母X（2017版永久居留证为开头三个字母）")
	case n == 18:
		if s[0] == '9' {
			return parse2023(s, now)
		}
		return parseCitizen(s, now)
	case n == 15:
		if isDigits(s) {
			return Number{}, errf(apperr.BadLength,
				"15-digit first-generation ID numbers are no longer valid: enter the 18-character number",
				"15位第一代身份证号码已停止使用，请输入18位号码")
		}
		return parse2017(s, now)
	default:
		return Number{}, errf(apperr.BadLength,
			"an ID number has 18 characters (citizen ID or 2023 permanent residence card) or 15 characters (2017 permanent residence card); this one has "+itoa(n),
			"证件号码应为18位（居民身份证或2023版永久居留身份证）或15位（2017版永久居留身份证），输入为"+itoa(n)+"位")
	}
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}

// Contains reports whether s holds a valid ID number (Parse at now: an
// 18-character citizen or 2023 permanent residence card number, or a
// 15-character 2017 permanent residence card number), alone or within
// other text, in upper or lower case: a reference or note that would
// keep one where it must not be. Only candidates of the right form (and,
// for 18 characters, check character) are parsed: a 64-digit string
// costs microseconds.
func Contains(s string, now time.Time) bool {
	s = strings.ToUpper(s)
	valid := func(c string) bool { _, err := Parse(c, now); return err == nil }
	for i := 0; i+15 <= len(s); i++ {
		if i+18 <= len(s) && isDigits(s[i:i+17]) && CheckChar(s[i:i+17]) == s[i+17] && valid(s[i:i+18]) {
			return true
		}
		if isUpper(s[i:i+3]) && isDigits(s[i+3:i+15]) && valid(s[i:i+15]) {
			return true
		}
	}
	return false
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 'A' || s[i] > 'Z' {
			return false
		}
	}
	return true
}

// check18 validates the character set shared by the two 18-character kinds:
// 17 digits then a digit or X.
func check18(s string) error {
	if !isDigits(s[:17]) || !(isDigits(s[17:]) || s[17] == 'X') {
		return errf(apperr.BadFormat,
			"the first 17 characters must be digits and the last a digit or X",
			"前17位必须为数字，最后一位为数字或X")
	}
	return nil
}

func checkDigit18(s string) error {
	if CheckChar(s[:17]) != s[17] {
		return errf(apperr.BadCheckDigit,
			"the check character (the 18th) does not match the first 17 digits: a digit was probably mistyped",
			"校验位（第18位）与前17位不符，可能有数字输入错误")
	}
	return nil
}

func parseCitizen(s string, now time.Time) (Number, error) {
	if err := check18(s); err != nil {
		return Number{}, err
	}
	if _, ok := provinces[s[:2]]; !ok {
		return Number{}, errf(apperr.BadRegion,
			"the first two digits ("+s[:2]+") are not a province-level region code (GB/T 2260)",
			"前两位（"+s[:2]+"）不是省级行政区划代码（GB/T 2260）")
	}
	birth, err := birthDate(s[6:14], now)
	if err != nil {
		return Number{}, err
	}
	if err := checkDigit18(s); err != nil {
		return Number{}, err
	}
	return Number{Raw: s, Kind: KindCitizen, Region: s[:6], BirthDate: birth, Sex: sexOf(s[16])}, nil
}

func parse2023(s string, now time.Time) (Number, error) {
	if err := check18(s); err != nil {
		return Number{}, err
	}
	if !provinces[s[1:3]] {
		return Number{}, errf(apperr.BadRegion,
			"characters 2-3 ("+s[1:3]+") are not the province code of a mainland office that issues permanent residence cards",
			"第2-3位（"+s[1:3]+"）不是签发永久居留身份证的内地省级行政区划代码")
	}
	nat, err := nationalityNumeric(s[3:6])
	if err != nil {
		return Number{}, err
	}
	birth, err := birthDate(s[6:14], now)
	if err != nil {
		return Number{}, err
	}
	if err := checkDigit18(s); err != nil {
		return Number{}, err
	}
	return Number{Raw: s, Kind: KindPermanentResident, Region: s[1:3] + "0000", BirthDate: birth, Sex: sexOf(s[16]), Nationality: nat}, nil
}

func parse2017(s string, now time.Time) (Number, error) {
	if !isUpper(s[:3]) || !isDigits(s[3:]) {
		return Number{}, errf(apperr.BadFormat,
			"a 15-character permanent residence card number is 3 letters followed by 12 digits",
			"15位永久居留证号码应为3位字母加12位数字")
	}
	nat, err := nationalityAlpha(s[:3])
	if err != nil {
		return Number{}, err
	}
	if !provinces[s[3:5]] {
		return Number{}, errf(apperr.BadRegion,
			"characters 4-5 ("+s[3:5]+") are not the province code of a mainland office that issues permanent residence cards",
			"第4-5位（"+s[3:5]+"）不是签发永久居留证的内地省级行政区划代码")
	}
	birth, err := birthDate6(s[7:13], now)
	if err != nil {
		return Number{}, err
	}
	if icaoCheck(s[:14]) != int(s[14]-'0') {
		return Number{}, errf(apperr.BadCheckDigit,
			"the check digit (the 15th character) does not match the first 14: a character was probably mistyped",
			"校验位（第15位）与前14位不符，可能有字符输入错误")
	}
	return Number{Raw: s, Kind: KindPermanentResident2017, Region: s[3:7] + "00", BirthDate: birth, Sex: sexOf(s[13]), Nationality: nat}, nil
}

func sexOf(c byte) string {
	if (c-'0')%2 == 1 {
		return "M"
	}
	return "F"
}

func today(now time.Time) time.Time {
	y, m, d := now.In(cst).Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

func errBirth() *apperr.Error {
	return errf(apperr.BadBirthDate,
		"the birth date part is not a real calendar date", "出生日期部分不是真实存在的日期")
}

// birthDate parses YYYYMMDD (digits already checked).
func birthDate(s string, now time.Time) (time.Time, error) {
	y := atoi(s[:4])
	m := atoi(s[4:6])
	d := atoi(s[6:8])
	t, ok := realDate(y, m, d)
	if !ok {
		return time.Time{}, errBirth()
	}
	if t.Before(minBirth) {
		return time.Time{}, errf(apperr.BadBirthDate,
			"the birth date is before 1900", "出生日期早于1900年")
	}
	if t.After(today(now)) {
		return time.Time{}, errf(apperr.BadBirthDate,
			"the birth date is in the future", "出生日期晚于今天")
	}
	return t, nil
}

// birthDate6 parses YYMMDD choosing the latest century that is not in the future.
func birthDate6(s string, now time.Time) (time.Time, error) {
	yy := atoi(s[:2])
	m := atoi(s[2:4])
	d := atoi(s[4:6])
	td := today(now)
	for _, century := range []int{2000, 1900} {
		t, ok := realDate(century+yy, m, d)
		if !ok {
			continue // 29 February may exist in one century only (1900 vs 2000)
		}
		if t.After(td) {
			continue
		}
		return t, nil
	}
	if _, ok := realDate(2000+yy, m, d); !ok {
		if _, ok := realDate(1900+yy, m, d); !ok {
			return time.Time{}, errBirth()
		}
	}
	return time.Time{}, errf(apperr.BadBirthDate,
		"the birth date is in the future", "出生日期晚于今天")
}

func realDate(y, m, d int) (time.Time, bool) {
	if m < 1 || m > 12 || d < 1 || d > 31 {
		return time.Time{}, false
	}
	t := time.Date(y, time.Month(m), d, 0, 0, 0, 0, time.UTC)
	if t.Year() != y || int(t.Month()) != m || t.Day() != d {
		return time.Time{}, false
	}
	return t, true
}

func atoi(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		n = n*10 + int(s[i]-'0')
	}
	return n
}

// Mask returns s (trimmed) with all but the first 4 and last 4 characters
// replaced by '*', e.g. "4101**********123X". Inputs of 8 characters or
// fewer are masked entirely. It never panics.
func Mask(s string) string {
	r := []rune(Normalize(s))
	if len(r) <= 8 {
		return strings.Repeat("*", len(r))
	}
	for i := 4; i < len(r)-4; i++ {
		r[i] = '*'
	}
	return string(r)
}

// Age returns the age in completed years at the instant at (China Standard
// Time) of someone born on birth's calendar date. Someone born on 29
// February becomes a year older on 1 March in common years.
func Age(birth, at time.Time) int {
	by, bm, bd := birth.Date()
	ay, am, ad := at.In(cst).Date()
	age := ay - by
	if am < bm || (am == bm && ad < bd) {
		age--
	}
	if age < 0 {
		return 0
	}
	return age
}
