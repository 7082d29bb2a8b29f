package subsidy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/idnum"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// setup opens a ledger on dsn with residents R1 and R2 (card numbers
// 8800000001 and 8800000002) and programme p funded with fund fen.
func setup(t *testing.T, dsn string, fund int64) (*ledger.Ledger, *Service) {
	t.Helper()
	ctx := context.Background()
	l, err := ledger.Open(ctx, storetest.Open(t, dsn), ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	for _, r := range []string{"R1", "R2"} {
		if _, _, err := l.OpenResidentAccounts(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	s := &Service{L: l, R: fakeResolver{"8800000001": "w:R1", "8800000002": "w:R2"}}
	if _, err := s.CreateProgramme(ctx, "p", ""); err != nil {
		t.Fatal(err)
	}
	if fund > 0 {
		if _, err := s.Fund(ctx, "p", "fund-1", fund); err != nil {
			t.Fatal(err)
		}
	}
	return l, s
}

func statusesOf(rep Report) string {
	var out []string
	for _, lr := range rep.Lines {
		out = append(out, lr.Status+":"+lr.Reason)
	}
	return strings.Join(out, ",")
}

// balances checks account balances and that the books balance.
func balances(t *testing.T, l *ledger.Ledger, want map[string]int64) {
	t.Helper()
	ctx := context.Background()
	for id, w := range want {
		a, err := l.Balance(ctx, id)
		if err != nil || a.Balance != w {
			t.Errorf("%s = %d (%v), want %d", id, a.Balance, err, w)
		}
	}
	if r, err := l.Check(ctx); err != nil || !r.OK() {
		t.Fatalf("ledger check: %+v %v", r, err)
	}
}

// A list whose header names the amount column in yuan (金额（元）,
// amount_yuan: a list made for the console, which speaks yuan) is not
// paid in fen: it was, at a hundredth of what was meant (¥150 paid as
// ¥1.50), and the reference then stood spent, so the right amount could
// not be paid under it. A header naming the amount in another column
// than the second is refused too: its lines were read in the wrong
// columns.
func TestUploadHeaderUnitAndOrder(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		l, s := setup(t, dsn, 100_000)
		for _, list := range []string{
			"证件号码,金额（元）,业务编号\n8800000001,150,Y1\n",
			"\ufeffid,amount_yuan,reference\r\n8800000001,150,Y2\r\n",
			"id,Amount (Yuan),reference\n8800000001,150,Y3\n",
			"amount_fen,id,reference\n150,8800000001,Y4\n",
			"reference,id,金额（分）\nY5,8800000001,150\n",
			"证件号码,金额（元/分）,业务编号\n8800000001,150,Y6\n", // two units
			"证件号码,金额（角）,业务编号\n8800000001,150,Y7\n",   // paid as fen: a tenth
			"id,amount_cents,reference\n8800000001,150,Y8\n",
			"证件号码,金额（万元）,业务编号\n8800000001,150,Y9\n",
		} {
			rep, err := s.Upload(ctx, "p", strings.NewReader(list))
			if e := apperr.As(err); e == nil || e.Code != apperr.ValidationFailed || e.Detail == "" || e.DetailZh == "" {
				t.Errorf("%q: %s %v", list, statusesOf(rep), err)
			}
		}
		// Fen headers are headers as before.
		for i, list := range []string{
			"id_number_or_card_number,amount_fen,reference\n8800000001,150,F1\n",
			"证件号码或卡号,金额（分）,业务编号\n8800000001,150,F2\n",
			"id,amount,reference\n8800000001,150,F3\n",
		} {
			rep, err := s.Upload(ctx, "p", strings.NewReader(list))
			if err != nil || statusesOf(rep) != "paid:" || rep.Lines[0].Line != 2 {
				t.Errorf("%d: %s %v", i, statusesOf(rep), err)
			}
		}
		balances(t, l, map[string]int64{"w:R1": 450, "sp:p": 100_000 - 450})
	})
}

// A first line with a bad amount whose reference happens to hold the
// word "amount" or 金额 is a refused line in the report, not a header
// dropped without a word: every line of a list is accounted for.
func TestUploadFirstLineNotTakenForHeader(t *testing.T) {
	ctx := context.Background()
	l, s := setup(t, storetest.SQLite(t), 10_000)
	rep, err := s.Upload(ctx, "p", strings.NewReader("8800000001,150.00,补贴金额2024\n8800000002,100,Y4\n"))
	if err != nil || statusesOf(rep) != "refused:bad_amount,paid:" || rep.Lines[0].Line != 1 || rep.Refused != 1 {
		t.Fatalf("%s %+v %v", statusesOf(rep), rep, err)
	}
	balances(t, l, map[string]int64{"w:R1": 0, "w:R2": 100})
}

type errResolver struct{ err error }

func (e errResolver) Resolve(ctx context.Context, who string) (string, error) { return "", e.err }

// A resolver failure that is not about the person (a database error, a
// timeout) is reported as unavailable (upload again), not as an unknown
// person: staff told "查无此人" drop the line and the resident is never paid.
func TestUploadResolverFailureIsUnavailable(t *testing.T) {
	ctx := context.Background()
	l, s := setup(t, storetest.SQLite(t), 10_000)
	res := s.R
	for _, err := range []error{errors.New("database is locked"), context.DeadlineExceeded, apperr.New(apperr.Internal)} {
		s.R = errResolver{err}
		rep, uerr := s.Upload(ctx, "p", strings.NewReader("8800000001,100,U1\n"))
		if uerr != nil || statusesOf(rep) != "refused:unavailable" {
			t.Errorf("%v: %s %v", err, statusesOf(rep), uerr)
		}
	}
	s.R = res
	rep, err := s.Upload(ctx, "p", strings.NewReader("8800000001,100,U1\n"))
	if err != nil || statusesOf(rep) != "paid:" {
		t.Fatalf("%s %v", statusesOf(rep), err)
	}
	balances(t, l, map[string]int64{"w:R1": 100})
}

// failingReader gives data, then err (once, or for ever if sticky), then
// io.EOF.
type failingReader struct {
	data   io.Reader
	err    error
	sticky bool
	failed bool
}

func (r *failingReader) Read(p []byte) (int, error) {
	if n, err := r.data.Read(p); n > 0 || err != io.EOF {
		return n, err
	}
	if r.sticky || !r.failed {
		r.failed = true
		return 0, r.err
	}
	return 0, io.EOF
}

// A list that cannot be read to its end (the connection dropped, the body
// is over the limit) is refused whole with the read error: nothing of it
// is paid, and the error says so (it said "at most 100000 lines", or, if
// the reader recovered, paid the lines around the gap and reported a
// complete list).
func TestUploadReadErrorPaysNothing(t *testing.T) {
	ctx := context.Background()
	l, s := setup(t, storetest.SQLite(t), 10_000)
	readErr := errors.New("connection reset by peer")
	for _, sticky := range []bool{true, false} {
		r := &failingReader{data: strings.NewReader("8800000001,100,R1\n8800000002,100,R"), err: readErr, sticky: sticky}
		rep, err := s.Upload(ctx, "p", r)
		if !errors.Is(err, readErr) || len(rep.Lines) != 0 {
			t.Errorf("sticky %v: %s %v", sticky, statusesOf(rep), err)
		}
		if e := apperr.As(err); e == nil || e.Detail == "" || e.DetailZh == "" || strings.Contains(e.Detail, "100000") {
			t.Errorf("sticky %v: %+v", sticky, e)
		}
	}
	balances(t, l, map[string]int64{"w:R1": 0, "w:R2": 0, "sp:p": 10_000})
}

// A reference holding an ID number is refused, and the report shows it
// masked: it would otherwise stay in the ledger's append-only journal (key
// and metadata) for ever and be sent back whole in the report (a list
// with its columns swapped puts every ID number there).
func TestUploadIDNumberInReference(t *testing.T) {
	ctx := context.Background()
	l, s := setup(t, storetest.SQLite(t), 10_000)
	const id = "11010519491231002X"
	list := "reference,amount_fen,id_number\n" +
		"8800000001,100," + id + "\n" +
		"8800000001,100,2024-" + id + "\n" +
		"8800000001,100,2024-11010519491231002x\n" +
		"8800000001,100,2024-110105194912310029\n" // not a valid number (check digit): a reference like any other
	rep, err := s.Upload(ctx, "p", strings.NewReader(list))
	if err != nil || statusesOf(rep) != "refused:id_number_in_reference,refused:id_number_in_reference,refused:id_number_in_reference,paid:" {
		t.Fatalf("%s %v", statusesOf(rep), err)
	}
	b, _ := json.Marshal(rep)
	if strings.Contains(strings.ToUpper(string(b)), id) {
		t.Fatalf("an ID number in the report: %s", b)
	}
	if _, err := l.GetTransferByKey(ctx, lineKey("p", id)); apperr.CodeOf(err) != apperr.NotFound {
		t.Fatalf("an ID number in the journal: %v", err)
	}
	balances(t, l, map[string]int64{"w:R1": 100})
}

// A list uploaded to a closed programme is refused with that reason, not
// reported line by line as paid to cancelled cards.
func TestUploadClosedProgramme(t *testing.T) {
	ctx := context.Background()
	l, s := setup(t, storetest.SQLite(t), 0)
	if err := l.CloseAccount(ctx, "sp:p"); err != nil {
		t.Fatal(err)
	}
	rep, err := s.Upload(ctx, "p", strings.NewReader("8800000001,100,C1\n"))
	if apperr.CodeOf(err) != apperr.AccountClosed {
		t.Fatalf("%s %v", statusesOf(rep), err)
	}
}

// A line paid and then reversed (paid to the wrong person, clawed back) is
// not reported as already paid when the list is uploaded again: the
// resident does not have the money. It is not paid again either: the
// reference is spent.
func TestUploadReversedLine(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		l, s := setup(t, dsn, 10_000)
		list := "8800000001,3000,V1\n8800000002,2000,V2\n"
		rep, err := s.Upload(ctx, "p", strings.NewReader(list))
		if err != nil || statusesOf(rep) != "paid:,paid:" {
			t.Fatalf("%s %v", statusesOf(rep), err)
		}
		if _, err := l.Reverse(ctx, "rev-1", rep.Lines[0].Transfer, 3000); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Reverse(ctx, "rev-2", rep.Lines[1].Transfer, 500); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			rep, err = s.Upload(ctx, "p", strings.NewReader(list))
			if err != nil || statusesOf(rep) != "refused:reversed,refused:reversed" || rep.AlreadyPaid != 0 || rep.Refused != 2 ||
				rep.Lines[0].ReversedFen != 3000 || rep.Lines[1].ReversedFen != 500 || rep.Lines[0].Transfer == "" {
				t.Fatalf("%s %+v %v", statusesOf(rep), rep, err)
			}
		}
		balances(t, l, map[string]int64{"w:R1": 0, "w:R2": 1500, "sp:p": 8500})
	})
}

// A line paid before whose person is now refused by the resolver (card
// cancelled since, resident gone) is reported as already paid, with its
// transfer, when the list is uploaded again: reported refused, staff
// would pay it another way and the resident be paid twice.
func TestUploadPaidLineOfCancelledCard(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		l, s := setup(t, dsn, 10_000)
		rep, err := s.Upload(ctx, "p", strings.NewReader("8800000001,3000,K1\n8800000002,2000,K2\n"))
		if err != nil || statusesOf(rep) != "paid:,paid:" {
			t.Fatalf("%s %v", statusesOf(rep), err)
		}
		first := rep.Lines[0].Transfer
		s.R = fakeResolver{"8800000001": "cancelled"}
		rep, err = s.Upload(ctx, "p", strings.NewReader("8800000001,3000,K1\n8800000001,3001,K2\n8800000001,100,K3\n"))
		if err != nil || statusesOf(rep) != "already_paid:,refused:reference_conflict,refused:cancelled_card" ||
			rep.Lines[0].Transfer != first || rep.AlreadyPaid != 1 || rep.PaidFen != 0 {
			t.Fatalf("%s %+v %v", statusesOf(rep), rep, err)
		}
		balances(t, l, map[string]int64{"w:R1": 3000, "w:R2": 2000, "sp:p": 5000})
	})
}

// Two staff (or two node processes over one database) uploading the same
// list at once pay each line once, and never more than the programme has.
func TestUploadConcurrentProcesses(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		var ls []*ledger.Ledger
		for range 2 {
			l, err := ledger.Open(ctx, storetest.Open(t, dsn), ledger.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(l.Close)
			ls = append(ls, l)
		}
		res := fakeResolver{}
		var list strings.Builder
		list.WriteString("\ufeff证件号码或卡号,金额（分）,业务编号\r\n")
		const people = 200
		for i := range people {
			r := fmt.Sprintf("R%d", i)
			if _, _, err := ls[0].OpenResidentAccounts(ctx, r); err != nil {
				t.Fatal(err)
			}
			res[fmt.Sprintf("88%08d", i)] = "w:" + r
			fmt.Fprintf(&list, "88%08d,100,L%d\r\n", i, i)
		}
		s := &Service{L: ls[0], R: res}
		if _, err := s.CreateProgramme(ctx, "p", ""); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Fund(ctx, "p", "fund-1", 150*100); err != nil { // 150 of the 200 lines
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		reps := make([]Report, 6)
		for i := range reps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := &Service{L: ls[i%2], R: res}
				rep, err := s.Upload(ctx, "p", strings.NewReader(list.String()))
				if err != nil {
					t.Error(err)
				}
				reps[i] = rep
			}()
		}
		wg.Wait()
		var paid int64
		for _, r := range reps {
			paid += r.PaidFen
		}
		var wallets int64
		for i := range people {
			a, _ := ls[1].Balance(ctx, fmt.Sprintf("w:R%d", i))
			if a.Balance != 0 && a.Balance != 100 {
				t.Errorf("R%d has %d", i, a.Balance)
			}
			wallets += a.Balance
		}
		if paid != 15000 || wallets != 15000 {
			t.Fatalf("reported %d, wallets hold %d", paid, wallets)
		}
		balances(t, ls[1], map[string]int64{"sp:p": 0})
	})
}

func TestHasIDNumber(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	birth := time.Date(1980, 5, 17, 0, 0, 0, 0, time.UTC)
	for _, kind := range []string{idnum.KindCitizen, idnum.KindPermanentResident, idnum.KindPermanentResident2017} {
		for range 20 {
			n := idnum.Generate(rng, kind, "410105", birth, "M")
			if n == "" {
				t.Fatalf("%s: no number", kind)
			}
			for _, ref := range []string{n, "2024-" + n, n + "-A", strings.ToLower(n), "x" + n + "y"} {
				if !hasIDNumber(ref) {
					t.Errorf("%s: %q not found", kind, ref)
				}
			}
		}
	}
	for _, ref := range []string{"", "A1", "2024-farm-000123", strings.Repeat("1", 64), "110105194912310029", "20241201000000001X", "ABC12345678901"} {
		if hasIDNumber(ref) {
			t.Errorf("%q taken for an ID number", ref)
		}
	}
}

// The console hands a list on in chunks without its header: a first line
// with a bad amount and a reference naming an amount is a refused line,
// not a header in the wrong order refusing the whole chunk.
func TestUploadChunkStartingWithBadLine(t *testing.T) {
	ctx := context.Background()
	l, s := setup(t, storetest.SQLite(t), 10_000)
	rep, err := s.Upload(ctx, "p", strings.NewReader("8800000001,abc,补贴金额\n8800000002,100,B2\n"))
	if err != nil || statusesOf(rep) != "refused:bad_amount,paid:" {
		t.Fatalf("%s %v", statusesOf(rep), err)
	}
	balances(t, l, map[string]int64{"w:R2": 100})
}

// A list that is not UTF-8 (Excel's "CSV" on a Chinese Windows saves GBK)
// is refused whole, as the console refuses it: its header naming the
// amount in yuan (金额（元）) could not be read, and its lines were paid as
// fen, a hundredth of what was meant.
func TestUploadNotUTF8(t *testing.T) {
	ctx := context.Background()
	l, s := setup(t, storetest.SQLite(t), 100_000)
	gbkHeader := "\xd6\xa4\xbc\xfe\xba\xc5\xc2\xeb,\xbd\xf0\xb6\xee\xa3\xa8\xd4\xaa\xa3\xa9,\xd2\xb5\xce\xf1\xb1\xe0\xba\xc5" // 证件号码,金额（元）,业务编号
	for _, list := range []string{
		gbkHeader + "\r\n8800000001,150,G1\r\n8800000002,200,G2\r\n",
		"8800000001,150,G3\r\n8800000002,200,\xb2\xb9\xcc\xf9\r\n", // a reference in GBK (补贴)
		"\xff\xfe8\x008\x00", // UTF-16
	} {
		rep, err := s.Upload(ctx, "p", strings.NewReader(list))
		if e := apperr.As(err); e == nil || e.Code != apperr.ValidationFailed || !strings.Contains(e.Detail, "UTF-8") || e.DetailZh == "" {
			t.Errorf("%q: %s %v", list, statusesOf(rep), err)
		}
	}
	balances(t, l, map[string]int64{"w:R1": 0, "w:R2": 0, "sp:p": 100_000})
}
