package node_test

import (
	"bytes"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/trust"
)

// syncBuffer collects the node's log lines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// recorder remembers every answer body so the test can prove no full ID
// number leaves the node except through the audited reveal.
type recorder struct {
	*nodetest.Client
	bodies *[]string
}

func (r recorder) call(t *testing.T, method, path string, body any, want int, out any) nodetest.Response {
	t.Helper()
	resp := r.Client.Do(t, method, path, body)
	*r.bodies = append(*r.bodies, string(resp.Body))
	if resp.Status != want {
		t.Fatalf("%s %s: %d, want %d: %s", method, path, resp.Status, want, resp.Body)
	}
	if out != nil {
		resp.Decode(t, out)
	}
	return resp
}

func (r recorder) problem(t *testing.T, method, path string, body any, wantStatus int, wantCode string) {
	t.Helper()
	resp := r.Client.Do(t, method, path, body)
	*r.bodies = append(*r.bodies, string(resp.Body))
	if resp.Status != wantStatus || resp.Code() != wantCode {
		t.Fatalf("%s %s: %d %s, want %d %s", method, path, resp.Status, resp.Body, wantStatus, wantCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("%s %s: content type %q", method, path, ct)
	}
	if p := resp.Problem(); p["detail_zh"] == "" || p["detail"] == "" {
		t.Fatalf("%s %s: problem lacks text: %s", method, path, resp.Body)
	}
}

// TestFoundationOverHTTP walks issue 2 end to end on both backends: staff
// sign-in and roles, enrolment and its errors, resident sign-in and PIN
// lock-out, e-codes verified offline against the signed trust bundle, the
// card lifecycle reaching the deny list at once, key rotation, and that no
// answer or log line carries a full ID number except the audited reveal.
func TestFoundationOverHTTP(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		if strings.HasSuffix(dsn, ".db") {
			dsn = "" // SQLite in the node's data dir
		}
		logs := &syncBuffer{}
		tn := nodetest.Start(t, nodetest.Options{DB: dsn, Demo: true, DemoResidents: 40, Logger: slog.New(slog.NewJSONHandler(logs, nil))})
		d := tn.Demo
		var bodies []string
		anon := recorder{tn.Client(""), &bodies}
		hr := recorder{tn.Client(d.Staff["hr_admin"].Token), &bodies}
		fin := recorder{tn.Client(d.Staff["finance"].Token), &bodies}
		op := recorder{tn.Client(d.Staff["operator"].Token), &bodies}

		// Demo city: every category, funded.
		cats := map[string]bool{}
		for _, r := range d.Residents {
			cats[r.Category] = true
		}
		if len(cats) != 3 || d.City != "CN-410100" {
			t.Fatalf("demo city %s categories %v", d.City, cats)
		}

		// Staff sign-in with the demo password gives a working token.
		var tok struct{ Token, Role string }
		anon.call(t, "POST", "/v1/auth/staff", map[string]string{"user": d.Staff["hr_admin"].User, "password": d.Staff["hr_admin"].Password}, 200, &tok)
		if tok.Role != "hr_admin" || tok.Token == "" {
			t.Fatalf("staff login %+v", tok)
		}
		anon.problem(t, "POST", "/v1/auth/staff", map[string]string{"user": "hr", "password": "wrong-password"}, 401, "unauthorized")

		// Enrolment and its refusals.
		const id = "11010519491231002X"
		enrol := map[string]any{"name": "王<b>芳</b>", "id_number": strings.ToLower(id), "category": "local", "pin": "258036"}
		anon.problem(t, "POST", "/v1/residents", enrol, 401, "unauthorized")
		fin.problem(t, "POST", "/v1/residents", enrol, 403, "forbidden")
		var enrolled struct {
			Resident struct {
				ID             string `json:"id"`
				IDNumberMasked string `json:"id_number_masked"`
			} `json:"resident"`
			Card struct {
				CardNumber string `json:"card_number"`
				Status     string
			} `json:"card"`
		}
		hr.call(t, "POST", "/v1/residents", enrol, 201, &enrolled)
		if enrolled.Card.Status != "active" || enrolled.Resident.IDNumberMasked != "1101**********002X" {
			t.Fatalf("enrolled %+v", enrolled)
		}
		resID := enrolled.Resident.ID
		hr.problem(t, "POST", "/v1/residents", enrol, 409, "already_exists")
		hr.problem(t, "POST", "/v1/residents", map[string]any{"name": "李四", "id_number": "110105194912310021", "category": "local"}, 400, "bad_check_digit")
		hr.problem(t, "POST", "/v1/residents", map[string]any{"name": "李四", "id_number": "110105199902300021", "category": "local"}, 400, "bad_birth_date")
		hr.problem(t, "POST", "/v1/residents", map[string]any{"name": "李四", "id_number": "11010519491231002X", "category": "permanent_resident"}, 422, "validation_failed")
		hr.problem(t, "POST", "/v1/residents", map[string]any{"name": "李四", "id_number": "x", "category": "local", "extra": 1}, 422, "validation_failed")
		hr.problem(t, "POST", "/v1/residents", map[string]any{"id_number": id, "category": "local"}, 422, "validation_failed")

		// Staff reads: masked by default; the full number only on an audited reveal.
		var view struct {
			IDNumberMasked string `json:"id_number_masked"`
			IDNumber       string `json:"id_number"`
		}
		hr.call(t, "GET", "/v1/residents/"+resID, nil, 200, &view)
		if view.IDNumber != "" || view.IDNumberMasked != "1101**********002X" {
			t.Fatalf("default read leaks: %+v", view)
		}
		revealIdx := len(bodies)
		hr.call(t, "GET", "/v1/residents/"+resID+"?reveal=id_number", nil, 200, &view)
		if view.IDNumber != id {
			t.Fatalf("reveal gave %q", view.IDNumber)
		}
		var audit []struct{ Action, Subject string }
		hr.call(t, "GET", "/v1/audit?subject="+resID, nil, 200, &audit)
		found := false
		for _, a := range audit {
			found = found || a.Action == "reveal_id_number"
		}
		if !found {
			t.Fatalf("reveal not audited: %+v", audit)
		}
		op.problem(t, "GET", "/v1/residents/"+resID, nil, 403, "forbidden")

		// Resident sign-in, PIN lock-out after 6 wrong tries, staff unlock.
		card := enrolled.Card.CardNumber
		for i := 1; i <= 5; i++ {
			anon.problem(t, "POST", "/v1/auth/resident", map[string]string{"card_number": card, "pin": "111222"}, 401, "bad_pin")
		}
		anon.problem(t, "POST", "/v1/auth/resident", map[string]string{"card_number": card, "pin": "111222"}, 423, "card_locked")
		anon.problem(t, "POST", "/v1/auth/resident", map[string]string{"card_number": card, "pin": "258036"}, 423, "card_locked")
		hr.call(t, "POST", "/v1/cards/"+card+"/unlock", nil, 200, nil)
		login := func(card, pin string) *nodetest.Client {
			var lt struct{ Token string }
			anon.call(t, "POST", "/v1/auth/resident", map[string]string{"card_number": card, "pin": pin}, 200, &lt)
			return tn.Client(lt.Token)
		}
		res := recorder{login(card, "258036"), &bodies}

		// A code verifies offline against the bundle, whose signature checks
		// against the pinned node key.
		var nodeKey ecode.JWK
		anon.call(t, "GET", "/v1/trust/node-key", nil, 200, &nodeKey)
		pinned, err := ecode.PublicKeyFromJWK(nodeKey)
		if err != nil {
			t.Fatal(err)
		}
		bundle := func() *trust.Bundle {
			t.Helper()
			r := anon.Client.Do(t, "GET", "/v1/trust", nil)
			b, err := trust.Parse(r.Body, &pinned)
			if err != nil {
				t.Fatalf("bundle: %v\n%s", err, r.Body)
			}
			return b
		}
		newCode := func(c recorder) string {
			var ec struct {
				Code      string
				ExpiresAt time.Time `json:"expires_at"`
			}
			c.call(t, "POST", "/v1/ecodes", nil, 200, &ec)
			if !strings.HasPrefix(ec.Code, "YK1:") || time.Until(ec.ExpiresAt) > 61*time.Second || time.Until(ec.ExpiresAt) < 50*time.Second {
				t.Fatalf("ecode %+v", ec)
			}
			return ec.Code
		}
		code1 := newCode(res)
		claims, err := bundle().VerifyCode(code1, time.Now())
		if err != nil || claims.Issuer != "CN-410100" || claims.Category != "local" || !contains(claims.Flags, "senior_65") {
			t.Fatalf("verify: %+v %v", claims, err)
		}
		if strings.Contains(claims.Subject, id) || strings.Contains(claims.Subject, card) {
			t.Fatal("code subject carries the ID or card number")
		}
		if _, err := bundle().VerifyCode(code1, time.Now().Add(2*time.Minute)); err == nil || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("expired code: %v", err)
		}

		// Another resident cannot act on this card.
		other := d.Residents[0]
		oc := recorder{login(other.CardNumber, other.PIN), &bodies}
		oc.problem(t, "POST", "/v1/cards/"+card+"/lost", nil, 403, "forbidden")
		oc.problem(t, "GET", "/v1/accounts/w:"+resID, nil, 403, "forbidden")
		oc.problem(t, "GET", "/v1/residents/"+resID, nil, 403, "forbidden")

		// Lost: the session ends, the code is revoked at once, no new codes.
		res.call(t, "POST", "/v1/cards/"+card+"/lost", nil, 200, nil)
		res.problem(t, "POST", "/v1/ecodes", nil, 401, "unauthorized")
		if _, err := bundle().VerifyCode(code1, time.Now()); err == nil || !strings.Contains(err.Error(), "revoked") {
			t.Fatalf("lost card's code: %v", err)
		}
		anon.problem(t, "POST", "/v1/auth/resident", map[string]string{"card_number": card, "pin": "258036"}, 409, "card_not_active")
		hr.problem(t, "POST", "/v1/cards/"+card+"/cancel/x", nil, 404, "not_found")
		// Recover: codes work again.
		hr.call(t, "POST", "/v1/cards/"+card+"/recover", nil, 200, nil)
		res = recorder{login(card, "258036"), &bodies}
		if _, err := bundle().VerifyCode(newCode(res), time.Now()); err != nil {
			t.Fatalf("recovered card's code: %v", err)
		}
		code2 := newCode(res)
		// Replace: a new number and token; the old card is dead forever.
		var repl struct {
			CardNumber string `json:"card_number"`
			Status     string
		}
		hr.call(t, "POST", "/v1/cards/"+card+"/replace", nil, 200, &repl)
		if repl.CardNumber == card || repl.Status != "active" {
			t.Fatalf("replacement %+v", repl)
		}
		if _, err := bundle().VerifyCode(code2, time.Now()); err == nil || !strings.Contains(err.Error(), "revoked") {
			t.Fatalf("replaced card's code: %v", err)
		}
		hr.problem(t, "POST", "/v1/cards/"+card+"/recover", nil, 409, "bad_transition")
		res = recorder{login(repl.CardNumber, "258036"), &bodies}
		code3 := newCode(res)
		b := bundle()
		if !b.CardRevoked(card, time.Now()) || b.CardRevoked(repl.CardNumber, time.Now()) {
			t.Fatal("deny list of physical cards wrong")
		}

		// Key rotation: old codes keep verifying; new codes use the new key.
		var rot struct{ Kid string }
		hr.problem(t, "POST", "/v1/keys/rotate", nil, 403, "forbidden")
		op.call(t, "POST", "/v1/keys/rotate", nil, 200, &rot)
		if _, err := bundle().VerifyCode(code3, time.Now()); err != nil {
			t.Fatalf("code of the retired key: %v", err)
		}
		code4 := newCode(res)
		_, hdr, err := bundle().VerifyCodeHeader(code4, time.Now())
		if err != nil || ecode.PublicKey.KidString(ecode.PublicKey{Kid: hdr.Kid}) != rot.Kid {
			t.Fatalf("new code kid %x, rotated to %s: %v", hdr.Kid, rot.Kid, err)
		}
		// A planned rotation announced ahead: the next key is in the bundle
		// at once and signs only from its activation time; a second one
		// while it is pending is refused.
		var next struct {
			Kid        string
			ActiveFrom time.Time `json:"active_from"`
		}
		op.call(t, "POST", "/v1/keys/rotate", map[string]any{"announce_seconds": 600}, 200, &next)
		if d := time.Until(next.ActiveFrom); next.Kid == rot.Kid || d < 590*time.Second || d > 610*time.Second {
			t.Fatalf("announced rotation %+v", next)
		}
		published := false
		for _, k := range bundle().Keys {
			published = published || k.Kid == next.Kid
		}
		code5 := newCode(res)
		_, hdr, err = bundle().VerifyCodeHeader(code5, time.Now())
		if !published || err != nil || ecode.PublicKey.KidString(ecode.PublicKey{Kid: hdr.Kid}) != rot.Kid {
			t.Fatalf("during the announce period: next key published %v, code signed by %x (want %s): %v", published, hdr.Kid, rot.Kid, err)
		}
		op.problem(t, "POST", "/v1/keys/rotate", map[string]any{"announce_seconds": 600}, 409, "conflict")
		op.problem(t, "POST", "/v1/keys/rotate", map[string]any{"announce_seconds": -1}, 422, "validation_failed")
		// At once (a compromised key) withdraws the pending one.
		op.call(t, "POST", "/v1/keys/rotate", map[string]any{"announce_seconds": 0}, 200, &rot)
		_, hdr, err = bundle().VerifyCodeHeader(newCode(res), time.Now())
		if err != nil || ecode.PublicKey.KidString(ecode.PublicKey{Kid: hdr.Kid}) != rot.Kid {
			t.Fatalf("after a rotation at once: code kid %x, want %s: %v", hdr.Kid, rot.Kid, err)
		}

		// Cancel: the end of the card.
		hr.call(t, "POST", "/v1/cards/"+repl.CardNumber+"/cancel", nil, 200, nil)
		res.problem(t, "POST", "/v1/ecodes", nil, 401, "unauthorized")
		hr.problem(t, "POST", "/v1/cards/"+repl.CardNumber+"/recover", nil, 409, "bad_transition")

		// Books balance after the demo's funding.
		var chk struct {
			Accounts, Transfers int64
			SumFen              int64 `json:"sum_fen"`
			JournalOK           bool  `json:"journal_ok"`
		}
		fin.call(t, "GET", "/v1/ledger/check", nil, 200, &chk)
		if chk.SumFen != 0 || !chk.JournalOK || chk.Transfers < 80 {
			t.Fatalf("ledger check %+v", chk)
		}

		// No answer but the reveal, and no log line, carries a full ID number.
		fullID := regexp.MustCompile(`(?i)` + id)
		for i, body := range bodies {
			if i == revealIdx {
				continue
			}
			if fullID.MatchString(body) {
				t.Fatalf("answer %d leaks the ID number: %s", i, body)
			}
		}
		for _, r := range d.Residents {
			if strings.Contains(logs.String(), r.IDNumber) {
				t.Fatalf("log leaks a demo ID number")
			}
		}
		if fullID.MatchString(logs.String()) {
			t.Fatal("log leaks the ID number")
		}
		if !strings.Contains(logs.String(), `"route":"POST /v1/residents"`) {
			t.Fatalf("no structured request log: %.300s", logs.String())
		}
	})
}

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}
