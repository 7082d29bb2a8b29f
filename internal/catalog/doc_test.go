package catalog

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"
)

var updateDocs = flag.Bool("update-docs", false, "rewrite docs/service-items.md from the seed")

const docPath = "../../docs/service-items.md"

// docs/service-items.md is generated from the seed; this fails when it is
// out of date. Regenerate with: go generate ./internal/catalog
func TestServiceItemsDoc(t *testing.T) {
	want := Markdown(SeedItems(), SeedScenarios())
	if *updateDocs {
		if err := os.WriteFile(docPath, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatalf("%v (regenerate with: go generate ./internal/catalog)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("docs/service-items.md is out of date with the seed; regenerate with: go generate ./internal/catalog")
	}
	for _, s := range SeedScenarios() {
		if !strings.Contains(string(got), "`"+s.ID+"`") {
			t.Errorf("%s missing from the doc", s.ID)
		}
	}
	for _, it := range SeedItems() {
		if !strings.Contains(string(got), it.NameZh) || !strings.Contains(string(got), it.NameEn) {
			t.Errorf("item %d missing from the doc", it.Number)
		}
	}
	if strings.Contains(string(got), "full_id_number") {
		t.Error("the doc mentions a full ID number field")
	}
}
