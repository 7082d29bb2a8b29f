package web

import (
	"context"
	"encoding/csv"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/ledger"
)

// A provider whose period holds more movements than a page shows: the
// page shows the latest 1,000 and says how many more there are, the
// period's total counts them all, the settlement export holds every one,
// and a range beyond what an export may hold is refused, never cut.
func TestStatementsBeyondOnePage(t *testing.T) {
	ctx := context.Background()
	db, l := testLedger(t)
	bus, wallet := ledger.ReceivableID("bus"), ledger.WalletID("r1")
	for _, a := range []ledger.Account{{ID: bus, Kind: ledger.KindReceivable}, {ID: wallet, Kind: ledger.KindWallet}} {
		if _, err := l.CreateAccount(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	const fares, fare = 1205, 200
	reqs := []ledger.TransferRequest{{Key: "fund", Debit: ledger.AccountBank, Credit: wallet, Amount: fares * fare}}
	for i := 0; i < fares; i++ {
		reqs = append(reqs, ledger.TransferRequest{Key: fmt.Sprint("fare-", i), Debit: wallet, Credit: bus, Amount: fare, Kind: "fare", Memo: fmt.Sprint("fare ", i)})
	}
	for _, r := range l.Batch(ctx, reqs) {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	w, err := New(Deps{DB: db, Ledger: l, City: "CN-330100", Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string, h handlerFunc) (int, string, string) {
		rec := httptest.NewRecorder()
		rq := w.newReq(rec, httptest.NewRequest("GET", path, nil))
		rq.Lang = "en"
		rq.S = &session{P: auth.Principal{Kind: auth.KindStaff, Subject: "u1", Role: auth.RoleFinance}, CSRF: "c"}
		if err := h(rq); err != nil {
			rq.fail(err)
		}
		return rec.Code, rec.Body.String(), rec.Header().Get("Content-Type")
	}

	st, body, _ := get("/console/takings?provider=bus", w.consoleTakings)
	if st != 200 {
		t.Fatalf("takings: %d %.500s", st, body)
	}
	if n := strings.Count(body[strings.Index(body, `<table id="lines">`):], "<tr><td>"); n != screenLines {
		t.Fatalf("the page shows %d lines, want the latest %d", n, screenLines)
	}
	if !strings.Contains(body, "fare 1204") || strings.Contains(body, ">fare 204<") {
		t.Fatal("the page does not show the latest lines")
	}
	if !strings.Contains(body, `id="more-lines"`) || !strings.Contains(body, fmt.Sprint(" ", fares-screenLines, "</p>")) {
		t.Fatalf("no notice of the %d lines not shown", fares-screenLines)
	}
	if want := "¥2,410.00"; fares*fare != 241000 || !strings.Contains(body, "in the period "+want) { // with thousands separators
		t.Fatalf("the period's total is not %s (every fare):\n%.2000s", want, body[strings.Index(body, "Provider"):])
	}

	st, body, ct := get("/console/takings/export?provider=bus&format=csv", w.consoleTakingsExport)
	if st != 200 || !strings.HasPrefix(ct, "text/csv") {
		t.Fatalf("export: %d %s %.300s", st, ct, body)
	}
	recs, err := csv.NewReader(strings.NewReader(strings.TrimPrefix(body, "\ufeff"))).ReadAll()
	if err != nil || len(recs) != fares+1 {
		t.Fatalf("the export holds %d rows (%v), want a header and %d fares", len(recs), err, fares)
	}

	old := exportLines
	exportLines = 1000
	defer func() { exportLines = old }()
	st, body, _ = get("/console/takings/export?provider=bus&format=csv", w.consoleTakingsExport)
	if st == 200 || !strings.Contains(body, "more than 1000 movements") {
		t.Fatalf("an export over the bound: %d %.300s", st, body)
	}
}
