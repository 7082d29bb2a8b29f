package subsidy

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

type fakeResolver map[string]string

func (f fakeResolver) Resolve(ctx context.Context, who string) (string, error) {
	switch w := f[who]; w {
	case "":
		return "", apperr.New(apperr.NotFound)
	case "cancelled":
		return "", apperr.New(apperr.CardNotActive)
	default:
		return w, nil
	}
}

func TestUploadPaysEachLineOnce(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db := storetest.Open(t, dsn)
		l, err := ledger.Open(ctx, db, ledger.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		res := fakeResolver{"110105194912310029": "w:R1", "8800000002": "w:R2", "110105194912310037": "cancelled"}
		for _, r := range []string{"R1", "R2"} {
			if _, _, err := l.OpenResidentAccounts(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		s := &Service{L: l, R: res}
		if _, err := s.CreateProgramme(ctx, "farm2024", "farm subsidy 2024"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Fund(ctx, "farm2024", "fund-1", 10000); err != nil {
			t.Fatal(err)
		}
		list := "id_number_or_card_number,amount_fen,reference\n" +
			"110105194912310029,3000,A1\n" +
			"8800000002,2000,A2\n" +
			"8800000002,2000,A2\n" + // same line twice: paid once
			"999999999999999999,100,A3\n" + // unknown person
			"110105194912310037,100,A4\n" + // cancelled card
			"8800000002,-5,A5\n" + // bad amount
			"8800000002,abc,A6\n" + // bad amount
			"only,two\n" + // malformed
			"8800000002,6000,A7\n" // exhausts the programme (10000 - 5000 < 6000)
		rep, err := s.Upload(ctx, "farm2024", strings.NewReader(list))
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"paid", "paid", "already_paid", "refused:unknown_person", "refused:cancelled_card", "refused:bad_amount",
			"refused:bad_amount", "refused:malformed_line", "refused:programme_exhausted"}
		check := func(rep Report, want []string) {
			t.Helper()
			if len(rep.Lines) != len(want) {
				t.Fatalf("%d lines: %+v", len(rep.Lines), rep.Lines)
			}
			for i, lr := range rep.Lines {
				got := lr.Status
				if lr.Reason != "" {
					got += ":" + lr.Reason
				}
				if got != want[i] {
					t.Errorf("line %d (%+v): got %s, want %s", lr.Line, lr, got, want[i])
				}
				if strings.Contains(lr.Person, "1949123100") {
					t.Errorf("unmasked ID number in report: %s", lr.Person)
				}
			}
		}
		check(rep, want)
		if rep.Paid != 2 || rep.PaidFen != 5000 || rep.AlreadyPaid != 1 || rep.Refused != 6 || rep.Lines[1].Line != 3 {
			t.Fatalf("%+v", rep)
		}
		// Upload again, after more funding and with a conflicting line: nothing is paid twice.
		if _, err := s.Fund(ctx, "farm2024", "fund-2", 6000); err != nil {
			t.Fatal(err)
		}
		list2 := "110105194912310029,3000,A1\n8800000002,2000,A2\n8800000002,6000,A7\n110105194912310029,3001,A2\n"
		rep, err = s.Upload(ctx, "farm2024", strings.NewReader(list2))
		if err != nil {
			t.Fatal(err)
		}
		check(rep, []string{"already_paid", "already_paid", "paid", "refused:duplicate_in_list"})
		rep, err = s.Upload(ctx, "farm2024", strings.NewReader("110105194912310029,3001,A2\n"))
		if err != nil {
			t.Fatal(err)
		}
		check(rep, []string{"refused:reference_conflict"})
		for id, want := range map[string]int64{"w:R1": 3000, "w:R2": 8000, "sp:farm2024": 5000} {
			a, _ := l.Balance(ctx, id)
			if a.Balance != want {
				t.Errorf("%s = %d, want %d", id, a.Balance, want)
			}
		}
		if r, err := l.Check(ctx); err != nil || !r.OK() {
			t.Fatalf("%+v %v", r, err)
		}
		if _, err := s.Upload(ctx, "nope", strings.NewReader("")); apperr.CodeOf(err) != apperr.UnknownAccount {
			t.Fatal(err)
		}
		if _, err := s.CreateProgramme(ctx, "a:b", ""); apperr.CodeOf(err) != apperr.ValidationFailed {
			t.Fatal(err)
		}
	})
}

func TestMask(t *testing.T) {
	for in, want := range map[string]string{"110105194912310029": "110***********0029", "123": "***", "88000000": "880*0000"} {
		if got := Mask(in); got != want {
			t.Errorf("%s: %s", in, fmt.Sprint(got))
		}
	}
}

func TestSkipBOM(t *testing.T) {
	for in, want := range map[string]string{"\ufeffa,1,r\n": "a,1,r\n", "a,1,r\n": "a,1,r\n", "\ufeff": "", "": "", "\xef\xbb": "\xef\xbb", "x\ufeff": "x\ufeff"} {
		b, err := io.ReadAll(SkipBOM(strings.NewReader(in)))
		if err != nil || string(b) != want {
			t.Errorf("%q: %q %v", in, b, err)
		}
	}
}

func TestProgrammeIDs(t *testing.T) {
	for _, id := range []string{"heating-2026", "farm_2026.q1", "2026", "a", strings.Repeat("a", 64)} {
		if err := checkNewProgramme(id); err != nil {
			t.Errorf("%q: %v", id, err)
		}
	}
	for _, id := range []string{"", ".", "..", "../x", "a/b", "a?b#c", "%2e%2e", "Heating", "-x", "_x", ".x", "a b", "a:b", "补贴", strings.Repeat("a", 65)} {
		if e := apperr.As(checkNewProgramme(id)); e.Code != apperr.ValidationFailed || e.Field != "id" {
			t.Errorf("%q: %v", id, e)
		}
	}
	// Programmes made before ids were restricted are still usable.
	for _, id := range []string{"a/b", "Old-Programme", ".."} {
		if err := checkProgramme(id); err != nil {
			t.Errorf("existing %q: %v", id, err)
		}
	}
}
