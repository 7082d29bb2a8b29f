package httpapi

import (
	"io"
	"log/slog"
	"net/http"
	"slices"
	"testing"

	"github.com/yikatong/yikatong/internal/auth"
)

type optionalBody struct {
	Seconds int64  `json:"seconds,omitempty" doc:"0: at once"`
	Day     string `json:"day,omitzero"`
	Name    string `json:"name"`
	// A pointer without omitempty stays required: handlers use one to
	// tell a field left out from its zero value, mostly to require it.
	On *bool `json:"on"`
}

// TestOpenAPIOptionalRequest: a route whose body may be left out has a
// requestBody with required false, one whose body is needed required
// true, and a field is required unless its tag says omitempty or omitzero.
func TestOpenAPIOptionalRequest(t *testing.T) {
	s := NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)), nil, nil)
	nop := func(http.ResponseWriter, *http.Request, auth.Principal) error { return nil }
	s.Handle(Route{Pattern: "POST /v1/optional", Summary: "x", Handle: nop, Request: optionalBody{}, RequestOptional: true})
	s.Handle(Route{Pattern: "POST /v1/needed", Summary: "x", Handle: nop, Request: optionalBody{}})
	paths := s.OpenAPI()["paths"].(map[string]any)
	body := func(path string) map[string]any {
		t.Helper()
		op := paths[path].(map[string]any)["post"].(map[string]any)
		return op["requestBody"].(map[string]any)
	}
	if got := body("/v1/optional")["required"]; got != false {
		t.Errorf("optional body: required = %v, want false", got)
	}
	if got := body("/v1/needed")["required"]; got != true {
		t.Errorf("needed body: required = %v, want true", got)
	}
	schemas := s.OpenAPI()["components"].(map[string]any)["schemas"].(map[string]any)
	sch, ok := schemas["optionalBody"].(map[string]any)
	if !ok {
		t.Fatalf("no schema optionalBody in %v", schemas)
	}
	req, _ := sch["required"].([]string)
	if want := []string{"name", "on"}; !slices.Equal(req, want) {
		t.Errorf("required fields %v, want %v", req, want)
	}
}
