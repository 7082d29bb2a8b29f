package subsidy

import (
	"context"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// A line with the longest reference a list may carry (64 characters), in a
// programme with the longest id CreateProgramme accepts (64 characters),
// is paid, once: its ledger key must fit the ledger's 128 bytes (it was
// "subsidy:<programme>:<reference>", 137 bytes, and every such line was
// refused with validation_failed, however often it was uploaded).
func TestUploadLongProgrammeAndReference(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		l, err := ledger.Open(ctx, storetest.Open(t, dsn), ledger.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		for _, r := range []string{"R1", "R2"} {
			if _, _, err := l.OpenResidentAccounts(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		s := &Service{L: l, R: fakeResolver{"8800000001": "w:R1", "8800000002": "w:R2"}}
		prog := strings.Repeat("p", 64)
		if _, err := s.CreateProgramme(ctx, prog, "long"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Fund(ctx, prog, "fund-1", 10_000); err != nil {
			t.Fatal(err)
		}
		ref := strings.Repeat("r", 63)
		list := "8800000001,100," + ref + "a\n" + "8800000001,100," + ref + "b\n"
		statuses := func(rep Report) string {
			var out []string
			for _, lr := range rep.Lines {
				out = append(out, lr.Status+":"+lr.Reason)
			}
			return strings.Join(out, ",")
		}
		rep, err := s.Upload(ctx, prog, strings.NewReader(list))
		if err != nil || rep.Paid != 2 || rep.PaidFen != 200 {
			t.Fatalf("first upload: %s %+v %v", statuses(rep), rep, err)
		}
		// Uploaded again: paid already; the same reference for another
		// person is a conflict, never a second payment.
		rep, err = s.Upload(ctx, prog, strings.NewReader(list))
		if err != nil || statuses(rep) != "already_paid:,already_paid:" {
			t.Fatalf("second upload: %s %v", statuses(rep), err)
		}
		rep, err = s.Upload(ctx, prog, strings.NewReader("8800000002,100,"+ref+"a\n"))
		if err != nil || statuses(rep) != "refused:reference_conflict" {
			t.Fatalf("other person: %s %v", statuses(rep), err)
		}
		for id, want := range map[string]int64{"w:R1": 200, "w:R2": 0, ledger.ProgrammeID(prog): 9_800} {
			if a, _ := l.Balance(ctx, id); a.Balance != want {
				t.Errorf("%s = %d, want %d", id, a.Balance, want)
			}
		}
		// A line whose plain key fits keeps it: one paid under that key
		// before is recognised as paid.
		if _, err := s.CreateProgramme(ctx, "farm2024", ""); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Fund(ctx, "farm2024", "fund-2", 1_000); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Transfer(ctx, ledger.TransferRequest{Key: "subsidy:farm2024:A1", Debit: "sp:farm2024", Credit: "w:R2", Amount: 300,
			Kind: "subsidy", Meta: map[string]string{"programme": "farm2024", "reference": "A1"}}); err != nil {
			t.Fatal(err)
		}
		if rep, err := s.Upload(ctx, "farm2024", strings.NewReader("8800000002,300,A1\n")); err != nil || statuses(rep) != "already_paid:" {
			t.Fatalf("short key: %s %v", statuses(rep), err)
		}
	})
}

// A header in Chinese (as the console's own lists and Excel templates
// write it) is a header, not a refused line, as the console already
// treats it: the API and the console report the same list alike.
func TestUploadChineseHeader(t *testing.T) {
	ctx := context.Background()
	l, err := ledger.Open(ctx, storetest.Open(t, storetest.SQLite(t)), ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, _, err := l.OpenResidentAccounts(ctx, "R1"); err != nil {
		t.Fatal(err)
	}
	s := &Service{L: l, R: fakeResolver{"8800000001": "w:R1"}}
	if _, err := s.CreateProgramme(ctx, "heating-2026", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Fund(ctx, "heating-2026", "fund-1", 1_000); err != nil {
		t.Fatal(err)
	}
	rep, err := s.Upload(ctx, "heating-2026", strings.NewReader("\ufeff证件号码或卡号,金额（分）,业务编号\n8800000001,150,H1\n"))
	if err != nil || rep.Paid != 1 || rep.Refused != 0 || len(rep.Lines) != 1 || rep.Lines[0].Line != 2 {
		t.Fatalf("%+v %v", rep, err)
	}
}
