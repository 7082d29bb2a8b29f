package resident

import (
	"context"
	"database/sql"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store"
)

// Holder flags: what a resident is, beyond the category, that scenarios'
// rules and concessions ask about (catalog: require_any_flag, a
// concession's any_flag). Staff (hr_admin) set them; they are personal
// data (disabled is health data), so they are kept only inside the
// resident's sealed blob, never in a column of their own.
//
// The age flags (senior_60, senior_65) are not holder flags: they follow
// from the birth date, which a node computes at each scan (node.HolderFlags
// puts them into e-codes).
const (
	FlagStudent  = "student"
	FlagTeacher  = "teacher"
	FlagDisabled = "disabled"
	FlagVeteran  = "veteran"
)

// FlagInfo is a holder flag with its labels for pages.
type FlagInfo struct {
	Flag   string `json:"flag"`
	NameZh string `json:"name_zh"`
	NameEn string `json:"name_en"`
}

// KnownFlags is the fixed set of holder flags, in display order.
var KnownFlags = []FlagInfo{
	{FlagStudent, "学生", "Student"},
	{FlagTeacher, "教师", "Teacher"},
	{FlagDisabled, "残疾人", "Disabled"},
	{FlagVeteran, "现役军人或退役军人", "Service member or veteran"},
}

// IsFlag reports whether f is one of the holder flags.
func IsFlag(f string) bool {
	for _, k := range KnownFlags {
		if k.Flag == f {
			return true
		}
	}
	return false
}

// NormalizeFlags checks flags against the known set and returns them
// sorted and unique (nil for none). Surrounding spaces and upper case are
// forgiven; an unknown flag is validation_failed on field "flags".
func NormalizeFlags(flags []string) ([]string, error) {
	var out []string
	for _, f := range flags {
		f = strings.ToLower(strings.TrimSpace(f))
		if f == "" {
			continue
		}
		if !IsFlag(f) {
			q := strconv.Quote(clipFlag(f))
			return nil, apperr.Invalid("flags",
				"unknown holder flag "+q+": the flags are student, teacher, disabled and veteran",
				"未知的身份标记 "+q+"：可选标记为 student（学生）、teacher（教师）、disabled（残疾人）、veteran（现役军人或退役军人）")
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	slices.Sort(out)
	return out, nil
}

// flagAliases are the other names people write for the holder flags:
// common Chinese variants, besides each flag's code and its labels in
// KnownFlags (which FlagNamed accepts too).
var flagAliases = map[string]string{
	"老师": FlagTeacher, "教职工": FlagTeacher,
	"残疾": FlagDisabled, "残障": FlagDisabled, "残障人士": FlagDisabled, "残疾人士": FlagDisabled,
	"军人": FlagVeteran, "现役军人": FlagVeteran, "退役军人": FlagVeteran, "退伍军人": FlagVeteran,
}

// FlagNamed returns the holder flag that name stands for: its code
// ("student"), its label in either language ("学生", "Student"), or a
// common Chinese variant ("老师", "退役军人"); case and surrounding spaces
// do not matter. ok is false for anything else.
func FlagNamed(name string) (flag string, ok bool) {
	t := strings.ToLower(strings.TrimSpace(name))
	if t == "" {
		return "", false
	}
	for _, k := range KnownFlags {
		if t == k.Flag || t == strings.ToLower(k.NameEn) || t == k.NameZh {
			return k.Flag, true
		}
	}
	f, ok := flagAliases[t]
	return f, ok
}

// FlagListSeparators are the characters FlagsFromText splits a list of
// flags on: ";" (the documented one), "|", and the Chinese "；", "、", "｜";
// a comma too, for a quoted CSV field.
const FlagListSeparators = ";|；、｜,，"

// FlagsFromText reads a list of holder flags written by a person, as in a
// spreadsheet cell: names (FlagNamed) separated by ";" (or another of
// FlagListSeparators), e.g. "学生;残疾人" or "student|disabled". An empty
// text, "无" or "none" is no flags. It returns the flags as
// NormalizeFlags does (sorted, unique, nil for none). An unknown name is
// validation_failed on field "flags", naming it.
func FlagsFromText(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if t := strings.ToLower(s); t == "" || t == "无" || t == "none" {
		return nil, nil
	}
	var flags []string
	for _, name := range strings.FieldsFunc(s, func(r rune) bool { return strings.ContainsRune(FlagListSeparators, r) }) {
		if strings.TrimSpace(name) == "" {
			continue
		}
		f, ok := FlagNamed(name)
		if !ok {
			var zh, en []string
			for _, k := range KnownFlags {
				zh, en = append(zh, k.NameZh), append(en, k.Flag)
			}
			q := strconv.Quote(clipFlag(strings.TrimSpace(name)))
			return nil, apperr.Invalid("flags",
				"unknown holder flag "+q+": write "+strings.Join(en, ", ")+" (or "+strings.Join(zh, ", ")+"), several separated by \";\"",
				"未知的身份标记 "+q+"：可填 "+strings.Join(zh, "、")+"（或 "+strings.Join(en, "、")+"），多个标记以“;”分隔")
		}
		flags = append(flags, f)
	}
	return NormalizeFlags(flags)
}

// clipFlag shortens a bad flag for an error message.
func clipFlag(f string) string {
	if r := []rune(f); len(r) > 32 {
		return string(r[:32]) + "…"
	}
	return f
}

// stampFlags records holder flags in a resident's sealed blob with who
// set them and when: SetFlags and an enrolment with flags both seal them
// this way.
func (p *pii) stampFlags(flags []string, actor string, at time.Time) {
	p.Flags, p.FlagsBy, p.FlagsAt = flags, actor, at.UnixMilli()
}

// SetFlags replaces a resident's holder flags (nil or empty: none) and
// returns the resident as stored. Errors: validation_failed for an
// unknown flag, not_found. The change is sealed with the rest of the
// resident's personal data, with who made it and when; callers audit it.
// Caches of residents (OnChange) forget the resident before it returns,
// so the next scan in this process decides with the new flags.
func (s *Service) SetFlags(ctx context.Context, residentID string, flags []string, actor string) (Resident, error) {
	fl, err := NormalizeFlags(flags)
	if err != nil {
		return Resident{}, err
	}
	var out Resident
	err = s.db.Tx(ctx, func(tx *sql.Tx) error {
		q := `SELECT ` + residentCols + ` FROM residents WHERE id = $1`
		if s.db.Dialect == store.Postgres {
			q += ` FOR UPDATE`
		}
		r, p, err := s.scanResidentPII(tx.QueryRowContext(ctx, q, residentID))
		if err != nil {
			return err
		}
		now := s.now()
		p.stampFlags(fl, actor, now)
		plain, err := json.Marshal(p)
		if err != nil {
			return apperr.Wrap(apperr.Internal, err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE residents SET pii = $2 WHERE id = $1`, residentID, s.v.Seal(plain, residentID)); err != nil {
			return err
		}
		r.Flags, r.FlagsSetBy, r.FlagsSetAt = fl, actor, time.UnixMilli(p.FlagsAt).UTC()
		out = r
		return nil
	})
	if err != nil {
		return Resident{}, apperr.As(err)
	}
	s.changed(residentID)
	return out, nil
}

// OnChange registers f to be called, with the resident's id, after a
// resident's record changes (SetFlags), so that a cache of residents (the
// scan path's) drops its copy. f must be quick and must not call back
// into the service.
func (s *Service) OnChange(f func(residentID string)) {
	s.watchMu.Lock()
	s.watchers = append(s.watchers, f)
	s.watchMu.Unlock()
}

func (s *Service) changed(residentID string) {
	s.watchMu.Lock()
	ws := slices.Clone(s.watchers)
	s.watchMu.Unlock()
	for _, f := range ws {
		f(residentID)
	}
}
