// Package resident keeps a city's residents, their social security cards
// and the cards' PINs.
//
// Residents. A resident enrols in one of three categories: "local" (本市户籍)
// and "insured_nonlocal" (参保的非本市户籍) need a citizen ID number;
// "permanent_resident" (五星卡 holders) needs a foreign permanent residence
// card number (2023 or 2017 card). One resident per ID number. The name, the
// full ID number, the birth date, the region and the nationality are stored
// only sealed by internal/vault (SM4-GCM, the resident id as associated data,
// so a sealed blob moved to another row does not open); the row keeps the
// keyed hash of the ID number (unique index, exact search), the masked
// number, the kind of number, the category and the sex. No error text or log
// line carries a full ID number. A person who later gets a 2023 card after a
// 2017 one has two numbers; the second enrolment is not detected as the same
// person (the numbers share nothing that can be matched safely).
//
// Holder flags. A resident may carry flags from a fixed set (KnownFlags:
// student, teacher, disabled, veteran) that scenarios' eligibility rules and
// concessions ask about. Staff set them at enrolment or later (SetFlags).
// Being personal data (disabled is health data), they live inside the
// sealed blob with the name; a blob sealed before flags existed reads as
// no flags, so no migration was needed. OnChange tells caches of residents
// (the scan path's) to forget one whose flags changed.
//
// Cards. A card number is 16 digits, the first non-zero and the last a Luhn
// check digit (as on bank cards: every single-digit typo and most adjacent
// swaps are caught). A node that knows its city (SetCardIssuer) starts new
// numbers with the first 4 digits of the city's division code, so another
// city's node can tell where a card comes from, as the chip of a real card
// does; the other 11 digits are drawn at random, never sequential. Each
// card has an opaque random token, the subject of its e-codes, unrelated to
// the ID number and new on replacement. Status moves:
//
//	active → lost (挂失) → active (解挂)
//	active | lost → replaced (补换: new number and token; the old card is dead)
//	active | lost → cancelled (注销, final)
//
// Anything else is bad_transition. A resident has at most one live (active or
// lost) card, enforced by a partial unique index. Every status change and PIN
// administration step is recorded in card_events with the actor. On
// replacement the PIN carries over to the new card (the holder keeps the PIN
// they know) and the failure count starts afresh.
//
// PINs. Exactly six digits; all-equal (000000) and straight runs (123456,
// 987654) are refused as trivially guessable. A PIN is stored only as
// PBKDF2-HMAC-SM3 ("pbkdf2-sm3$iterations$salt$hash", per-card random salt,
// the password pre-hashed with the vault's PIN pepper, iterations stored so
// they can be raised: a right PIN with an older count is re-hashed). At the
// default 40 000 iterations one check takes about 25 ms on the reference
// machine. A card may be issued without a PIN (cheap; sign-in then fails with
// pin_not_set until staff set one).
//
// Lock-out. The sixth wrong PIN in a row locks the card until staff unlock it;
// a right PIN resets the count; a locked card refuses even the right PIN.
// Counting is race-free without holding a lock during the slow hash: each
// attempt first reserves a slot with one atomic UPDATE (pin_fails+1, only
// while unlocked and below six), then checks the hash, then either locks the
// card (it held the sixth slot) or resets the count (right PIN, only if still
// unlocked). Concurrent guesses therefore never get more than six checks.
package resident

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/idnum"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/vault"
)

// Categories of residents.
const (
	CategoryLocal             = "local"
	CategoryInsuredNonlocal   = "insured_nonlocal"
	CategoryPermanentResident = "permanent_resident"
)

// lookup-hash kind of ID numbers.
const hashKindID = "id_number"

// Resident is an enrolled person. IDMasked is the only form of the ID number
// it carries; RevealIDNumber returns the full one.
type Resident struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	IDMasked    string    `json:"id_number_masked"`
	IDKind      string    `json:"id_kind"`
	Category    string    `json:"category"`
	Sex         string    `json:"sex"`
	BirthDate   time.Time `json:"birth_date"`
	Region      string    `json:"region"`
	Nationality string    `json:"nationality,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	// Flags are the holder flags (KnownFlags: student, teacher, disabled,
	// veteran), sorted and unique; nil for none. Sealed like the name.
	Flags []string `json:"flags,omitempty"`
	// FlagsSetBy and FlagsSetAt say who last set the flags, and when
	// (empty and zero if never).
	FlagsSetBy string    `json:"flags_set_by,omitempty"`
	FlagsSetAt time.Time `json:"flags_set_at,omitzero"`
}

// Age is the resident's age in completed years at the instant at (China
// Standard Time), for age-based concessions.
func (r Resident) Age(at time.Time) int { return idnum.Age(r.BirthDate, at) }

// MaskedName keeps the first character of the name and masks the others
// ("张三" → "张*", "John Smith" → "J*** *****"), for providers that may only
// see a masked name.
func (r Resident) MaskedName() string { return MaskName(r.Name) }

// IDs returns the residents' ids, in order.
func IDs(list []Resident) []string {
	ids := make([]string, len(list))
	for i, r := range list {
		ids[i] = r.ID
	}
	return ids
}

// MaskName masks all but the first character of a name, keeping spaces.
func MaskName(name string) string {
	rs := []rune(name)
	for i := 1; i < len(rs); i++ {
		if rs[i] != ' ' {
			rs[i] = '*'
		}
	}
	return string(rs)
}

// pii is the sealed part of a resident row.
type pii struct {
	Name        string `json:"n"`
	IDNumber    string `json:"i"`
	BirthDate   string `json:"b"`
	Region      string `json:"r"`
	Nationality string `json:"c,omitempty"`
	// Holder flags (flags.go), who set them and when (Unix ms). A blob
	// sealed before flags existed has none.
	Flags   []string `json:"f,omitempty"`
	FlagsBy string   `json:"fb,omitempty"`
	FlagsAt int64    `json:"fa,omitempty"`
}

// Service is the residents and cards service. It is safe for concurrent use.
type Service struct {
	db      *store.DB
	v       *vault.Vault
	now     func() time.Time
	pepper  []byte
	pinIter int
	prefix  atomic.Value // string: region code new card numbers start with (SetCardIssuer)
	holders holderCache  // card number → resident id (HolderOf)

	watchMu  sync.Mutex
	watchers []func(residentID string) // OnChange
}

// DefaultPINIterations is the PBKDF2 iteration count of new PIN hashes.
const DefaultPINIterations = 40000

// New returns the service over db, sealing personal data with v. now is the
// clock (time.Now if nil).
func New(db *store.DB, v *vault.Vault, now func() time.Time) *Service {
	if now == nil {
		now = time.Now
	}
	return &Service{db: db, v: v, now: now, pepper: v.Pepper(), pinIter: DefaultPINIterations}
}

// EnrolInput is what enrolment needs.
type EnrolInput struct {
	Name     string `json:"name"`
	IDNumber string `json:"id_number"`
	Category string `json:"category"`
	// Flags are holder flags to enrol with (optional; KnownFlags).
	Flags []string `json:"flags,omitempty"`
	// FlagsBy is who sets Flags (the enrolling staff member), sealed with
	// them as SetFlags seals its actor. Never read from a request.
	FlagsBy string `json:"-"`
}

// BatchItem is one record of EnrolBatch: a resident and, optionally, a card
// to issue at once (with an optional PIN).
type BatchItem struct {
	EnrolInput
	IssueCard bool   `json:"issue_card"`
	PIN       string `json:"pin,omitempty"`
}

// BatchResult is the outcome of one BatchItem: Err is nil on success.
type BatchResult struct {
	Resident Resident
	Card     *Card
	Err      error
}

func randomID(prefix string, n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// validName trims and checks a name.
func validName(name string) (string, error) {
	name = strings.TrimSpace(name)
	n := utf8.RuneCountInString(name)
	if n == 0 {
		return "", apperr.Invalid("name", "the name is required", "姓名不能为空")
	}
	if n > 64 || !utf8.ValidString(name) {
		return "", apperr.Invalid("name", "the name must be valid text of at most 64 characters", "姓名须为不超过64个字符的有效文本")
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return "", apperr.Invalid("name", "the name contains control characters", "姓名含有控制字符")
		}
	}
	return name, nil
}

// checkCategory verifies that the category exists and matches the kind of
// ID number.
func checkCategory(category, kind string) error {
	switch category {
	case CategoryLocal, CategoryInsuredNonlocal:
		if kind != idnum.KindCitizen {
			return apperr.Invalid("category",
				"local and insured non-local residents enrol with a citizen ID number, not a permanent residence card",
				"本市户籍及参保非本市户籍人员须使用居民身份证号码登记，不能使用永久居留证")
		}
	case CategoryPermanentResident:
		if kind != idnum.KindPermanentResident && kind != idnum.KindPermanentResident2017 {
			return apperr.Invalid("category",
				"permanent residents enrol with a foreign permanent residence card number, not a citizen ID number",
				"外国人永久居留人员须使用外国人永久居留身份证号码登记，不能使用居民身份证号码")
		}
	default:
		return apperr.Invalid("category",
			"the category must be local, insured_nonlocal or permanent_resident",
			"人员类别须为 local、insured_nonlocal 或 permanent_resident")
	}
	return nil
}

// prepared is a validated batch item ready to insert.
type prepared struct {
	idx     int
	res     Resident
	idHash  string
	sealed  []byte
	card    bool
	pinHash string
}

// batchChunk bounds the size of one enrolment transaction.
const batchChunk = 500

// Enrol enrols one resident. Errors: validation_failed (name, category,
// category/ID kind mismatch), the idnum codes (bad_check_digit, …) and
// already_exists.
func (s *Service) Enrol(ctx context.Context, in EnrolInput) (Resident, error) {
	res, err := s.EnrolBatch(ctx, []BatchItem{{EnrolInput: in}})
	if err != nil {
		return Resident{}, err
	}
	return res[0].Resident, res[0].Err
}

// EnrolBatch enrols many residents (and issues their cards when asked),
// one transaction per 500 records. It returns one result per item, in
// order; a bad or duplicate record fails alone. The error is for failures
// of the database, after which no result of the failing chunk is valid.
func (s *Service) EnrolBatch(ctx context.Context, items []BatchItem) ([]BatchResult, error) {
	out := make([]BatchResult, len(items))
	now := s.now()
	var ready []prepared
	for i, it := range items {
		p, err := s.prepare(it, now)
		if err != nil {
			out[i].Err = err
			continue
		}
		p.idx = i
		ready = append(ready, p)
	}
	for start := 0; start < len(ready); start += batchChunk {
		end := min(start+batchChunk, len(ready))
		chunk := ready[start:end]
		results := make([]BatchResult, len(chunk))
		err := s.db.Tx(ctx, func(tx *sql.Tx) error {
			for j, p := range chunk {
				results[j] = BatchResult{}
				r, err := tx.ExecContext(ctx, `INSERT INTO residents (id, id_hash, id_masked, id_kind, category, sex, pii, created_at)
					VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id_hash) DO NOTHING`,
					p.res.ID, p.idHash, p.res.IDMasked, p.res.IDKind, p.res.Category, p.res.Sex, p.sealed, now.UnixMilli())
				if err != nil {
					return err
				}
				if n, err := r.RowsAffected(); err != nil {
					return err
				} else if n == 0 {
					results[j].Err = apperr.Newf(apperr.AlreadyExists,
						"a resident with this ID number is already enrolled", "该证件号码的居民已登记")
					continue
				}
				results[j].Resident = p.res
				if p.card {
					c, err := s.insertCard(ctx, tx, p.res.ID, p.pinHash, now, "enrolment")
					if err != nil {
						return err
					}
					results[j].Card = &c
				}
			}
			return nil
		})
		if err != nil {
			return nil, apperr.Wrap(apperr.Internal, err)
		}
		for j, p := range chunk {
			out[p.idx] = results[j]
		}
	}
	return out, nil
}

func (s *Service) prepare(it BatchItem, now time.Time) (prepared, error) {
	name, err := validName(it.Name)
	if err != nil {
		return prepared{}, err
	}
	num, err := idnum.Parse(it.IDNumber, now)
	if err != nil {
		return prepared{}, err
	}
	if err := checkCategory(it.Category, num.Kind); err != nil {
		return prepared{}, err
	}
	flags, err := NormalizeFlags(it.Flags)
	if err != nil {
		return prepared{}, err
	}
	p := prepared{card: it.IssueCard}
	if it.PIN != "" {
		if !it.IssueCard {
			return prepared{}, apperr.Invalid("pin", "a PIN can only be given together with a card", "只有发卡时才能设置密码")
		}
		if err := ValidatePIN(it.PIN); err != nil {
			return prepared{}, err
		}
		p.pinHash = s.hashPIN(it.PIN, s.pinIter)
	}
	p.res = Resident{
		ID:          randomID("res_", 10),
		Name:        name,
		IDMasked:    idnum.Mask(num.Raw),
		IDKind:      num.Kind,
		Category:    it.Category,
		Sex:         num.Sex,
		BirthDate:   num.BirthDate,
		Region:      num.Region,
		Nationality: num.Nationality,
		CreatedAt:   time.UnixMilli(now.UnixMilli()).UTC(),
		Flags:       flags,
	}
	blob := pii{Name: name, IDNumber: num.Raw, BirthDate: num.BirthDate.Format(time.DateOnly), Region: num.Region, Nationality: num.Nationality}
	if flags != nil {
		blob.stampFlags(flags, it.FlagsBy, now)
		p.res.FlagsSetBy, p.res.FlagsSetAt = it.FlagsBy, time.UnixMilli(blob.FlagsAt).UTC()
	}
	plain, _ := json.Marshal(blob)
	p.sealed = s.v.Seal(plain, p.res.ID)
	p.idHash = s.v.LookupHash(hashKindID, num.Raw)
	return p, nil
}

const residentCols = `id, id_masked, id_kind, category, sex, pii, created_at`

func (s *Service) scanResident(row interface{ Scan(...any) error }) (Resident, error) {
	r, _, err := s.scanResidentPII(row)
	return r, err
}

// scanResidentPII is scanResident that also returns the opened blob.
func (s *Service) scanResidentPII(row interface{ Scan(...any) error }) (Resident, pii, error) {
	var r Resident
	var sealed []byte
	var created int64
	if err := row.Scan(&r.ID, &r.IDMasked, &r.IDKind, &r.Category, &r.Sex, &sealed, &created); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return Resident{}, pii{}, apperr.Newf(apperr.NotFound, "no such resident", "未找到该居民")
		}
		return Resident{}, pii{}, apperr.Wrap(apperr.Internal, err)
	}
	p, err := s.unseal(r.ID, sealed)
	if err != nil {
		return Resident{}, pii{}, err
	}
	r.Name, r.Region, r.Nationality = p.Name, p.Region, p.Nationality
	r.BirthDate, _ = time.Parse(time.DateOnly, p.BirthDate)
	r.CreatedAt = time.UnixMilli(created).UTC()
	if len(p.Flags) > 0 {
		r.Flags = p.Flags
	}
	r.FlagsSetBy = p.FlagsBy
	if p.FlagsAt != 0 {
		r.FlagsSetAt = time.UnixMilli(p.FlagsAt).UTC()
	}
	return r, p, nil
}

func (s *Service) unseal(id string, sealed []byte) (pii, error) {
	plain, err := s.v.Unseal(sealed, id)
	if err != nil {
		return pii{}, apperr.Wrap(apperr.Internal, errors.New("resident "+id+": sealed personal data does not open: wrong master key or tampered row"))
	}
	var p pii
	if err := json.Unmarshal(plain, &p); err != nil {
		return pii{}, apperr.Wrap(apperr.Internal, errors.New("resident "+id+": sealed personal data is not valid"))
	}
	return p, nil
}

// Get returns the resident with the given id (not_found if none).
func (s *Service) Get(ctx context.Context, residentID string) (Resident, error) {
	return s.scanResident(s.db.QueryRow(ctx, `SELECT `+residentCols+` FROM residents WHERE id = $1`, residentID))
}

// FindByIDNumber finds a resident by full ID number (exact, through the keyed
// hash). It returns the idnum codes for an invalid number and not_found.
func (s *Service) FindByIDNumber(ctx context.Context, idNumber string) (Resident, error) {
	num, err := idnum.Parse(idNumber, s.now())
	if err != nil {
		return Resident{}, err
	}
	return s.scanResident(s.db.QueryRow(ctx, `SELECT `+residentCols+` FROM residents WHERE id_hash = $1`,
		s.v.LookupHash(hashKindID, num.Raw)))
}

// RevealIDNumber returns the full ID number of a resident. Callers must
// restrict it to hr_admin and audit every call.
func (s *Service) RevealIDNumber(ctx context.Context, residentID string) (string, error) {
	var sealed []byte
	err := s.db.R.QueryRowContext(ctx, `SELECT pii FROM residents WHERE id = $1`, residentID).Scan(&sealed)
	if errors.Is(err, sql.ErrNoRows) {
		return "", apperr.Newf(apperr.NotFound, "no such resident", "未找到该居民")
	}
	if err != nil {
		return "", apperr.Wrap(apperr.Internal, err)
	}
	p, err := s.unseal(residentID, sealed)
	if err != nil {
		return "", err
	}
	return p.IDNumber, nil
}

// Search finds residents by exact card number or ID number (spaces and
// dashes ignored). A 16-digit query is a card number; anything else must be
// a valid ID number (its validation error is returned, so typos are
// reported). It returns at most limit results (all if limit <= 0); being
// exact, there is at most one.
func (s *Service) Search(ctx context.Context, query string, limit int) ([]Resident, error) {
	q := strings.Map(func(r rune) rune {
		if r == ' ' || r == '-' || r == '\t' {
			return -1
		}
		return r
	}, query)
	var (
		r   Resident
		err error
	)
	if len(q) == 16 && isDigits(q) {
		var c Card
		c, err = s.Card(ctx, q)
		if err == nil {
			r, err = s.Get(ctx, c.ResidentID)
		}
	} else {
		r, err = s.FindByIDNumber(ctx, q)
	}
	if apperr.CodeOf(err) == apperr.NotFound {
		return []Resident{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := []Resident{r}
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
