package federation_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/scan"
)

// slowSecondCharge holds the first charge call at the home city until the
// second arrives, then lets the second outlast the AuthTimeout: the first
// call gets an answer, the second times out.
func slowSecondCharge() func(pass http.Handler) http.Handler {
	var n atomic.Int32
	second := make(chan struct{})
	return func(pass http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/v1/federation/charge") {
				switch n.Add(1) {
				case 1:
					<-second // both calls have read the "sending" row
				case 2:
					close(second)
					time.Sleep(time.Second) // longer than the AuthTimeout
				}
			}
			pass.ServeHTTP(w, r)
		})
	}
}

// Two authorisations of one message in flight at once (a terminal retrying
// a scan while its first attempt still waits on the home city): the home
// city answers the first, the second times out. Only the first decision
// stands: both callers are told what it was, and the timeout does not turn
// the acknowledged charge into a void (the home city would reverse a fare
// this city books).
func TestConcurrentAuthorisationsKeepTheFirstDecision(t *testing.T) {
	a, b := pollingHourly(t, slowSecondCharge())
	ctx := context.Background()
	res := a.demo.Residents[0]
	card, _ := a.Residents.Card(ctx, res.CardNumber)
	w0 := a.wallet(t, res.CardNumber)
	cti := fmt.Sprintf("race-%d", time.Now().UnixNano())
	id := federation.MessageID(b.id, cti)
	req := scan.RemoteCharge{CTI: cti, Subject: card.Token, AmountFen: 300, Scenario: "transit.bus"}
	var rs [2]scan.RemoteResult
	var errs [2]error
	var wg sync.WaitGroup
	for i := range rs {
		wg.Add(1)
		go func() { defer wg.Done(); rs[i], errs[i] = b.Fed.Authorize(ctx, a.id, req) }()
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil || !rs[0].Approved || !rs[1].Approved {
		t.Fatalf("both calls must report the home city's approval: %+v %v / %+v %v", rs[0], errs[0], rs[1], errs[1])
	}
	if st := outState(t, b, id); st != "acked" {
		t.Fatalf("the outbox row is %q, want acked", st)
	}
	// Nothing is left to send: no void goes to the home city.
	for i := 0; i < 3; i++ {
		b.Fed.DrainOutbox(ctx)
		time.Sleep(300 * time.Millisecond)
	}
	if got := a.wallet(t, res.CardNumber); got != w0-300 {
		t.Fatalf("the home city's charge did not stand: wallet %d → %d (row at home %q)", w0, got, inState(t, a, id))
	}
}

// Two offline acceptances of one message with the home city down: the
// second must not count the first's own amount in the card's exposure and
// void the charge the first accepted.
func TestConcurrentOfflineAcceptanceDoesNotCountItself(t *testing.T) {
	a, b := pollingHourly(t, func(pass http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/v1/federation/charge") {
				time.Sleep(100 * time.Millisecond)
				w.WriteHeader(502)
				return
			}
			pass.ServeHTTP(w, r)
		})
	})
	ctx := context.Background()
	card, _ := a.Residents.Card(ctx, a.demo.Residents[0].CardNumber)
	cti := fmt.Sprintf("race-x-%d", time.Now().UnixNano())
	id := federation.MessageID(b.id, cti)
	// 300 fits the risk limit once (500), not twice.
	req := scan.RemoteCharge{CTI: cti, Subject: card.Token, AmountFen: 300, Scenario: "transit.bus", OfflineAllowed: true}
	var rs [2]scan.RemoteResult
	var wg sync.WaitGroup
	for i := range rs {
		wg.Add(1)
		go func() { defer wg.Done(); rs[i], _ = b.Fed.Authorize(ctx, a.id, req) }()
	}
	wg.Wait()
	if !rs[0].Queued || !rs[1].Queued {
		t.Fatalf("both calls must report the one queued acceptance: %+v / %+v", rs[0], rs[1])
	}
	if st := outState(t, b, id); st != "pending" {
		t.Fatalf("the outbox row is %q, want pending (the charge to send)", st)
	}
}

// End to end: a terminal retries a scan (same key, same code) while the
// first attempt still waits for the home city; the books of both cities
// still mirror each other.
func TestScanRetryDuringAuthorisationKeepsBooksMirrored(t *testing.T) {
	a, b := pollingHourly(t, slowSecondCharge())
	res := a.demo.Residents[0]
	code := a.code(t, res.CardNumber)
	var rs [2]scanAnswer
	var wg sync.WaitGroup
	for i := range rs {
		wg.Add(1)
		go func() { defer wg.Done(); rs[i] = b.scan(t, "medical.outpatient", "retry-1", code, 1000, res.PIN) }()
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	if rs[0].Decision != rs[1].Decision {
		t.Fatalf("one scan, two answers: %+v / %+v", rs[0], rs[1])
	}
	checkBooks(t, a, b)
}

// An online authorisation whose scan was never booked here (the booking
// failed after the home city charged, and the terminal gave up) is voided
// at the home city once BookingGrace has passed, so the home city does
// not keep money this city never credited; a booked scan's charge stands.
func TestUnbookedAuthorisationIsVoided(t *testing.T) {
	a, b := pollingHourlyWith(t, nil, func(c *federation.Config) { c.BookingGrace = 400 * time.Millisecond })
	ctx := context.Background()
	r0, r1 := a.demo.Residents[0], a.demo.Residents[1]
	card0, _ := a.Residents.Card(ctx, r0.CardNumber)
	w0, w1 := a.wallet(t, r0.CardNumber), a.wallet(t, r1.CardNumber)
	bus := b.terminal(t, "transit.bus")

	// Authorised, charged at home, never booked here.
	cti := fmt.Sprintf("unbooked-%d", time.Now().UnixNano())
	id := federation.MessageID(b.id, cti)
	res, err := b.Fed.Authorize(ctx, a.id, scan.RemoteCharge{CTI: cti, Subject: card0.Token, AmountFen: 300, Scenario: "transit.bus",
		Terminal: bus.ID, Key: "lost-booking-1", Provider: bus.Provider})
	if err != nil || !res.Approved {
		t.Fatalf("authorise: %+v %v", res, err)
	}
	if got := a.wallet(t, r0.CardNumber); got != w0-300 {
		t.Fatalf("home wallet %d, want %d", got, w0-300)
	}
	// A real scan, booked.
	if ans := b.scan(t, "transit.bus", "booked-1", a.code(t, r1.CardNumber), 0, ""); ans.Decision != "accepted" {
		t.Fatalf("scan: %+v", ans)
	}
	booked := a.wallet(t, r1.CardNumber)
	if booked >= w1 {
		t.Fatalf("the booked scan did not charge at home: %d → %d", w1, booked)
	}

	time.Sleep(500 * time.Millisecond)
	eventually(t, "the unbooked charge to be voided at home", 10*time.Second, func() bool {
		b.Fed.DrainOutbox(ctx)
		return a.wallet(t, r0.CardNumber) == w0 && outState(t, b, id) == "voided"
	})
	if got := a.wallet(t, r1.CardNumber); got != booked {
		t.Fatalf("the booked scan's charge was undone: %d → %d", booked, got)
	}
	checkBooks(t, a, b)
}
