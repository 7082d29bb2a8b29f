package resident

import (
	"bytes"
	"context"
	"fmt"
	"github.com/yikatong/yikatong/internal/trust"
	"math/rand/v2"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/idnum"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/vault"
)

func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

// clock is a test clock that moves one second per reading.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Second)
	return c.t
}

type env struct {
	svc   *Service
	db    *store.DB
	clock *clock
	rng   *rand.Rand
}

func newEnv(t *testing.T, dsn string) *env {
	t.Helper()
	ctx := context.Background()
	db, err := store.Open(ctx, dsn, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	v, err := vault.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{t: time.Date(2024, 6, 1, 8, 0, 0, 0, time.UTC)}
	svc := New(db, v, c.now)
	svc.pinIter = 500 // fast in tests; the default cost is measured by BenchmarkPINHash
	return &env{svc: svc, db: db, clock: c, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))}
}

func (e *env) citizen(birth time.Time, sex string) string {
	return idnum.Generate(e.rng, idnum.KindCitizen, "410102", birth, sex)
}

// enrolWithCard enrols a fresh local resident and issues a card with pin.
func (e *env) enrolWithCard(t *testing.T, pin string) (Resident, Card) {
	t.Helper()
	ctx := context.Background()
	birth := time.Date(1930+e.rng.IntN(90), time.Month(1+e.rng.IntN(12)), 1+e.rng.IntN(28), 0, 0, 0, 0, time.UTC)
	r, err := e.svc.Enrol(ctx, EnrolInput{Name: "王五", IDNumber: e.citizen(birth, "M"), Category: CategoryLocal})
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.svc.IssueCard(ctx, r.ID, pin)
	if err != nil {
		t.Fatal(err)
	}
	return r, c
}

// unknownCard is a well-formed card number that is (with probability
// 1 - 1/9e14) never issued in a test.
var unknownCard = "100000000000000" + string(luhn("100000000000000"))

func wantCode(t *testing.T, err error, code apperr.Code) {
	t.Helper()
	if got := apperr.CodeOf(err); got != code {
		t.Fatalf("error code %q (%v), want %q", got, err, code)
	}
}

func TestEnrolGetFindSearch(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		e := newEnv(t, dsn)
		ctx := context.Background()
		r, err := e.svc.Enrol(ctx, EnrolInput{Name: "  张三 ", IDNumber: "11010519491231002x", Category: CategoryLocal})
		if err != nil {
			t.Fatal(err)
		}
		if r.Name != "张三" || r.IDMasked != "1101**********002X" || r.IDKind != idnum.KindCitizen || r.Sex != "F" ||
			r.Region != "110105" || !r.BirthDate.Equal(time.Date(1949, 12, 31, 0, 0, 0, 0, time.UTC)) || !strings.HasPrefix(r.ID, "res_") {
			t.Fatalf("enrolled %+v", r)
		}
		got, err := e.svc.Get(ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("Get = %+v\nwant %+v", got, r)
		}
		if got.Age(time.Date(2024, 12, 31, 12, 0, 0, 0, time.UTC)) != 75 || got.Age(time.Date(2024, 12, 30, 12, 0, 0, 0, time.UTC)) != 74 {
			t.Fatal("Age")
		}
		if got.MaskedName() != "张*" {
			t.Fatalf("MaskedName %q", got.MaskedName())
		}
		f, err := e.svc.FindByIDNumber(ctx, " 11010519491231002X")
		if err != nil || f.ID != r.ID {
			t.Fatalf("FindByIDNumber: %+v %v", f, err)
		}
		full, err := e.svc.RevealIDNumber(ctx, r.ID)
		if err != nil || full != "11010519491231002X" {
			t.Fatalf("RevealIDNumber = %q, %v", full, err)
		}
		_, err = e.svc.Get(ctx, "res_nope")
		wantCode(t, err, apperr.NotFound)
		_, err = e.svc.RevealIDNumber(ctx, "res_nope")
		wantCode(t, err, apperr.NotFound)
		_, err = e.svc.FindByIDNumber(ctx, e.citizen(time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC), "M"))
		wantCode(t, err, apperr.NotFound)
		_, err = e.svc.FindByIDNumber(ctx, "110105194912310021")
		wantCode(t, err, apperr.BadCheckDigit)

		// Permanent residents, both card generations.
		pr, err := e.svc.Enrol(ctx, EnrolInput{Name: "John Smith", IDNumber: "911398199012310021", Category: CategoryPermanentResident})
		if err != nil {
			t.Fatal(err)
		}
		if pr.Nationality != "KAZ" || pr.IDKind != idnum.KindPermanentResident || pr.MaskedName() != "J*** *****" {
			t.Fatalf("permanent resident %+v", pr)
		}
		if _, err := e.svc.Enrol(ctx, EnrolInput{Name: "Anna Müller", IDNumber: "kaz110090123105", Category: CategoryPermanentResident}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.Enrol(ctx, EnrolInput{Name: "李四", IDNumber: e.citizen(time.Date(1995, 5, 5, 0, 0, 0, 0, time.UTC), "M"), Category: CategoryInsuredNonlocal}); err != nil {
			t.Fatal(err)
		}

		// Search by ID number and by card number (with spaces).
		c, err := e.svc.IssueCard(ctx, r.ID, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{"11010519491231002X", c.Number, c.Number[:4] + " " + c.Number[4:8] + " " + c.Number[8:]} {
			res, err := e.svc.Search(ctx, q, 10)
			if err != nil || len(res) != 1 || res[0].ID != r.ID {
				t.Fatalf("Search(%q) = %+v, %v", q, res, err)
			}
		}
		res, err := e.svc.Search(ctx, e.citizen(time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC), "F"), 10)
		if err != nil || len(res) != 0 {
			t.Fatalf("Search(unknown) = %+v, %v", res, err)
		}
		bad := c.Number[:15] + string('0'+(c.Number[15]-'0'+1)%10)
		_, err = e.svc.Search(ctx, bad, 10)
		wantCode(t, err, apperr.ValidationFailed)
		_, err = e.svc.Search(ctx, "hello", 10)
		wantCode(t, err, apperr.BadLength)
	})
}

func TestEnrolRefusals(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		e := newEnv(t, dsn)
		ctx := context.Background()
		id := e.citizen(time.Date(1988, 8, 8, 0, 0, 0, 0, time.UTC), "F")
		if _, err := e.svc.Enrol(ctx, EnrolInput{Name: "赵六", IDNumber: id, Category: CategoryLocal}); err != nil {
			t.Fatal(err)
		}
		cases := []struct {
			name  string
			in    EnrolInput
			code  apperr.Code
			field string
		}{
			{"duplicate", EnrolInput{Name: "赵六", IDNumber: id, Category: CategoryInsuredNonlocal}, apperr.AlreadyExists, ""},
			{"duplicate lower-case spaced", EnrolInput{Name: "x", IDNumber: " " + strings.ToLower(id) + " ", Category: CategoryLocal}, apperr.AlreadyExists, ""},
			{"citizen as permanent resident", EnrolInput{Name: "x", IDNumber: e.citizen(time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC), "M"), Category: CategoryPermanentResident}, apperr.ValidationFailed, "category"},
			{"five-star card as local", EnrolInput{Name: "x", IDNumber: "911398199012310021", Category: CategoryLocal}, apperr.ValidationFailed, "category"},
			{"2017 card as insured non-local", EnrolInput{Name: "x", IDNumber: "KAZ110090123105", Category: CategoryInsuredNonlocal}, apperr.ValidationFailed, "category"},
			{"unknown category", EnrolInput{Name: "x", IDNumber: e.citizen(time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC), "M"), Category: "tourist"}, apperr.ValidationFailed, "category"},
			{"empty name", EnrolInput{Name: "  ", IDNumber: e.citizen(time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC), "M"), Category: CategoryLocal}, apperr.ValidationFailed, "name"},
			{"control in name", EnrolInput{Name: "a\x00b", IDNumber: e.citizen(time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC), "M"), Category: CategoryLocal}, apperr.ValidationFailed, "name"},
			{"long name", EnrolInput{Name: strings.Repeat("长", 65), IDNumber: e.citizen(time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC), "M"), Category: CategoryLocal}, apperr.ValidationFailed, "name"},
			{"bad check digit", EnrolInput{Name: "x", IDNumber: "110105194912310021", Category: CategoryLocal}, apperr.BadCheckDigit, "id_number"},
			{"future birth", EnrolInput{Name: "x", IDNumber: e.citizen(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), "M"), Category: CategoryLocal}, apperr.BadBirthDate, "id_number"},
		}
		for _, c := range cases {
			_, err := e.svc.Enrol(ctx, c.in)
			if apperr.CodeOf(err) != c.code || apperr.As(err).Field != c.field {
				t.Errorf("%s: %v (field %q), want %s field %q", c.name, err, apperr.As(err).Field, c.code, c.field)
				continue
			}
			en, zh := apperr.As(err).Text()
			if n := idnum.Normalize(c.in.IDNumber); strings.Contains(err.Error()+en+zh, n) {
				t.Errorf("%s: error text carries the ID number: %v", c.name, err)
			}
		}
		var count int
		e.db.R.QueryRow(`SELECT COUNT(*) FROM residents`).Scan(&count)
		if count != 1 {
			t.Fatalf("%d residents after refusals", count)
		}
	})
}

func TestSealedColumnsHoldNoPlaintext(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		e := newEnv(t, dsn)
		ctx := context.Background()
		const name = "欧阳娜娜"
		id := idnum.Generate(e.rng, idnum.KindCitizen, "330106", time.Date(1977, 7, 17, 0, 0, 0, 0, time.UTC), "F")
		r, err := e.svc.Enrol(ctx, EnrolInput{Name: name, IDNumber: id, Category: CategoryLocal})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.IssueCard(ctx, r.ID, "208461"); err != nil {
			t.Fatal(err)
		}
		// Every byte of every column of the three tables.
		var raw []byte
		for _, table := range []string{"residents", "cards", "card_events"} {
			rows, err := e.db.R.Query(`SELECT * FROM ` + table)
			if err != nil {
				t.Fatal(err)
			}
			cols, _ := rows.Columns()
			for rows.Next() {
				vals := make([]any, len(cols))
				ptrs := make([]any, len(cols))
				for i := range vals {
					ptrs[i] = &vals[i]
				}
				if err := rows.Scan(ptrs...); err != nil {
					t.Fatal(err)
				}
				for _, v := range vals {
					switch v := v.(type) {
					case []byte:
						raw = append(raw, v...)
					default:
						raw = append(raw, fmt.Sprint(v)...)
					}
					raw = append(raw, '|')
				}
			}
			rows.Close()
		}
		for _, secret := range []string{id, id[:17], name, "娜娜", "19770717", "1977-07-17", "330106", "208461"} {
			if bytes.Contains(raw, []byte(secret)) {
				t.Errorf("stored rows contain %q", secret)
			}
		}
		if !bytes.Contains(raw, []byte(idnum.Mask(id))) {
			t.Error("masked ID number not stored")
		}

		// The sealed blob is bound to its row: copied to another resident it does not open.
		other, err := e.svc.Enrol(ctx, EnrolInput{Name: "李四", IDNumber: e.citizen(time.Date(1990, 2, 2, 0, 0, 0, 0, time.UTC), "M"), Category: CategoryLocal})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.db.W.Exec(`UPDATE residents SET pii = (SELECT pii FROM residents WHERE id = $1) WHERE id = $2`, r.ID, other.ID); err != nil {
			t.Fatal(err)
		}
		_, err = e.svc.Get(ctx, other.ID)
		wantCode(t, err, apperr.Internal)
		if strings.Contains(err.Error(), id) || strings.Contains(err.Error(), name) {
			t.Fatalf("error leaks personal data: %v", err)
		}
	})
}

// cardIn returns a fresh card in the given status.
func (e *env) cardIn(t *testing.T, status string) Card {
	t.Helper()
	ctx := context.Background()
	_, c := e.enrolWithCard(t, "")
	var err error
	switch status {
	case StatusLost:
		c, err = e.svc.ReportLost(ctx, c.Number, "staff:setup")
	case StatusReplaced:
		_, err = e.svc.Replace(ctx, c.Number, "staff:setup")
		if err == nil {
			c, err = e.svc.Card(ctx, c.Number)
		}
	case StatusCancelled:
		c, err = e.svc.Cancel(ctx, c.Number, "staff:setup")
	}
	if err != nil {
		t.Fatal(err)
	}
	if c.Status != status {
		t.Fatalf("setup: card is %s, want %s", c.Status, status)
	}
	return c
}

func TestLifecycleTransitions(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		e := newEnv(t, dsn)
		ctx := context.Background()
		ops := []struct {
			name string
			to   string
			do   func(ctx context.Context, number, actor string) (Card, error)
		}{
			{"ReportLost", StatusLost, e.svc.ReportLost},
			{"Recover", StatusActive, e.svc.Recover},
			{"Replace", StatusReplaced, e.svc.Replace},
			{"Cancel", StatusCancelled, e.svc.Cancel},
		}
		legal := map[string]bool{
			"active→lost": true, "lost→active": true,
			"active→replaced": true, "lost→replaced": true,
			"active→cancelled": true, "lost→cancelled": true,
		}
		for _, from := range []string{StatusActive, StatusLost, StatusReplaced, StatusCancelled} {
			for _, op := range ops {
				c := e.cardIn(t, from)
				before, _ := e.svc.CardEvents(ctx, c.Number)
				got, err := op.do(ctx, c.Number, "staff:alice")
				key := from + "→" + op.to
				after, _ := e.svc.CardEvents(ctx, c.Number)
				now, _ := e.svc.Card(ctx, c.Number)
				if !legal[key] {
					wantCode(t, err, apperr.BadTransition)
					if now.Status != from || len(after) != len(before) {
						t.Fatalf("%s: illegal move changed the card: %s, %d→%d events", key, now.Status, len(before), len(after))
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s: %v", key, err)
				}
				// The time moves when the card starts or stops working; from
				// lost to replaced or cancelled it stays the time of the loss.
				timeOK := now.StatusChangedAt.After(c.StatusChangedAt)
				if from != StatusActive && op.to != StatusActive {
					timeOK = now.StatusChangedAt.Equal(c.StatusChangedAt)
				}
				if now.Status != op.to || !timeOK {
					t.Fatalf("%s: card now %+v", key, now)
				}
				if op.to == StatusReplaced {
					if got.Number == c.Number || got.Status != StatusActive || now.ReplacedBy != got.Number {
						t.Fatalf("%s: new card %+v, old %+v", key, got, now)
					}
				} else if got.Status != op.to {
					t.Fatalf("%s: returned %+v", key, got)
				}
				last := after[len(after)-1]
				if len(after) != len(before)+1 || last.Event != EventStatus || last.From != from || last.To != op.to || last.Actor != "staff:alice" {
					t.Fatalf("%s: events %+v", key, after)
				}
			}
		}
		// Unknown and malformed numbers.
		_, err := e.svc.ReportLost(ctx, unknownCard, "x")
		wantCode(t, err, apperr.NotFound)
		_, err = e.svc.ReportLost(ctx, "1234", "x")
		wantCode(t, err, apperr.ValidationFailed)
	})
}

func TestReplaceGivesNewCardAndKillsOld(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		e := newEnv(t, dsn)
		ctx := context.Background()
		r, old := e.enrolWithCard(t, "246810")
		since := e.clock.now()
		lost, err := e.svc.ReportLost(ctx, old.Number, "resident")
		if err != nil {
			t.Fatal(err)
		}
		e.clock.now() // time passes between the report and the new card
		nc, err := e.svc.Replace(ctx, old.Number, "staff:bob")
		if err != nil {
			t.Fatal(err)
		}
		if nc.Number == old.Number || nc.Token == old.Token || nc.Token == "" || !ValidCardNumber(nc.Number) || nc.ResidentID != r.ID || !nc.PINSet {
			t.Fatalf("new card %+v (old %+v)", nc, old)
		}
		dead, _ := e.svc.Card(ctx, old.Number)
		if dead.Status != StatusReplaced || dead.ReplacedBy != nc.Number {
			t.Fatalf("old card %+v", dead)
		}
		// It stopped working when it was reported lost, not when it was
		// replaced: offline scans and deny lists count it revoked from then.
		if !dead.StatusChangedAt.Equal(lost.StatusChangedAt) {
			t.Fatalf("revoked at %v after the replacement, reported lost at %v", dead.StatusChangedAt, lost.StatusChangedAt)
		}
		byTok, err := e.svc.CardByToken(ctx, old.Token)
		if err != nil || byTok.Number != old.Number || byTok.Status != StatusReplaced {
			t.Fatalf("CardByToken(old) = %+v, %v", byTok, err)
		}
		byTok, err = e.svc.CardByToken(ctx, nc.Token)
		if err != nil || byTok.Number != nc.Number {
			t.Fatalf("CardByToken(new) = %+v, %v", byTok, err)
		}
		_, err = e.svc.CardByToken(ctx, "nope")
		wantCode(t, err, apperr.NotFound)
		// The old card is dead for ever.
		for _, op := range []func(context.Context, string, string) (Card, error){e.svc.Recover, e.svc.ReportLost, e.svc.Replace, e.svc.Cancel} {
			_, err := op(ctx, old.Number, "x")
			wantCode(t, err, apperr.BadTransition)
		}
		_, err = e.svc.VerifyPIN(ctx, old.Number, "246810")
		wantCode(t, err, apperr.CardNotActive)
		// The PIN carried over.
		if _, err := e.svc.VerifyPIN(ctx, nc.Number, "246810"); err != nil {
			t.Fatal(err)
		}
		cards, err := e.svc.CardsOf(ctx, r.ID)
		if err != nil || len(cards) != 2 || cards[0].Number != old.Number || cards[1].Number != nc.Number {
			t.Fatalf("CardsOf = %+v, %v", cards, err)
		}
		revs, err := e.svc.Revocations(ctx, since)
		if err != nil || len(revs) != 1 || revs[0].Token != old.Token || revs[0].Status != StatusReplaced || revs[0].CardNumberHash != CardNumberHash(old.Number) ||
			!revs[0].At.Equal(lost.StatusChangedAt.UTC()) {
			t.Fatalf("Revocations = %+v, %v (lost at %v)", revs, err, lost.StatusChangedAt)
		}
		// Lost, then cancelled: also revoked from the report.
		_, other := e.enrolWithCard(t, "135790")
		lost2, _ := e.svc.ReportLost(ctx, other.Number, "resident")
		e.clock.now()
		if c, err := e.svc.Cancel(ctx, other.Number, "staff:bob"); err != nil || !c.StatusChangedAt.Equal(lost2.StatusChangedAt) {
			t.Fatalf("cancelled after a loss: %+v %v (lost at %v)", c, err, lost2.StatusChangedAt)
		}
		ev, _ := e.svc.CardEvents(ctx, nc.Number)
		if len(ev) != 1 || ev[0].Event != EventIssued || ev[0].To != StatusActive || ev[0].Actor != "staff:bob" {
			t.Fatalf("new card events %+v", ev)
		}
		// Both cards name their holder, whatever their status, and so does
		// a second service over the same database (another process).
		for _, svc := range []*Service{e.svc, New(e.svc.db, e.svc.v, nil)} {
			for _, n := range []string{old.Number, nc.Number, nc.Number} {
				if id, err := svc.HolderOf(ctx, n); err != nil || id != r.ID {
					t.Fatalf("HolderOf(%s) = %q, %v; want %q", n, id, err, r.ID)
				}
			}
		}
		_, err = e.svc.HolderOf(ctx, "1234")
		wantCode(t, err, apperr.ValidationFailed)
		// A valid number that is neither card: nc's with its 15th digit changed.
		var unknown string
		for d := '0'; d <= '9'; d++ {
			u := nc.Number[:14] + string(d)
			if u += string(luhn(u)); u != nc.Number && u != old.Number {
				unknown = u
				break
			}
		}
		_, err = e.svc.HolderOf(ctx, unknown)
		wantCode(t, err, apperr.NotFound)
	})
}

func TestOneLiveCardPerResident(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		e := newEnv(t, dsn)
		ctx := context.Background()
		r, c := e.enrolWithCard(t, "")
		_, err := e.svc.IssueCard(ctx, r.ID, "")
		wantCode(t, err, apperr.AlreadyExists)
		if _, err := e.svc.ReportLost(ctx, c.Number, "x"); err != nil {
			t.Fatal(err)
		}
		_, err = e.svc.IssueCard(ctx, r.ID, "")
		wantCode(t, err, apperr.AlreadyExists)
		if _, err := e.svc.Cancel(ctx, c.Number, "x"); err != nil {
			t.Fatal(err)
		}
		c2, err := e.svc.IssueCard(ctx, r.ID, "")
		if err != nil {
			t.Fatal(err)
		}
		// A cancelled card cannot come back while another is live.
		_, err = e.svc.Recover(ctx, c.Number, "x")
		wantCode(t, err, apperr.BadTransition)
		_, err = e.svc.IssueCard(ctx, "res_nope", "")
		wantCode(t, err, apperr.NotFound)
		_, err = e.svc.IssueCard(ctx, r.ID, "111111")
		wantCode(t, err, apperr.ValidationFailed)

		// Concurrent issues for one resident: exactly one wins.
		if _, err := e.svc.Cancel(ctx, c2.Number, "x"); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Add(1)
			go func() { defer wg.Done(); _, errs[i] = e.svc.IssueCard(ctx, r.ID, "") }()
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			if err == nil {
				ok++
			} else if apperr.CodeOf(err) != apperr.AlreadyExists {
				t.Fatalf("concurrent issue: %v", err)
			}
		}
		cards, _ := e.svc.CardsOf(ctx, r.ID)
		live := 0
		for _, c := range cards {
			if c.Live() {
				live++
			}
		}
		if ok != 1 || live != 1 {
			t.Fatalf("%d issues succeeded, %d live cards", ok, live)
		}
	})
}

func TestPINLockOut(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		e := newEnv(t, dsn)
		ctx := context.Background()
		_, c := e.enrolWithCard(t, "135790")
		for i := 1; i <= 5; i++ {
			_, err := e.svc.VerifyPIN(ctx, c.Number, "000001")
			wantCode(t, err, apperr.BadPIN)
			want := fmt.Sprintf("%d tries left", 6-i)
			if i == 5 {
				want = "1 try left"
			}
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("try %d: %v", i, err)
			}
		}
		// A right PIN resets the count.
		got, err := e.svc.VerifyPIN(ctx, c.Number, "135790")
		if err != nil || got.PINFails != 0 || got.Locked {
			t.Fatalf("right PIN: %+v %v", got, err)
		}
		for i := 1; i <= 5; i++ {
			_, err := e.svc.VerifyPIN(ctx, c.Number, "000001")
			wantCode(t, err, apperr.BadPIN)
		}
		_, err = e.svc.VerifyPIN(ctx, c.Number, "000001")
		wantCode(t, err, apperr.CardLocked)
		// Locked: even the right PIN is refused.
		_, err = e.svc.VerifyPIN(ctx, c.Number, "135790")
		wantCode(t, err, apperr.CardLocked)
		now, _ := e.svc.Card(ctx, c.Number)
		if !now.Locked || now.PINFails != 6 {
			t.Fatalf("locked card %+v", now)
		}
		// Changing the PIN needs the old one: refused too.
		wantCode(t, e.svc.ChangePIN(ctx, c.Number, "135790", "864209"), apperr.CardLocked)
		if err := e.svc.UnlockPIN(ctx, c.Number, "staff:carol"); err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.VerifyPIN(ctx, c.Number, "135790"); err != nil {
			t.Fatalf("after unlock: %v", err)
		}
		ev, _ := e.svc.CardEvents(ctx, c.Number)
		var kinds []string
		for _, x := range ev {
			kinds = append(kinds, x.Event+"/"+x.Actor)
		}
		if strings.Join(kinds, ",") != "issued/staff,pin_locked/system,pin_unlocked/staff:carol" {
			t.Fatalf("events %v", kinds)
		}
	})
}

func TestPINConcurrentWrongTriesCannotEscapeLimit(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		e := newEnv(t, dsn)
		e.svc.pinIter = 20000 // slow enough that the tries overlap
		ctx := context.Background()
		_, c := e.enrolWithCard(t, "135790")
		const tries = 24
		var wg sync.WaitGroup
		errs := make([]error, tries)
		start := make(chan struct{})
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, errs[i] = e.svc.VerifyPIN(ctx, c.Number, fmt.Sprintf("%06d", 100000+i))
			}()
		}
		close(start)
		wg.Wait()
		bad, locked, sixth := 0, 0, 0
		for _, err := range errs {
			switch apperr.CodeOf(err) {
			case apperr.BadPIN:
				bad++
			case apperr.CardLocked:
				locked++
				if strings.Contains(err.Error(), "6th time") {
					sixth++
				}
			default:
				t.Fatalf("unexpected: %v", err)
			}
		}
		// Exactly six guesses were checked: five bad_pin, one that locked.
		if bad != 5 || sixth != 1 || bad+locked != tries {
			t.Fatalf("bad_pin %d, card_locked %d (locking %d)", bad, locked, sixth)
		}
		_, err := e.svc.VerifyPIN(ctx, c.Number, "135790")
		wantCode(t, err, apperr.CardLocked)
	})
}

func TestPINSetChangeAndRefusals(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		e := newEnv(t, dsn)
		ctx := context.Background()
		_, c := e.enrolWithCard(t, "")
		if c.PINSet {
			t.Fatal("PINSet on a card issued without PIN")
		}
		_, err := e.svc.VerifyPIN(ctx, c.Number, "135790")
		wantCode(t, err, apperr.PINNotSet)
		wantCode(t, e.svc.ChangePIN(ctx, c.Number, "135790", "246813"), apperr.PINNotSet)
		for _, weak := range []string{"000000", "999999", "123456", "654321", "012345", "345678", "12345", "1234567", "12a456", "", "１２３４５６"} {
			wantCode(t, e.svc.SetPIN(ctx, c.Number, weak, "staff"), apperr.ValidationFailed)
		}
		if err := e.svc.SetPIN(ctx, c.Number, "135790", "staff:dan"); err != nil {
			t.Fatal(err)
		}
		got, err := e.svc.VerifyPIN(ctx, c.Number, "135790")
		if err != nil || !got.PINSet {
			t.Fatalf("VerifyPIN: %+v %v", got, err)
		}
		_, err = e.svc.VerifyPIN(ctx, c.Number, "12345")
		wantCode(t, err, apperr.ValidationFailed)
		if got, _ := e.svc.Card(ctx, c.Number); got.PINFails != 0 {
			t.Fatal("a malformed PIN was counted")
		}
		// Wrong old PIN counts.
		err = e.svc.ChangePIN(ctx, c.Number, "135791", "246813")
		wantCode(t, err, apperr.BadPIN)
		// The card is the resident's own: the message names the PIN only.
		if en, zh := apperr.As(err).Text(); !strings.Contains(en, "current PIN is wrong") || !strings.Contains(zh, "原密码错误") {
			t.Fatalf("wrong current PIN said as %q / %q", en, zh)
		}
		if got, _ := e.svc.Card(ctx, c.Number); got.PINFails != 1 {
			t.Fatalf("fails %d after wrong old PIN", got.PINFails)
		}
		wantCode(t, e.svc.ChangePIN(ctx, c.Number, "135790", "111111"), apperr.ValidationFailed)
		if err := e.svc.ChangePIN(ctx, c.Number, "135790", "246813"); err != nil {
			t.Fatal(err)
		}
		_, err = e.svc.VerifyPIN(ctx, c.Number, "135790")
		wantCode(t, err, apperr.BadPIN)
		if _, err := e.svc.VerifyPIN(ctx, c.Number, "246813"); err != nil {
			t.Fatal(err)
		}
		// Staff SetPIN also clears a lock.
		for i := 0; i < 6; i++ {
			e.svc.VerifyPIN(ctx, c.Number, "000001")
		}
		if got, _ := e.svc.Card(ctx, c.Number); !got.Locked {
			t.Fatal("not locked")
		}
		if err := e.svc.SetPIN(ctx, c.Number, "975318", "staff:dan"); err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.VerifyPIN(ctx, c.Number, "975318"); err != nil {
			t.Fatal(err)
		}
		// Not active, unknown, malformed.
		if _, err := e.svc.ReportLost(ctx, c.Number, "resident"); err != nil {
			t.Fatal(err)
		}
		_, err = e.svc.VerifyPIN(ctx, c.Number, "975318")
		wantCode(t, err, apperr.CardNotActive)
		wantCode(t, e.svc.SetPIN(ctx, c.Number, "975318", "staff"), apperr.CardNotActive)
		wantCode(t, e.svc.UnlockPIN(ctx, c.Number, "staff"), apperr.CardNotActive)
		_, err = e.svc.VerifyPIN(ctx, unknownCard, "975318")
		wantCode(t, err, apperr.BadPIN)
		wantCode(t, e.svc.UnlockPIN(ctx, unknownCard, "staff"), apperr.NotFound)
		_, err = e.svc.VerifyPIN(ctx, unknownCard[:15]+string(unknownCard[15]^1), "975318")
		wantCode(t, err, apperr.ValidationFailed)
	})
}

func TestPINRehashOnRaisedIterations(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		e := newEnv(t, dsn)
		ctx := context.Background()
		_, c := e.enrolWithCard(t, "135790")
		stored := func() string {
			var h string
			e.db.R.QueryRow(`SELECT pin_hash FROM cards WHERE number = $1`, c.Number).Scan(&h)
			return h
		}
		if !strings.HasPrefix(stored(), "pbkdf2-sm3$500$") {
			t.Fatalf("stored %q", stored())
		}
		e.svc.pinIter = 800
		if _, err := e.svc.VerifyPIN(ctx, c.Number, "135790"); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(stored(), "pbkdf2-sm3$800$") {
			t.Fatalf("not re-hashed: %q", stored())
		}
		if _, err := e.svc.VerifyPIN(ctx, c.Number, "135790"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestRevocations(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		e := newEnv(t, dsn)
		ctx := context.Background()
		_, a := e.enrolWithCard(t, "")
		_, b := e.enrolWithCard(t, "")
		_, c := e.enrolWithCard(t, "")
		_, d := e.enrolWithCard(t, "")
		e.svc.ReportLost(ctx, a.Number, "x")
		mid := e.clock.now()
		e.svc.Cancel(ctx, b.Number, "x")
		e.svc.ReportLost(ctx, c.Number, "x")
		e.svc.Recover(ctx, c.Number, "x") // back to active: not revoked
		_ = d
		all, err := e.svc.Revocations(ctx, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != 2 || all[0].Token != a.Token || all[0].Status != StatusLost || all[1].Token != b.Token || all[1].Status != StatusCancelled {
			t.Fatalf("all = %+v", all)
		}
		later, _ := e.svc.Revocations(ctx, mid)
		if len(later) != 1 || later[0].Token != b.Token || !later[0].At.After(mid) {
			t.Fatalf("since mid = %+v", later)
		}
	})
}

func TestEnrolBatch(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		e := newEnv(t, dsn)
		ctx := context.Background()
		const n = 1000
		items := make([]BatchItem, n)
		for i := range items {
			birth := time.Date(1940+i%80, time.Month(1+i%12), 1+i%28, 0, 0, 0, 0, time.UTC)
			items[i] = BatchItem{EnrolInput: EnrolInput{Name: fmt.Sprintf("居民%04d", i), IDNumber: e.citizen(birth, []string{"M", "F"}[i%2]), Category: CategoryLocal}, IssueCard: true}
		}
		items[10].PIN = "135790"
		items[20].IDNumber = items[19].IDNumber // duplicate inside the batch
		items[30].Category = CategoryPermanentResident
		items[40].PIN = "123456"
		start := time.Now()
		res, err := e.svc.EnrolBatch(ctx, items)
		elapsed := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d residents with cards in %v", dsn[:6], n, elapsed)
		if strings.HasPrefix(dsn, "/") && elapsed > 5*time.Second {
			t.Errorf("batch enrolment took %v", elapsed)
		}
		numbers := map[string]bool{}
		for i, r := range res {
			switch i {
			case 20:
				wantCode(t, r.Err, apperr.AlreadyExists)
			case 30, 40:
				wantCode(t, r.Err, apperr.ValidationFailed)
			default:
				if r.Err != nil || r.Card == nil || r.Card.ResidentID != r.Resident.ID || numbers[r.Card.Number] {
					t.Fatalf("item %d: %+v", i, r)
				}
				numbers[r.Card.Number] = true
			}
		}
		var residents, cards int
		e.db.R.QueryRow(`SELECT COUNT(*) FROM residents`).Scan(&residents)
		e.db.R.QueryRow(`SELECT COUNT(*) FROM cards`).Scan(&cards)
		if residents != n-3 || cards != n-3 {
			t.Fatalf("%d residents, %d cards", residents, cards)
		}
		if _, err := e.svc.VerifyPIN(ctx, res[10].Card.Number, "135790"); err != nil {
			t.Fatal(err)
		}
		_, err = e.svc.VerifyPIN(ctx, res[11].Card.Number, "135790")
		wantCode(t, err, apperr.PINNotSet)
		got, err := e.svc.Get(ctx, res[999].Resident.ID)
		if err != nil || got.Name != "居民0999" {
			t.Fatalf("Get: %+v %v", got, err)
		}
		// A PIN without a card is refused.
		res, err = e.svc.EnrolBatch(ctx, []BatchItem{{EnrolInput: EnrolInput{Name: "x", IDNumber: e.citizen(time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC), "M"), Category: CategoryLocal}, PIN: "135790"}})
		if err != nil {
			t.Fatal(err)
		}
		wantCode(t, res[0].Err, apperr.ValidationFailed)
	})
}

func TestCardNumbers(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 2000; i++ {
		n := newCardNumber()
		if !ValidCardNumber(n) || seen[n] {
			t.Fatalf("card number %q", n)
		}
		seen[n] = true
	}
	n := newCardNumber()
	// Every single-digit substitution is caught.
	for i := 0; i < 16; i++ {
		for d := byte('0'); d <= '9'; d++ {
			if d == n[i] {
				continue
			}
			if m := n[:i] + string(d) + n[i+1:]; ValidCardNumber(m) {
				t.Fatalf("substitution at %d accepted: %s", i, m)
			}
		}
	}
	if !ValidCardNumber("4111111111111111") || ValidCardNumber("0000000000000000") || ValidCardNumber("411111111111111") {
		t.Fatal("ValidCardNumber")
	}
	if NormalizeCardNumber(" 4111-1111 1111 1111 ") != "4111111111111111" {
		t.Fatal("NormalizeCardNumber")
	}
	if CardNumberHash(n) != CardNumberHash(n) || CardNumberHash(n) == CardNumberHash(newCardNumber()) || CardNumberHash(n) != trust.CardHash(n) {
		t.Fatal("CardNumberHash")
	}
	if newToken() == newToken() || len(newToken()) != 22 {
		t.Fatal("newToken")
	}
}

func TestValidatePIN(t *testing.T) {
	for _, p := range []string{"135790", "246813", "112233", "908172", "000001", "123457"} {
		if err := ValidatePIN(p); err != nil {
			t.Errorf("%s refused: %v", p, err)
		}
	}
	for _, p := range []string{"000000", "777777", "123456", "234567", "456789", "987654", "543210", "012345", "12345", "1234567", "12 456", "abcdef"} {
		if err := ValidatePIN(p); apperr.CodeOf(err) != apperr.ValidationFailed {
			t.Errorf("%s accepted", p)
		}
	}
}

// BenchmarkPINHash measures one PIN check at the default cost.
func BenchmarkPINHash(b *testing.B) {
	v, _ := vault.New(make([]byte, 32))
	s := &Service{v: v, pepper: v.Pepper(), pinIter: DefaultPINIterations}
	h := s.hashPIN("135790", DefaultPINIterations)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if ok, _, _ := s.checkPIN(h, "135790"); !ok {
			b.Fatal("mismatch")
		}
	}
}
