package web

import (
	"context"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/trust"
)

// clearingWeb is a Web over a real SQLite ledger holding cross-city
// takings (one reversed in part) and fake federation functions: peer
// CN-310000 reconciles with one difference, CN-320100 cannot be reached.
func clearingWeb(t *testing.T) *Web {
	t.Helper()
	ctx := context.Background()
	db, l := testLedger(t)
	for _, a := range []ledger.Account{
		{ID: ledger.ClearingID("CN-310000"), Kind: ledger.KindClearing, Floor: -1 << 40},
		{ID: ledger.ClearingID("CN-320100"), Kind: ledger.KindClearing, Floor: -1 << 40},
		{ID: ledger.ReceivableID("bus"), Kind: ledger.KindReceivable},
	} {
		if _, err := l.CreateAccount(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	tr := func(key, peer string, amount int64) ledger.Transfer {
		x, err := l.Transfer(ctx, ledger.TransferRequest{Key: key, Debit: ledger.ClearingID(peer), Credit: ledger.ReceivableID("bus"), Amount: amount, Kind: "fed_charge"})
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	x := tr("t1", "CN-310000", 300)
	tr("t2", "CN-320100", 50)
	if _, err := l.Reverse(ctx, "r1", x.ID, 100); err != nil {
		t.Fatal(err)
	}
	d := Deps{DB: db, Ledger: l, City: "CN-330100", Now: func() time.Time { return time.Date(2026, 3, 10, 4, 0, 0, 0, time.UTC) },
		ClearingPositions: func(context.Context) ([]federation.Position, error) {
			return []federation.Position{
				{Peer: "CN-310000", OwedToUsFen: 200, PendingMessages: 2, BalanceFen: -200},
				{Peer: "CN-320100", WeOweFen: 1234, BalanceFen: 1234},
			}, nil
		},
		ClearingReconcile: func(_ context.Context, peer string, from, to time.Time) (federation.Reconciliation, error) {
			// The default window: the last seven days, China time.
			if want := time.Date(2026, 3, 4, 0, 0, 0, 0, cst); !from.Equal(want) || !to.Equal(want.AddDate(0, 0, 7)) {
				return federation.Reconciliation{}, errors.New("wrong window " + from.String() + " " + to.String())
			}
			if peer == "CN-320100" {
				return federation.Reconciliation{}, apperr.Newf(apperr.Unavailable, "the peer could not be asked", "无法联系对方城市")
			}
			m := federation.MessageInfo{ID: "msg-<only>", Debtor: peer, Creditor: "CN-330100", AmountFen: 75, Booked: true, State: "acked"}
			return federation.Reconciliation{Peer: peer, Here: 3, There: 2, Discrepancies: []federation.Discrepancy{{ID: m.ID, Here: &m, Reason: "only_here"}}}, nil
		},
	}
	w, err := New(d)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// testLedger is a ledger on a new SQLite database, closed when t ends.
func testLedger(t *testing.T) (*store.DB, *ledger.Ledger) {
	t.Helper()
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "y.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	l, err := ledger.Open(ctx, db, ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return db, l
}

func renderAs(t *testing.T, w *Web, role auth.Role, lang string, h handlerFunc) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/console/clearing", nil)
	rq := w.newReq(rec, r)
	rq.Lang = lang
	rq.S = &session{P: auth.Principal{Kind: auth.KindStaff, Subject: "u1", Role: role}, CSRF: "csrf-token"}
	if err := h(rq); err != nil {
		rq.fail(err)
	}
	return rec.Code, rec.Body.String()
}

func TestClearingTakings(t *testing.T) {
	w := clearingWeb(t)
	m, err := w.clearingTakings(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 2 || m["CN-310000"] != 200 || m["CN-320100"] != 50 {
		t.Fatalf("takings per peer: %v (want 300−100 and 50)", m)
	}
}

func TestClearingPageRendering(t *testing.T) {
	w := clearingWeb(t)
	st, body := renderAs(t, w, auth.RoleFinance, "en", w.consoleClearing)
	if st != 200 {
		t.Fatalf("%d %s", st, body)
	}
	for _, want := range []string{
		`id="total-owed">¥2.00<`, `id="total-weowe">¥12.34<`, `id="total-pending">2<`, `id="total-diffs">1<`,
		`class="num takings">2.00<`, `class="num takings">0.50<`,
		`id="diffs-CN-310000"`, `msg-&lt;only&gt;`, "booked only here", "CN-310000 → CN-330100 ¥0.75 · acked",
		"the peer could not be asked", // CN-320100's reconciliation error
		`name="csrf" value="csrf-token"`, `id="settle-form"`, `name="day" value="2026-03-09"`,
		`value="2026-03-04"`, `value="2026-03-10"`,
	} {
		if !strings.Contains(body, want) {
			t.Fatalf("page lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "msg-<only>") {
		t.Fatal("a message id is not escaped")
	}
	rowB := body[strings.Index(body, `<tr id="peer-CN-320100">`):]
	rowB = rowB[:strings.Index(rowB, "</tr>")]
	if !strings.Contains(rowB, `class="num weowe">12.34<`) || !strings.Contains(rowB, `class="num owed">0.00<`) || strings.Contains(rowB, "Matches") {
		t.Fatalf("row of CN-320100: %s", rowB)
	}

	// An operator sees the same figures without the settle button;
	// Chinese is the default.
	_, body = renderAs(t, w, auth.RoleOperator, "zh", w.consoleClearing)
	if strings.Contains(body, `id="settle-form"`) || !strings.Contains(body, "对方应付我方") || !strings.Contains(body, "仅本方记账") {
		t.Fatalf("operator page:\n%s", body)
	}

	// A bad window is a validation error on the page, not a failure.
	rec := httptest.NewRecorder()
	rq := w.newReq(rec, httptest.NewRequest("GET", "/console/clearing?from=2026-03-10&to=2026-03-01", nil))
	rq.S = &session{P: auth.Principal{Kind: auth.KindStaff, Role: auth.RoleFinance}}
	if err := w.consoleClearing(rq); err != nil || rec.Code != 422 {
		t.Fatalf("reversed window: %v %d", err, rec.Code)
	}
}

func TestClearingNotInRegionRendering(t *testing.T) {
	w, err := New(Deps{City: "CN-330100"})
	if err != nil {
		t.Fatal(err)
	}
	st, body := renderAs(t, w, auth.RoleFinance, "en", w.consoleClearing)
	if st != 200 || !strings.Contains(body, "not in a region") || strings.Contains(body, `id="settle-form"`) {
		t.Fatalf("%d %s", st, body)
	}
}

func TestSettledRows(t *testing.T) {
	sig := &trust.Signature{Alg: "SM2", Kid: "k", Value: "v"}
	rows := settledRows("CN-330100", []federation.SignedStatement{
		// We are B of the pair (CN-310000 < CN-330100).
		{Statement: federation.Statement{Day: "2026-03-09", A: "CN-310000", B: "CN-330100", AOwesB: "500", BOwesA: "120", Messages: "4", Digest: strings.Repeat("ab", 32)}, Agreed: true, Peer: sig},
		// We are A of the pair; the peer did not countersign.
		{Statement: federation.Statement{Day: "2026-03-09", A: "CN-330100", B: "CN-340100", AOwesB: "70", BOwesA: "0", Messages: "1"}, Error: "the peer's figures differ"},
	})
	if len(rows) != 2 {
		t.Fatal(rows)
	}
	if r := rows[0]; r.Peer != "CN-310000" || r.OwedToUsFen != 500 || r.WeOweFen != 120 || r.NetToUsFen != 380 || !r.Agreed || !r.Countersigned || len([]rune(r.Digest)) != 17 {
		t.Fatalf("we are B: %+v", r)
	}
	if r := rows[1]; r.Peer != "CN-340100" || r.OwedToUsFen != 0 || r.WeOweFen != 70 || r.NetToUsFen != -70 || r.Agreed || r.Countersigned || r.Error == "" {
		t.Fatalf("we are A: %+v", r)
	}
}
