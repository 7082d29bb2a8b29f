package web_test

import (
	"fmt"
	"html"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// TestPayoutReportReversedAndIDReference: the payout report says in words
// why a line was refused when its reference holds an ID number (use
// another reference, never an ID number; the ID number is not shown) and
// when it was paid before and reversed since (with the amount reversed,
// in yuan), in Chinese and in English.
func TestPayoutReportReversedAndIDReference(t *testing.T) {
	eachBackend(t, 3, func(t *testing.T, tn *nodetest.Node) {
		ctx := t.Context()
		if _, err := tn.Subsidies.CreateProgramme(ctx, "rev-2026", "Reversed"); err != nil {
			t.Fatal(err)
		}
		if _, err := tn.Subsidies.Fund(ctx, "rev-2026", "fund-rev", 100000); err != nil {
			t.Fatal(err)
		}
		hr := newBrowser(t, tn.URL).staffAs(tn, "hr_admin")
		r0, r1 := tn.Demo.Residents[0], tn.Demo.Residents[1]
		list := r0.CardNumber + ",2.50,REV-1\n" + r0.CardNumber + ",1.00,补贴" + r1.IDNumber + "\n"
		snap, page := payList(t, hr, "rev-2026", list)
		if snap.Paid != 1 || snap.Refused != 1 {
			t.Fatalf("first upload: %+v", snap)
		}
		page = html.UnescapeString(contentOf(page))
		mustContain(t, "the report", page, "id_number_in_reference", "请改用其他流水号", "切勿使用证件号码")
		mustNotContain(t, "the report", page, r1.IDNumber)

		tr, err := tn.Ledger.GetTransferByKey(ctx, "subsidy:rev-2026:REV-1")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tn.Ledger.Reverse(ctx, "rev-test", tr.ID, 120); err != nil {
			t.Fatal(err)
		}
		snap, page = payList(t, hr, "rev-2026", list)
		if snap.Paid != 0 || snap.AlreadyPaid != 0 || snap.Refused != 2 {
			t.Fatalf("second upload: %+v", snap)
		}
		page = html.UnescapeString(contentOf(page))
		mustContain(t, "the report", page, "reversed", "已被冲正", "不再发放", "¥1.20")
		loc := page[strings.Index(page, `data-progress="`)+len(`data-progress="`):]
		loc = strings.TrimSuffix(loc[:strings.IndexByte(loc, '"')], "/progress")
		hr.do("GET", "/lang?l=en", nil)
		_, en, _ := hr.do("GET", loc, nil)
		en = html.UnescapeString(contentOf(en))
		mustContain(t, "the English report", en, "reversed since", "not paid again", "¥1.20", "use another reference", "never an ID number")
		if got := balance(t, tn, ledger.ProgrammeID("rev-2026")); got != 100000-250+120 {
			t.Fatalf("programme holds %d fen", got)
		}
	})
}

// TestPayoutFenListAcrossChunks: under a fen header the console checks
// every amount itself, so a line that starts a chunk (the first of the
// second is the file's line 252) is never taken for a header by
// subsidy.Upload: not dropped unreported, and not refusing the chunk's
// good lines with it.
func TestPayoutFenListAcrossChunks(t *testing.T) {
	eachBackend(t, 2, func(t *testing.T, tn *nodetest.Node) {
		ctx := t.Context()
		if _, err := tn.Subsidies.CreateProgramme(ctx, "chunk-2026", "Chunks"); err != nil {
			t.Fatal(err)
		}
		if _, err := tn.Subsidies.Fund(ctx, "chunk-2026", "fund-chunk", 100000); err != nil {
			t.Fatal(err)
		}
		hr := newBrowser(t, tn.URL).staffAs(tn, "hr_admin")
		r0 := tn.Demo.Residents[0]
		for i, odd := range []string{"abc,x,金额", r0.CardNumber + ",amount,C-X"} {
			var l strings.Builder
			l.WriteString("id_or_card,amount_fen,reference\n")
			for j := range 250 {
				fmt.Fprintf(&l, "NOBODY%04d,100,U-%d\n", j, j)
			}
			l.WriteString(odd + "\n")                          // line 252
			fmt.Fprintf(&l, "%s,300,C-%d\n", r0.CardNumber, i) // line 253
			snap, page := payList(t, hr, "chunk-2026", l.String())
			if snap.Total != 252 || snap.Paid != 1 || snap.Refused != 251 || snap.PaidFen != 300 {
				t.Fatalf("list %d: %+v", i, snap)
			}
			mustContain(t, "the report", page, `<tr class="row-refused"><td>252</td>`, `<tr class="row-paid"><td>253</td>`)
		}
	})
}

// TestPayoutPageUnits: the upload form says plainly which unit the
// console reads: yuan without a header or under a bare amount column
// (金额), fen under 金额（分）/amount_fen, yuan under 金额（元）/amount_yuan.
func TestPayoutPageUnits(t *testing.T) {
	eachBackend(t, 1, func(t *testing.T, tn *nodetest.Node) {
		if _, err := tn.Subsidies.CreateProgramme(t.Context(), "units-2026", "Units"); err != nil {
			t.Fatal(err)
		}
		hr := newBrowser(t, tn.URL).staffAs(tn, "hr_admin")
		_, page, _ := hr.do("GET", "/console/subsidies", nil)
		form := html.UnescapeString(contentOf(page))
		form = form[strings.Index(form, `id="payout-form"`):]
		mustContain(t, "the upload form", form, "金额（分）", "amount_fen", "金额（元）", "“金额”", "按元计", "按分计", "API")
		hr.do("GET", "/lang?l=en", nil)
		_, page, _ = hr.do("GET", "/console/subsidies", nil)
		form = html.UnescapeString(contentOf(page))
		form = form[strings.Index(form, `id="payout-form"`):]
		mustContain(t, "the English upload form", form, "in yuan", "in fen", "金额（分）", "amount_fen", "金额（元）", "amount_yuan", "API")
	})
}
