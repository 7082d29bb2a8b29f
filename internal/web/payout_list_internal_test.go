package web

import (
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/subsidy"
)

// TestSplitPayoutListUnits: the console honours a unit its list's header
// names (分/fen: fen, 元/yuan: yuan) and reads a bare amount column (金额,
// amount), or a list without a header, in yuan, as its page says; a
// header naming both units, or the amount in another column, refuses the
// list whole. No list is paid at a hundredth or a hundred times its
// meaning.
func TestSplitPayoutListUnits(t *testing.T) {
	for _, c := range []struct {
		header string
		fen    string // what "150" on the line is handed on as
	}{
		{"", "15000"},
		{"证件号码或卡号,金额（元）,业务流水号\n", "15000"},
		{"证件号码或卡号,金额(元),业务流水号\n", "15000"},
		{"id_or_card,amount_yuan,reference\n", "15000"},
		{"id_or_card,Amount (Yuan),reference\n", "15000"},
		{"证件号码或卡号,金额（分）,业务流水号\n", "150"},
		{"id_or_card,amount_fen,reference\n", "150"},
		{"id_or_card,AMOUNT_FEN,reference\n", "150"},
		{"证件号码或卡号,金额,业务流水号\n", "15000"},
		{"id_or_card,amount,reference\n", "15000"},
		{"\ufeff证件号码或卡号,金额（分）,业务流水号\n", "150"},
	} {
		recs, bad, err := splitPayoutList(strings.NewReader(c.header + "8800000001,150,R-1\n"))
		if err != nil || len(bad) != 0 || len(recs) != 1 {
			t.Fatalf("header %q: %+v %+v %v", c.header, recs, bad, err)
		}
		want := 1
		if c.header != "" {
			want = 2
		}
		if r := recs[0]; r.rec[1] != c.fen || r.line != want {
			t.Fatalf("header %q: 150 on line %d handed on as %q, want %q on line %d", c.header, r.line, r.rec[1], c.fen, want)
		}
	}
	// Ambiguous headers: refused whole, nothing paid.
	for _, h := range []string{"卡号,金额（元/分）,流水号", "id,amount_fen_or_yuan,ref", "amount,id,reference", "流水号,卡号,金额",
		"卡号,金额（万元）,流水号", "卡号,金额（角）,流水号", "id,amount_cents,ref", "id,Amount (Cents),ref"} {
		_, _, err := splitPayoutList(strings.NewReader(h + "\n8800000001,150,R-1\n"))
		if apperr.CodeOf(err) != apperr.ValidationFailed {
			t.Fatalf("header %q: %v, want the list refused", h, err)
		}
	}
}

// TestSplitPayoutListFirstLine: a first line the API's reader takes for a
// line (its second column names no amount, and it holds digits) is a line
// here too, never silently dropped as a header: reported refused with its
// line number when its amount is bad, read in yuan otherwise.
func TestSplitPayoutListFirstLine(t *testing.T) {
	recs, bad, err := splitPayoutList(strings.NewReader("8800000001,150.5x,补贴金额2024\n8800000002,2,R-2\n"))
	if err != nil || len(recs) != 1 || recs[0].line != 2 || len(bad) != 1 ||
		bad[0] != (subsidy.LineResult{Line: 1, Status: subsidy.Refused, Reason: subsidy.ReasonBadAmount}) {
		t.Fatalf("recs %+v bad %+v %v", recs, bad, err)
	}
	recs, bad, err = splitPayoutList(strings.NewReader("\n\n8800000001,150.00,补贴金额2024\n"))
	if err != nil || len(bad) != 0 || len(recs) != 1 || recs[0].line != 3 || recs[0].rec[1] != "15000" {
		t.Fatalf("recs %+v bad %+v %v", recs, bad, err)
	}
	// Under a fen header the same line is a bad amount.
	recs, bad, err = splitPayoutList(strings.NewReader("卡号,金额（分）,流水号\n8800000001,150.00,补贴金额2024\n"))
	if err != nil || len(recs) != 0 || len(bad) != 1 || bad[0].Line != 2 || bad[0].Reason != subsidy.ReasonBadAmount {
		t.Fatalf("recs %+v bad %+v %v", recs, bad, err)
	}
}

// TestSplitPayoutListFenAmounts: under a fen header the console checks
// the amounts itself, so what it hands on in chunks without their header
// always has a whole number of fen in its second column, and no line that
// starts a chunk can be taken by subsidy.Upload for a header (dropped
// unreported, or refusing the chunk whole).
func TestSplitPayoutListFenAmounts(t *testing.T) {
	list := "卡号,amount_fen,流水号\n" +
		"8800000001,amount,R-1\n" + // a header if it started a chunk
		"abc,x,金额\n" + //             "the amount in another column"
		"8800000002,0,R-3\n" +
		"8800000002,-5,R-4\n" +
		"8800000002, 300 ,R-5\n"
	recs, bad, err := splitPayoutList(strings.NewReader(list))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].line != 6 || len(bad) != 4 {
		t.Fatalf("recs %+v bad %+v", recs, bad)
	}
	for i, b := range bad {
		if b.Line != i+2 || b.Reason != subsidy.ReasonBadAmount {
			t.Fatalf("bad %+v", bad)
		}
	}
	for _, r := range recs {
		if h, _, err := subsidy.HeaderUnit(r.rec); h || err != nil {
			t.Fatalf("line %d %q would be a header to subsidy.Upload", r.line, r.rec)
		}
	}
}

// TestPayoutReasonTexts: every refusal reason of internal/subsidy has its
// words in both languages.
func TestPayoutReasonTexts(t *testing.T) {
	for _, r := range []string{subsidy.ReasonUnknownPerson, subsidy.ReasonCancelledCard, subsidy.ReasonExhausted, subsidy.ReasonMalformed,
		subsidy.ReasonBadAmount, subsidy.ReasonConflict, subsidy.ReasonDuplicate, subsidy.ReasonUnavailable, subsidy.ReasonReversed, subsidy.ReasonIDInReference} {
		m, ok := messages["payout."+r]
		if !ok || m[0] == "" || m[1] == "" {
			t.Errorf("no words for payout reason %q", r)
		}
	}
	if zh := tr("zh", "payout."+subsidy.ReasonIDInReference); !strings.Contains(zh, "证件号码") || !strings.Contains(zh, "流水号") {
		t.Errorf("id_number_in_reference: %q", zh)
	}
	if en := tr("en", "payout."+subsidy.ReasonIDInReference); !strings.Contains(en, "ID number") || !strings.Contains(en, "another reference") {
		t.Errorf("id_number_in_reference: %q", en)
	}
}
