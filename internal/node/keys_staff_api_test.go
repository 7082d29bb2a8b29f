package node_test

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// TestKeysRotatePendingAnswer: a second announced rotation while one is
// pending is a conflict that says so once, in the API's words (the
// announce_seconds member), in English and Chinese, naming the pending
// key and when it becomes current, without a Go package's prefix.
func TestKeysRotatePendingAnswer(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true})
	op := tn.Client(tn.Demo.Staff["operator"].Token)
	var rot struct {
		Kid        string    `json:"kid"`
		ActiveFrom time.Time `json:"active_from"`
	}
	op.JSON(t, "POST", "/v1/keys/rotate", map[string]any{"announce_seconds": 600}, 200, &rot)
	r := op.Do(t, "POST", "/v1/keys/rotate", map[string]any{"announce_seconds": 300})
	if r.Status != http.StatusConflict || r.Code() != "conflict" {
		t.Fatalf("second announced rotation: %d %s", r.Status, r.Body)
	}
	p := r.Problem()
	en, _ := p["detail"].(string)
	zh, _ := p["detail_zh"].(string)
	at := rot.ActiveFrom.UTC().Format(time.RFC3339)
	for lang, s := range map[string]string{"detail": en, "detail_zh": zh} {
		if strings.Count(s, "announce_seconds 0") != 1 {
			t.Errorf("%s names announce_seconds 0 %d times: %q", lang, strings.Count(s, "announce_seconds 0"), s)
		}
		if !strings.Contains(s, rot.Kid) || !strings.Contains(s, at) {
			t.Errorf("%s does not name the pending key %s and its time %s: %q", lang, rot.Kid, at, s)
		}
		if strings.Contains(s, "keys:") || strings.Contains(s, "announce period") {
			t.Errorf("%s speaks Go or the command line: %q", lang, s)
		}
	}
	if n := strings.Count(en, "rotate again"); n != 1 {
		t.Errorf("detail gives its advice %d times: %q", n, en)
	}
	if !hasHan(zh) {
		t.Errorf("detail_zh is not Chinese: %q", zh)
	}
	// The pending key is still the one announced first.
	var again struct {
		Kid string `json:"kid"`
	}
	op.JSON(t, "POST", "/v1/keys/rotate", map[string]any{"announce_seconds": 0}, 200, &again)
	if again.Kid == rot.Kid {
		t.Errorf("rotation at once kept the pending key")
	}
}

// TestStaffSignInUsername: staff sign in with "user" (documented) or
// "username" (the name the provider-staff API creates users with), not
// with two different names; the sign-in lock counts down in good English.
func TestStaffSignInUsername(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true})
	c := tn.Client("")
	hr := tn.Demo.Staff["hr_admin"]
	for _, body := range []map[string]string{
		{"user": hr.User, "password": hr.Password},
		{"username": hr.User, "password": hr.Password},
		{"user": hr.User, "username": hr.User, "password": hr.Password},
	} {
		var tok struct {
			Token string `json:"token"`
			Role  string `json:"role"`
		}
		c.JSON(t, "POST", "/v1/auth/staff", body, 200, &tok)
		if tok.Token == "" || tok.Role != "hr_admin" {
			t.Errorf("sign in with %v: %+v", body, tok)
		}
	}
	for body, field := range map[string]string{
		`{"user":"` + hr.User + `","username":"someone_else","password":"x"}`: "username",
		`{"password":"x"}`:                      "user",
		`{"username":"","password":"x"}`:        "user",
		`{"username":"a","user":"b"}`:           "username",
		`{"username":"a","password":"x","x":1}`: "x",
	} {
		r := c.Do(t, "POST", "/v1/auth/staff", body)
		if r.Status != 422 || r.Code() != "validation_failed" || r.Problem()["field"] != field {
			t.Errorf("%s: %d %s, want validation_failed on %q", body, r.Status, r.Body, field)
		}
	}
	var doc openAPIDoc
	c.JSON(t, "GET", "/v1/openapi.json", nil, 200, &doc)
	if req := doc.requiredFields(doc.op(t, "POST", "/v1/auth/staff")); !slices.Equal(req, []string{"password", "user"}) {
		t.Errorf("documented required members %v, want [password user]", req)
	}

	// Wrong passwords count down to the lock: "… 1 try left", not "1 tries".
	for i := 1; i < 5; i++ {
		r := c.Do(t, "POST", "/v1/auth/staff", map[string]string{"username": "nobody_here", "password": "wrong-password"})
		d, _ := r.Problem()["detail"].(string)
		want := []string{"", "4 tries left", "3 tries left", "2 tries left", "1 try left"}[i]
		if r.Status != 401 || !strings.Contains(d, want) {
			t.Errorf("wrong password %d: %d %q, want %q", i, r.Status, d, want)
		}
	}
}
