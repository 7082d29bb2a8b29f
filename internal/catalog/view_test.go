package catalog

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/apperr"
)

const fullID = "11010519491231002X"

// everything is what a scan path might know about a holder, including data
// no provider may ever see.
func everything() map[string]any {
	all := map[string]any{
		"full_id_number": fullID,
		"id_number":      fullID,
		"birth_date":     "1949-12-31",
		"address":        "somewhere",
		"phone":          "13800000000",
	}
	for _, f := range Fields() {
		all[f.Name] = "value of " + f.Name
	}
	return all
}

func TestViewKeepsOnlyDeclaredFields(t *testing.T) {
	bus := seeded(t, "transit.bus")
	got := View(bus, everything())
	want := []string{"charged_fen", "concession", "decision", "reason"}
	if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, want) {
		t.Fatalf("bus view keys = %v, want %v", keys, want)
	}

	hotel := seeded(t, "identity.hotel_checkin")
	got = View(hotel, everything())
	want = []string{"category", "decision", "masked_id_number", "name", "reason"}
	if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, want) {
		t.Fatalf("hotel view keys = %v, want %v", keys, want)
	}

	lib := seeded(t, "library.loan")
	got = View(lib, everything())
	if _, ok := got["name"]; ok {
		t.Fatal("library sees the full name")
	}
	if _, ok := got["masked_name"]; !ok {
		t.Fatal("library does not see the masked name")
	}

	// Declared but absent in all: not invented.
	got = View(hotel, map[string]any{"decision": "accepted"})
	if len(got) != 1 || got["decision"] != "accepted" {
		t.Fatalf("view = %v", got)
	}
	if got := View(Scenario{}, everything()); len(got) != 0 {
		t.Fatalf("a scenario with no view fields shows %v", got)
	}
}

// A Scenario value that skipped validation still cannot show anything
// outside the vocabulary.
func TestViewIgnoresUndeclarableFields(t *testing.T) {
	rogue := Scenario{ID: "rogue.scenario", ViewFields: []string{"full_id_number", "id_number", "birth_date", "name", "address"}}
	got := View(rogue, everything())
	if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, []string{"name"}) {
		t.Fatalf("rogue view keys = %v", keys)
	}
}

func TestVocabularyHasNoFullIDNumber(t *testing.T) {
	for _, f := range Fields() {
		if strings.Contains(f.Name, "id_number") && !strings.HasPrefix(f.Name, "masked_") {
			t.Errorf("view field %q would expose an ID number", f.Name)
		}
		if f.DescriptionEn == "" || f.DescriptionZh == "" {
			t.Errorf("view field %q lacks a description", f.Name)
		}
	}
	for _, name := range []string{"full_id_number", "id_number", "birth_date", "address", "phone"} {
		if IsField(name) {
			t.Errorf("%q is a view field", name)
		}
	}
}

// No seeded scenario yields a full ID number.
func TestSeededViewsNeverShowFullIDNumber(t *testing.T) {
	for _, s := range SeedScenarios() {
		for k, v := range View(s, everything()) {
			if !slices.Contains(s.ViewFields, k) || !IsField(k) {
				t.Errorf("%s: view shows undeclared %q", s.ID, k)
			}
			if strings.Contains(fmt.Sprint(v), fullID) {
				t.Errorf("%s: view field %q carries the full ID number", s.ID, k)
			}
		}
	}
}

// No scenario staff can create declares a field outside the vocabulary:
// Validate refuses it with the offending index.
func TestValidateRefusesUnknownViewFields(t *testing.T) {
	for _, name := range []string{"full_id_number", "id_number", "ID_NUMBER", "masked_id_number ", "", "birth_date"} {
		s := seeded(t, "identity.hotel_checkin")
		s.ViewFields = append(s.ViewFields, name)
		err := Validate(s)
		want := fmt.Sprintf("view_fields[%d]", len(s.ViewFields)-1)
		if apperr.CodeOf(err) != apperr.ValidationFailed || apperr.As(err).Field != want {
			t.Errorf("view field %q: err = %v, want validation_failed on %s", name, err, want)
		}
	}
}

// Fuzz: whatever view fields are submitted, a scenario that validates shows
// only vocabulary fields, and never the full ID number.
func FuzzViewFields(f *testing.F) {
	f.Add("name,masked_id_number")
	f.Add("full_id_number")
	f.Add("decision,full_id_number,name")
	f.Add("id_number")
	f.Fuzz(func(t *testing.T, list string) {
		s := seeded(t, "identity.hotel_checkin")
		s.ViewFields = strings.Split(list, ",")
		err := Validate(s)
		if err == nil {
			for _, v := range s.ViewFields {
				if !IsField(v) {
					t.Fatalf("validated unknown field %q", v)
				}
			}
		}
		for k, v := range View(s, everything()) {
			if !IsField(k) || strings.Contains(fmt.Sprint(v), fullID) {
				t.Fatalf("view shows %q = %v", k, v)
			}
		}
	})
}
