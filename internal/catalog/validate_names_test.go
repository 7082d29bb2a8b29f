package catalog

import (
	"context"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// Names are one line of text of at most 100 characters as stored: a NUL
// (which PostgreSQL refuses, so the store failed with an internal error
// while SQLite kept it), a line break or other control character, or
// padding that only trimming made short, is a validation error.
func TestValidateNamesAreOneLineOfText(t *testing.T) {
	bus := func() Scenario { return seeded(t, "transit.bus") }
	cases := []struct {
		name  string
		s     Scenario
		field string
	}{
		{"NUL in a name", mod(bus(), func(s *Scenario) { s.NameZh = "公交\x00" }), "name_zh"},
		{"line break in a name", mod(bus(), func(s *Scenario) { s.NameEn = "Bus\n| fare |" }), "name_en"},
		{"tab in a name", mod(bus(), func(s *Scenario) { s.NameEn = "Bus\tfare" }), "name_en"},
		{"C1 control in a name", mod(bus(), func(s *Scenario) { s.NameEn = "Bus\u0085" }), "name_en"},
		{"name padded far past the limit", mod(bus(), func(s *Scenario) { s.NameZh = "公交" + strings.Repeat(" ", 100_000) }), "name_zh"},
		{"NUL in a concession name", mod(bus(), func(s *Scenario) { s.Concessions[0].NameEn = "free\x00" }), "concessions[0].name_en"},
		{"spaces inside a name", mod(bus(), func(s *Scenario) { s.NameEn = "Bus fare, 2 yuan" }), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.s)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if e := apperr.As(err); err == nil || e.Code != apperr.ValidationFailed || e.Field != tc.field {
				t.Fatalf("Validate = %v, want validation_failed on %q", err, tc.field)
			}
		})
	}
	// Through the store, on every backend: a refusal, never an internal error.
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := mustOpen(t, openDB(t, dsn))
		s := bikeShare()
		s.NameZh = "公共自行车\x00"
		if _, err := c.CreateScenario(context.Background(), s); apperr.CodeOf(err) != apperr.ValidationFailed {
			t.Fatalf("CreateScenario = %v, want validation_failed", err)
		}
	})
}
