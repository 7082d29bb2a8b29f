package scan

import (
	"errors"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/terminal"
)

// TestMarkGuardInOneLedgerBatch: the rows of two uploads of one terminal
// in the same ledger batch, both checked against the same mark, are
// admitted as if one upload ran after the other. The first upload's row
// moves the mark (as Write will); the other upload's row is then checked
// against it: sent back (errMarkMoved) if it is out of order after it,
// admitted if not. The first upload's later row passes against its own
// record although it is dated more than OfflineClockBack after it: its
// batch's clock went back in steps, each within the tolerance, which the
// checks inside the batch allowed. Another terminal's rows are checked
// against its mark (moved on since their upload read it: admitted or sent
// back by the same rules); a legacy pending row is not checked.
func TestMarkGuardInOneLedgerBatch(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	at := func(min int64) time.Time { return t0.Add(time.Duration(min) * time.Minute) }
	base := terminal.Mark{Seq: 3, At: t0, Set: true}
	recs := func(seqMin ...int64) []terminal.Record { // seq, minutes after t0, …
		var out []terminal.Record
		for i := 0; i < len(seqMin); i += 2 {
			out = append(out, terminal.Record{ID: "r", Seq: seqMin[i], At: at(seqMin[i+1])})
		}
		return out
	}
	// A's batch: its clock went back 4 minutes twice.
	chkA := newMarkCheck(base, recs(10, 9, 11, 5, 12, 1), make([]RecordReport, 3))
	chkB := newMarkCheck(base, recs(9, 3, 13, -60), make([]RecordReport, 2))
	chkOld := newMarkCheck(terminal.Mark{}, recs(20, 5), make([]RecordReport, 1))
	row := func(term, key string, seq, min int64, chk *markCheck, update bool) *ledger.Attachment {
		rec := &record{terminal: term, key: key, offline: true, at: at(min).UnixMilli(), seq: seq, numbered: chk != nil, state: stateFinal}
		return &ledger.Attachment{Value: &attachRow{rec: rec, mark: chk, update: update}}
	}
	atts := []*ledger.Attachment{
		row("T", "off:a12", 12, 1, chkA, false),   // A's row: the mark as A read it
		row("T", "off:b13", 13, -60, chkB, false), // B's row: 61 minutes before A's a12
		row("T", "off:b9", 9, 3, chkB, false),     // B's row: in order with a12
		row("T", "off:a10", 10, 9, chkA, false),   // A's row: 8 minutes after A's own a12
		row("T", "off:old", 0, 0, nil, true),      // a legacy pending row: not checked
		row("U", "off:u20", 20, 5, chkOld, false), // U's mark moved on: in order with it
		row("W", "off:w5", 5, 30, chkOld, false),  // W's mark moved on: out of order with it
		row("V", "off:v20", 20, 5, chkOld, false), // V has no mark yet
	}
	want := []error{nil, errMarkMoved, nil, nil, nil, nil, errMarkMoved, nil}
	r := &rows{}
	c, reads := r.newClaim(atts)
	if len(reads) == 0 {
		t.Fatal("no reads")
	}
	if len(c.marks) != 4 {
		t.Fatalf("marks of %v read, want T, U, W and V", c.marks)
	}
	// As read under the batch's lock.
	c.marks["T"] = stateOf(base)
	c.marks["U"] = markState{seq: 7, at: t0.UnixMilli(), set: true}
	c.marks["W"] = markState{seq: 7, at: t0.UnixMilli(), set: true}
	c.stored[tk{"T", "off:old"}] = &record{state: statePending}
	if err := c.decide(); err != nil {
		t.Fatal(err)
	}
	for i, a := range atts {
		if !errors.Is(a.Refused, want[i]) || (want[i] == nil) != (a.Refused == nil) {
			t.Errorf("row %s: refused %v, want %v", a.Value.(*attachRow).rec.key, a.Refused, want[i])
		}
	}
	if m := c.marks["T"]; m.seq != 12 || m.at != at(1).UnixMilli() {
		t.Errorf("T's mark after the batch's rows: %+v, want a12's", m)
	}
}
