package idnum

import (
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
)

// Result is the JSON answer of `yikatong id check` (CONTRACT.md):
//
//	{"valid":true,"kind":"citizen","region":"110105","birth_date":"1949-12-31","sex":"F"}
//	{"valid":false,"error":{"code":"bad_check_digit","message":"…","message_zh":"…"}}
//
// Permanent residents also carry "nationality" (ISO 3166-1 alpha-3).
type Result struct {
	Valid       bool         `json:"valid"`
	Kind        string       `json:"kind,omitempty"`
	Region      string       `json:"region,omitempty"`
	BirthDate   string       `json:"birth_date,omitempty"`
	Sex         string       `json:"sex,omitempty"`
	Nationality string       `json:"nationality,omitempty"`
	Error       *apperr.JSON `json:"error,omitempty"`
}

// CheckResult validates s as of now and returns the CLI's answer.
func CheckResult(s string, now time.Time) Result {
	n, err := Parse(s, now)
	if err != nil {
		j := apperr.ToJSON(err)
		j.Field = "" // the CLI has one input; keep the contract's three members
		return Result{Valid: false, Error: &j}
	}
	return Result{
		Valid:       true,
		Kind:        n.Kind,
		Region:      n.Region,
		BirthDate:   n.BirthDate.Format(time.DateOnly),
		Sex:         n.Sex,
		Nationality: n.Nationality,
	}
}
