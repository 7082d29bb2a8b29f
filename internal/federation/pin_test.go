package federation_test

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// A PIN travels to the home city sealed to its node key: the charge's
// body on the wire holds no PIN in clear, and the home city still checks
// it (the right PIN pays, a wrong one is declined).
func TestPINIsSealedToTheHomeCity(t *testing.T) {
	var mu sync.Mutex
	var bodies []string
	a, b := pollingHourly(t, func(pass http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/v1/federation/charge") {
				body, _ := io.ReadAll(r.Body)
				mu.Lock()
				bodies = append(bodies, string(body))
				mu.Unlock()
				r.Body = io.NopCloser(bytes.NewReader(body))
			}
			pass.ServeHTTP(w, r)
		})
	})
	res := a.demo.Residents[0]
	wrong := "000000"
	if res.PIN == wrong {
		wrong = "111111"
	}
	if ans := b.scan(t, "medical.outpatient", "pin-wrong", a.code(t, res.CardNumber), 1000, wrong); ans.Decision != "declined" || ans.Reason != "bad_pin" {
		t.Fatalf("wrong PIN: %+v", ans)
	}
	if ans := b.scan(t, "medical.outpatient", "pin-right", a.code(t, res.CardNumber), 1000, res.PIN); ans.Decision != "accepted" {
		t.Fatalf("right PIN: %+v", ans)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bodies) < 2 {
		t.Fatalf("%d charges seen on the wire", len(bodies))
	}
	for _, body := range bodies {
		if strings.Contains(body, `"pin":`) || strings.Contains(body, `"`+res.PIN+`"`) || strings.Contains(body, `"`+wrong+`"`) || !strings.Contains(body, `"pin_sealed":`) {
			t.Fatalf("a charge on the wire: %s", body)
		}
	}
	checkBooks(t, a, b)
}
