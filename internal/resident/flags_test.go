package resident

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

func TestNormalizeFlags(t *testing.T) {
	for _, c := range []struct {
		in   []string
		want []string
	}{
		{nil, nil},
		{[]string{}, nil},
		{[]string{" ", ""}, nil},
		{[]string{"student"}, []string{"student"}},
		{[]string{"Veteran", " disabled ", "student", "disabled"}, []string{"disabled", "student", "veteran"}},
		{[]string{"teacher", "student", "disabled", "veteran"}, []string{"disabled", "student", "teacher", "veteran"}},
	} {
		got, err := NormalizeFlags(c.in)
		if err != nil || !slices.Equal(got, c.want) || (c.want == nil) != (got == nil) {
			t.Errorf("NormalizeFlags(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, bad := range [][]string{{"senior_65"}, {"student", "tourist"}, {"学生"}, {strings.Repeat("x", 100)}} {
		_, err := NormalizeFlags(bad)
		e := apperr.As(err)
		if apperr.CodeOf(err) != apperr.ValidationFailed || e.Field != "flags" {
			t.Errorf("NormalizeFlags(%q) = %v, want validation_failed on flags", bad, err)
			continue
		}
		if en, zh := e.Text(); !strings.Contains(en, "student, teacher, disabled and veteran") || !strings.Contains(zh, "残疾人") || len(en) > 300 {
			t.Errorf("NormalizeFlags(%q): texts %q / %q", bad, en, zh)
		}
	}
	for _, f := range KnownFlags {
		if !IsFlag(f.Flag) || f.NameZh == "" || f.NameEn == "" {
			t.Errorf("flag %+v", f)
		}
	}
}

// residentBytes is every byte of every column of the residents table.
func (e *env) residentBytes(t *testing.T) []byte {
	t.Helper()
	rows, err := e.db.R.Query(`SELECT * FROM residents`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var raw []byte
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		for _, v := range vals {
			if b, ok := v.([]byte); ok {
				raw = append(raw, b...)
			} else {
				raw = append(raw, fmt.Sprint(v)...)
			}
			raw = append(raw, '|')
		}
	}
	return raw
}

func TestSetFlags(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		e := newEnv(t, dsn)
		ctx := context.Background()
		var changed []string
		e.svc.OnChange(func(id string) { changed = append(changed, id) })
		r, _ := e.enrolWithCard(t, "")
		if r.Flags != nil {
			t.Fatalf("a new resident has flags %q", r.Flags)
		}

		got, err := e.svc.SetFlags(ctx, r.ID, []string{"Student", " disabled ", "student"}, "staff:hr1")
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.Flags, []string{"disabled", "student"}) || got.FlagsSetBy != "staff:hr1" || got.FlagsSetAt.IsZero() || got.Name != r.Name {
			t.Fatalf("SetFlags = %+v", got)
		}
		if !slices.Equal(changed, []string{r.ID}) {
			t.Fatalf("OnChange calls %q", changed)
		}
		read, err := e.svc.Get(ctx, r.ID)
		if err != nil || !slices.Equal(read.Flags, got.Flags) || read.FlagsSetBy != "staff:hr1" || !read.FlagsSetAt.Equal(got.FlagsSetAt) ||
			read.Name != r.Name || !read.BirthDate.Equal(r.BirthDate) || !slices.Contains(read.Flags, FlagDisabled) || slices.Contains(read.Flags, FlagTeacher) {
			t.Fatalf("Get after SetFlags = %+v, %v", read, err)
		}
		if full, err := e.svc.RevealIDNumber(ctx, r.ID); err != nil || !strings.HasPrefix(full, "410102") {
			t.Fatalf("the ID number after SetFlags: %q %v", full, err)
		}
		// Nothing of the flags is stored in the clear.
		raw := e.residentBytes(t)
		for _, secret := range []string{"disabled", "student", "staff:hr1"} {
			if bytes.Contains(raw, []byte(secret)) {
				t.Errorf("the residents table contains %q in plaintext", secret)
			}
		}

		// Refusals change nothing.
		_, err = e.svc.SetFlags(ctx, r.ID, []string{"student", "senior_65"}, "staff:hr1")
		wantCode(t, err, apperr.ValidationFailed)
		_, err = e.svc.SetFlags(ctx, "res_nope", []string{"student"}, "staff:hr1")
		wantCode(t, err, apperr.NotFound)
		if read, _ := e.svc.Get(ctx, r.ID); !slices.Equal(read.Flags, []string{"disabled", "student"}) {
			t.Fatalf("flags after refusals: %q", read.Flags)
		}
		if len(changed) != 1 {
			t.Fatalf("OnChange called for refusals: %q", changed)
		}

		// Removing them all.
		got, err = e.svc.SetFlags(ctx, r.ID, nil, "staff:hr2")
		if err != nil || got.Flags != nil {
			t.Fatalf("clearing: %+v %v", got, err)
		}
		if read, _ := e.svc.Get(ctx, r.ID); read.Flags != nil || read.FlagsSetBy != "staff:hr2" {
			t.Fatalf("after clearing: %+v", read)
		}

		// Enrolment may give flags; an unknown one refuses the enrolment.
		withFlags, err := e.svc.Enrol(ctx, EnrolInput{Name: "钱七", IDNumber: e.citizen(time.Date(2006, 3, 3, 0, 0, 0, 0, time.UTC), "F"),
			Category: CategoryLocal, Flags: []string{"student"}})
		if err != nil || !slices.Equal(withFlags.Flags, []string{"student"}) {
			t.Fatalf("enrol with flags: %+v %v", withFlags, err)
		}
		if read, _ := e.svc.Get(ctx, withFlags.ID); !slices.Equal(read.Flags, []string{"student"}) {
			t.Fatalf("enrolled flags read back: %q", read.Flags)
		}
		_, err = e.svc.Enrol(ctx, EnrolInput{Name: "孙八", IDNumber: e.citizen(time.Date(2006, 4, 4, 0, 0, 0, 0, time.UTC), "M"),
			Category: CategoryLocal, Flags: []string{"vip"}})
		wantCode(t, err, apperr.ValidationFailed)
	})
}

// A blob sealed before flags existed (no "f" member) reads as no flags,
// and SetFlags on it keeps the rest of it.
func TestFlagsOnAnOldBlob(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		e := newEnv(t, dsn)
		ctx := context.Background()
		r, _ := e.enrolWithCard(t, "")
		full, err := e.svc.RevealIDNumber(ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		old := fmt.Sprintf(`{"n":%q,"i":%q,"b":%q,"r":%q}`, r.Name, full, r.BirthDate.Format(time.DateOnly), r.Region)
		if _, err := e.db.W.Exec(`UPDATE residents SET pii = $1 WHERE id = $2`, e.svc.v.Seal([]byte(old), r.ID), r.ID); err != nil {
			t.Fatal(err)
		}
		read, err := e.svc.Get(ctx, r.ID)
		if err != nil || read.Flags != nil || read.Name != r.Name || read.FlagsSetBy != "" || !read.FlagsSetAt.IsZero() {
			t.Fatalf("old blob: %+v %v", read, err)
		}
		if _, err := e.svc.SetFlags(ctx, r.ID, []string{"veteran"}, "staff:hr"); err != nil {
			t.Fatal(err)
		}
		read, err = e.svc.Get(ctx, r.ID)
		if err != nil || !slices.Equal(read.Flags, []string{"veteran"}) || read.Name != r.Name || !read.BirthDate.Equal(r.BirthDate) || read.Region != r.Region {
			t.Fatalf("after SetFlags: %+v %v", read, err)
		}
		if again, err := e.svc.RevealIDNumber(ctx, r.ID); err != nil || again != full {
			t.Fatalf("ID number after SetFlags: %v", err)
		}
	})
}

// FlagNamed and FlagsFromText read flags as people write them in a
// spreadsheet: codes or labels in either language, any case, several
// separated by ";" (or "|", "、", "；"); an unknown one is named.
func TestFlagsFromText(t *testing.T) {
	for in, want := range map[string]string{
		"student": "student", "Student": "student", " TEACHER ": "teacher", "学生": "student", "教师": "teacher", "老师": "teacher",
		"残疾人": "disabled", "Disabled": "disabled", "残疾": "disabled", "现役军人或退役军人": "veteran", "退役军人": "veteran",
		"Service member or veteran": "veteran", "veteran": "veteran",
	} {
		if f, ok := FlagNamed(in); !ok || f != want {
			t.Errorf("FlagNamed(%q) = %q %v, want %q", in, f, ok, want)
		}
	}
	for _, bad := range []string{"", " ", "wizard", "senior_65", "学", "students"} {
		if f, ok := FlagNamed(bad); ok {
			t.Errorf("FlagNamed(%q) = %q, want none", bad, f)
		}
	}
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"", nil}, {"  ", nil}, {"无", nil}, {"None", nil}, {";", nil},
		{"学生", []string{"student"}},
		{"学生;教师", []string{"student", "teacher"}},
		{"student|DISABLED", []string{"disabled", "student"}},
		{"残疾人；退役军人", []string{"disabled", "veteran"}},
		{"学生、学生、Student", []string{"student"}},
		{" teacher ; ; disabled ", []string{"disabled", "teacher"}},
		{"student, veteran", []string{"student", "veteran"}},
	} {
		got, err := FlagsFromText(c.in)
		if err != nil || !slices.Equal(got, c.want) || (c.want == nil) != (got == nil) {
			t.Errorf("FlagsFromText(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for bad, name := range map[string]string{"学生;巫师": `"巫师"`, "student|wizard": `"wizard"`, "senior_65": `"senior_65"`,
		"学生 教师": `"学生 教师"`, strings.Repeat("x", 100): `"` + strings.Repeat("x", 32) + `…"`} {
		_, err := FlagsFromText(bad)
		e := apperr.As(err)
		if apperr.CodeOf(err) != apperr.ValidationFailed || e.Field != "flags" {
			t.Errorf("FlagsFromText(%q) = %v, want validation_failed on flags", bad, err)
			continue
		}
		en, zh := e.Text()
		if !strings.Contains(en, name) || !strings.Contains(zh, name) || !strings.Contains(en, "student, teacher, disabled, veteran") ||
			!strings.Contains(zh, "学生、教师、残疾人") || !strings.Contains(zh, "未知的身份标记") || len(en) > 300 {
			t.Errorf("FlagsFromText(%q): texts %q / %q", bad, en, zh)
		}
	}
}

// Flags given at enrolment are sealed with who gave them and when, as
// SetFlags seals them; an enrolment without flags records no setter.
func TestEnrolFlagsSealedWithTheirSetter(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		e := newEnv(t, dsn)
		ctx := context.Background()
		r, err := e.svc.Enrol(ctx, EnrolInput{Name: "郑学生", IDNumber: e.citizen(time.Date(2007, 5, 5, 0, 0, 0, 0, time.UTC), "F"),
			Category: CategoryLocal, Flags: []string{"Student", "disabled"}, FlagsBy: "staff:hr9"})
		if err != nil || !slices.Equal(r.Flags, []string{"disabled", "student"}) || r.FlagsSetBy != "staff:hr9" || r.FlagsSetAt.IsZero() {
			t.Fatalf("enrol: %+v %v", r, err)
		}
		read, err := e.svc.Get(ctx, r.ID)
		if err != nil || !slices.Equal(read.Flags, r.Flags) || read.FlagsSetBy != "staff:hr9" || !read.FlagsSetAt.Equal(r.FlagsSetAt) {
			t.Fatalf("read back: %+v %v", read, err)
		}
		if raw := e.residentBytes(t); bytes.Contains(raw, []byte("staff:hr9")) || bytes.Contains(raw, []byte("disabled")) {
			t.Fatal("the enrolment's flags or their setter are stored in plaintext")
		}
		plain, err := e.svc.Enrol(ctx, EnrolInput{Name: "郑无标", IDNumber: e.citizen(time.Date(1990, 5, 5, 0, 0, 0, 0, time.UTC), "M"),
			Category: CategoryLocal, FlagsBy: "staff:hr9"})
		if err != nil {
			t.Fatal(err)
		}
		if read, _ := e.svc.Get(ctx, plain.ID); read.Flags != nil || read.FlagsSetBy != "" || !read.FlagsSetAt.IsZero() {
			t.Fatalf("an enrolment without flags: %+v", read)
		}
	})
}
