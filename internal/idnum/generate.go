package idnum

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// Generate returns a valid number of the given kind for a person born on
// birth (its date is used as is) of sex "M" or "F", with a random sequence
// drawn from rng. region is a GB/T 2260 code: all 6 digits are used for a
// citizen, the first 2 (the province) for a 2023 permanent residence card,
// the first 4 for a 2017 card. Permanent residents get a random nationality;
// use GenerateNationality to choose it. It returns "" when the inputs cannot
// make a valid number (unknown kind or sex, bad region, birth before 1900).
// It is meant for the demo city and tests.
func Generate(rng *rand.Rand, kind, region string, birth time.Time, sex string) string {
	nats := Nationalities()
	return GenerateNationality(rng, kind, region, nats[rng.IntN(len(nats))], birth, sex)
}

// GenerateNationality is Generate with a chosen ISO 3166-1 alpha-3
// nationality (ignored for citizens).
func GenerateNationality(rng *rand.Rand, kind, region, nationality string, birth time.Time, sex string) string {
	if sex != "M" && sex != "F" {
		return ""
	}
	y, m, d := birth.Date()
	if y < 1900 || y > 9999 || len(region) < 2 || !isDigits(region) {
		return ""
	}
	date8 := fmt.Sprintf("%04d%02d%02d", y, int(m), d)
	// sequence 1..999 with odd for men, even for women
	seq := 2*rng.IntN(499) + 2
	if sex == "M" {
		seq = 2*rng.IntN(500) + 1
	}
	switch kind {
	case KindCitizen:
		if len(region) != 6 {
			return ""
		}
		if _, ok := provinces[region[:2]]; !ok {
			return ""
		}
		body := region + date8 + fmt.Sprintf("%03d", seq)
		return body + string(CheckChar(body))
	case KindPermanentResident:
		num, ok := alphaToNum[nationality]
		if !ok || notForeign[nationality] || !provinces[region[:2]] {
			return ""
		}
		body := "9" + region[:2] + num + date8 + fmt.Sprintf("%03d", seq)
		return body + string(CheckChar(body))
	case KindPermanentResident2017:
		if _, ok := alphaToNum[nationality]; !ok || notForeign[nationality] || len(region) < 4 || !provinces[region[:2]] {
			return ""
		}
		body := nationality + region[:4] + date8[2:] + fmt.Sprintf("%d", seq%10)
		return body + fmt.Sprintf("%d", icaoCheck(body))
	}
	return ""
}
