// Package terminal keeps a city's service providers (bus companies,
// hospitals, libraries, schools, employers, residential compounds, hotels,
// utilities …) and their terminals (gates, POS, door and counter readers),
// and defines the signed offline batch a terminal uploads.
//
// Design decisions:
//
//   - A provider is onboarded by the operator with the subset of the
//     catalogue's scenarios it may run; each terminal gets a subset of its
//     provider's. A terminal may scan only its own scenarios (forbidden
//     otherwise).
//   - A terminal has two credentials, both handed out once at onboarding:
//     a long-lived bearer token (auth, kind terminal, role terminal, carrying
//     the provider id) for online calls, and an Ed25519 key pair whose
//     private half signs its offline batches. Only the public key is stored,
//     so a database dump cannot forge a batch.
//   - Disabling a terminal (or its provider) takes effect at once in this
//     process: its tokens are revoked and the cached terminal row is
//     dropped (a look-up that read the row before the disable does not
//     put it back: Service.gen). Other processes sharing the database
//     notice within CacheTTL (2 s), the same bound auth gives for tokens.
//   - Disabling a provider also signs out its staff (staff users whose
//     provider it is): their tokens are revoked, with the same bounds,
//     and they cannot sign in while it is disabled (auth.LoginStaff).
//   - Terminal rows are cached for CacheTTL because every scan checks them;
//     the catalogue and the token cache make the rest of the check
//     in-memory.
//   - The batch format (batch.go) imports nothing from the database, so a
//     terminal program can build and sign batches with this package alone.
package terminal

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/store"
)

// TokenTTL is the lifetime of a terminal's bearer token (long-lived; revoke
// it by disabling the terminal).
const TokenTTL = 5 * 365 * 24 * time.Hour

// CacheTTL bounds how long a terminal row is trusted without the database.
const CacheTTL = 2 * time.Second

// MaxNameLen bounds provider and terminal names, in characters (the
// console's forms say the same).
const MaxNameLen = 100

// Provider kinds (free text is refused so dashboards can group them).
var ProviderKinds = []string{"transit", "hospital", "pharmacy", "library", "museum", "scenic", "school",
	"employer", "community", "hotel", "utility", "government", "bank", "other"}

// Provider is a service provider.
type Provider struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Kind      string    `json:"kind" doc:"transit | hospital | pharmacy | library | museum | scenic | school | employer | community | hotel | utility | government | bank | other"`
	Scenarios []string  `json:"scenarios"`
	Disabled  bool      `json:"disabled"`
	CreatedAt time.Time `json:"created_at"`
}

// Terminal is a scanning terminal of one provider.
type Terminal struct {
	ID         string    `json:"id"`
	ProviderID string    `json:"provider_id"`
	Name       string    `json:"name"`
	Scenarios  []string  `json:"scenarios"`
	Disabled   bool      `json:"disabled"`
	CreatedAt  time.Time `json:"created_at"`
	// PublicKey is the Ed25519 key that checks the terminal's batches (base64url).
	PublicKey string `json:"public_key"`

	providerDisabled bool
}

// Credentials are handed out once, at onboarding.
type Credentials struct {
	Token string `json:"token"`
	// BatchKey is the Ed25519 private key (seed, base64url) that signs offline batches.
	BatchKey string `json:"batch_key"`
}

// ScenarioChecker says whether a scenario id exists (the catalogue).
type ScenarioChecker func(ctx context.Context, id string) error

// Service manages providers and terminals. It is safe for concurrent use.
type Service struct {
	db       *store.DB
	auth     *auth.Service
	now      func() time.Time
	scenario ScenarioChecker

	mu    sync.Mutex
	cache map[string]cachedTerminal
	// gen counts disables: a look-up that read the database before one
	// does not fill the cache after it (it might hold the enabled row).
	gen uint64
}

type cachedTerminal struct {
	t     Terminal
	until time.Time
}

// New returns the service. scenario checks scenario ids at onboarding.
func New(db *store.DB, a *auth.Service, scenario ScenarioChecker, now func() time.Time) *Service {
	if now == nil {
		now = time.Now
	}
	return &Service{db: db, auth: a, now: now, scenario: scenario, cache: map[string]cachedTerminal{}}
}

func storeErr(err error) error {
	if err == nil {
		return nil
	}
	var ae *apperr.Error
	if errors.As(err, &ae) {
		return ae
	}
	if store.IsRetryable(err) {
		return apperr.Wrap(apperr.Unavailable, err)
	}
	return apperr.Wrap(apperr.Internal, err)
}

func (s *Service) checkScenarios(ctx context.Context, list []string) ([]string, error) {
	if len(list) == 0 {
		return nil, apperr.Invalid("scenarios", "name at least one scenario", "至少指定一个服务场景")
	}
	if len(list) > 64 {
		return nil, apperr.Invalid("scenarios", "at most 64 scenarios", "服务场景最多64个")
	}
	out := []string{}
	for _, id := range list {
		if slices.Contains(out, id) {
			continue
		}
		if s.scenario != nil {
			if err := s.scenario(ctx, id); err != nil {
				e := apperr.Invalid("scenarios", "unknown scenario "+id, "未知的服务场景 "+id)
				if apperr.CodeOf(err) != apperr.NotFound {
					return nil, err
				}
				return nil, e
			}
		}
		out = append(out, id)
	}
	slices.Sort(out)
	return out, nil
}

func checkName(name string) (string, error) {
	name = strings.TrimSpace(name)
	if name == "" || !utf8.ValidString(name) || utf8.RuneCountInString(name) > MaxNameLen {
		return "", apperr.Invalid("name", "the name must be 1 to "+strconv.Itoa(MaxNameLen)+" characters", "名称须为1至"+strconv.Itoa(MaxNameLen)+"个字符")
	}
	return name, nil
}

// CreateProvider onboards a provider allowed to run scenarios.
func (s *Service) CreateProvider(ctx context.Context, name, kind string, scenarios []string) (Provider, error) {
	name, err := checkName(name)
	if err != nil {
		return Provider{}, err
	}
	if !slices.Contains(ProviderKinds, kind) {
		return Provider{}, apperr.Invalid("kind", "kind must be one of "+strings.Join(ProviderKinds, ", "), "服务商类型须为 "+strings.Join(ProviderKinds, "、")+" 之一")
	}
	sc, err := s.checkScenarios(ctx, scenarios)
	if err != nil {
		return Provider{}, err
	}
	p := Provider{ID: auth.RandomID("prv"), Name: name, Kind: kind, Scenarios: sc, CreatedAt: s.now().UTC().Truncate(time.Millisecond)}
	b, _ := json.Marshal(sc)
	_, err = s.db.W.ExecContext(ctx, `INSERT INTO providers(id, name, kind, scenarios, disabled, created_at) VALUES ($1,$2,$3,$4,0,$5)`,
		p.ID, p.Name, p.Kind, string(b), p.CreatedAt.UnixMilli())
	if err != nil {
		return Provider{}, storeErr(err)
	}
	return p, nil
}

func scanProvider(row interface{ Scan(...any) error }) (Provider, error) {
	var p Provider
	var sc string
	var dis int
	var created int64
	if err := row.Scan(&p.ID, &p.Name, &p.Kind, &sc, &dis, &created); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return Provider{}, apperr.Newf(apperr.NotFound, "no such provider", "未找到该服务商")
		}
		return Provider{}, storeErr(err)
	}
	json.Unmarshal([]byte(sc), &p.Scenarios)
	p.Disabled, p.CreatedAt = dis != 0, time.UnixMilli(created).UTC()
	return p, nil
}

// Provider returns one provider.
func (s *Service) Provider(ctx context.Context, id string) (Provider, error) {
	return scanProvider(s.db.QueryRow(ctx, `SELECT id, name, kind, scenarios, disabled, created_at FROM providers WHERE id = $1`, id))
}

// Providers lists every provider, oldest first.
func (s *Service) Providers(ctx context.Context) ([]Provider, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT id, name, kind, scenarios, disabled, created_at FROM providers ORDER BY created_at, id`)
	if err != nil {
		return nil, storeErr(err)
	}
	defer rows.Close()
	out := []Provider{}
	for rows.Next() {
		p, err := scanProvider(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, storeErr(rows.Err())
}

// CreateTerminal onboards a terminal of provider for scenarios (a subset of
// the provider's; empty means all of them) and returns its credentials.
func (s *Service) CreateTerminal(ctx context.Context, providerID, name string, scenarios []string) (Terminal, Credentials, error) {
	name, err := checkName(name)
	if err != nil {
		return Terminal{}, Credentials{}, err
	}
	p, err := s.Provider(ctx, providerID)
	if err != nil {
		return Terminal{}, Credentials{}, err
	}
	if p.Disabled {
		return Terminal{}, Credentials{}, errProviderDisabled()
	}
	if len(scenarios) == 0 {
		scenarios = p.Scenarios
	}
	sc, err := s.checkScenarios(ctx, scenarios)
	if err != nil {
		return Terminal{}, Credentials{}, err
	}
	for _, id := range sc {
		if !slices.Contains(p.Scenarios, id) {
			return Terminal{}, Credentials{}, apperr.Invalid("scenarios", "the provider may not run scenario "+id, "该服务商无权使用服务场景 "+id)
		}
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Terminal{}, Credentials{}, apperr.Wrap(apperr.Internal, err)
	}
	if testHookBeforeInsert != nil {
		testHookBeforeInsert()
	}
	t := Terminal{ID: auth.RandomID("trm"), ProviderID: p.ID, Name: name, Scenarios: sc, CreatedAt: s.now().UTC().Truncate(time.Millisecond),
		PublicKey: base64.RawURLEncoding.EncodeToString(pub)}
	b, _ := json.Marshal(sc)
	if _, err := s.db.W.ExecContext(ctx, `INSERT INTO terminals(id, provider_id, name, scenarios, public_key, disabled, created_at) VALUES ($1,$2,$3,$4,$5,0,$6)`,
		t.ID, t.ProviderID, t.Name, string(b), []byte(pub), t.CreatedAt.UnixMilli()); err != nil {
		return Terminal{}, Credentials{}, storeErr(err)
	}
	tok, _, err := s.auth.IssueToken(ctx, auth.Principal{Kind: auth.KindTerminal, Subject: t.ID, Role: auth.RoleTerminal, ProviderID: p.ID}, TokenTTL)
	if err != nil {
		return Terminal{}, Credentials{}, err
	}
	// The provider may have been disabled after it was read above and
	// before the terminal's row was stored: DisableProvider, which marks
	// the provider before it lists its terminals, then missed this one.
	// Read the mark again: this terminal is disabled too, and never handed
	// out (were the provider enabled again, it would come back to life).
	if p, err = s.Provider(ctx, p.ID); err != nil || p.Disabled {
		if _, derr := s.DisableTerminal(context.WithoutCancel(ctx), t.ID); derr != nil && err == nil {
			err = derr
		}
		if err == nil {
			err = errProviderDisabled()
		}
		return Terminal{}, Credentials{}, err
	}
	return t, Credentials{Token: tok, BatchKey: base64.RawURLEncoding.EncodeToString(priv.Seed())}, nil
}

// testHookBeforeInsert, when set (tests), runs in CreateTerminal after the
// provider was read and before the terminal's row is stored.
var testHookBeforeInsert func()

const terminalCols = `t.id, t.provider_id, t.name, t.scenarios, t.public_key, t.disabled, t.created_at, p.disabled`

func scanTerminal(row interface{ Scan(...any) error }) (Terminal, error) {
	var t Terminal
	var sc string
	var pub []byte
	var dis, pdis int
	var created int64
	if err := row.Scan(&t.ID, &t.ProviderID, &t.Name, &sc, &pub, &dis, &created, &pdis); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return Terminal{}, apperr.Newf(apperr.NotFound, "no such terminal", "未找到该终端")
		}
		return Terminal{}, storeErr(err)
	}
	json.Unmarshal([]byte(sc), &t.Scenarios)
	t.PublicKey = base64.RawURLEncoding.EncodeToString(pub)
	t.Disabled, t.providerDisabled, t.CreatedAt = dis != 0, pdis != 0, time.UnixMilli(created).UTC()
	return t, nil
}

// Terminal returns a terminal (read from the database, not the cache).
func (s *Service) Terminal(ctx context.Context, id string) (Terminal, error) {
	t, err := scanTerminal(s.db.QueryRow(ctx, `SELECT `+terminalCols+` FROM terminals t JOIN providers p ON p.id = t.provider_id WHERE t.id = $1`, id))
	if err != nil {
		return Terminal{}, err
	}
	t.Disabled = t.Disabled || t.providerDisabled
	return t, nil
}

// Terminals lists a provider's terminals ("" = every terminal).
func (s *Service) Terminals(ctx context.Context, providerID string) ([]Terminal, error) {
	q := `SELECT ` + terminalCols + ` FROM terminals t JOIN providers p ON p.id = t.provider_id`
	var args []any
	if providerID != "" {
		q += ` WHERE t.provider_id = $1`
		args = append(args, providerID)
	}
	rows, err := s.db.R.QueryContext(ctx, q+` ORDER BY t.created_at, t.id`, args...)
	if err != nil {
		return nil, storeErr(err)
	}
	defer rows.Close()
	out := []Terminal{}
	for rows.Next() {
		t, err := scanTerminal(rows)
		if err != nil {
			return nil, err
		}
		t.Disabled = t.Disabled || t.providerDisabled
		out = append(out, t)
	}
	return out, storeErr(rows.Err())
}

// cached returns the terminal, from the cache when fresh.
func (s *Service) cached(ctx context.Context, id string) (Terminal, error) {
	now := s.now()
	s.mu.Lock()
	c, ok := s.cache[id]
	gen := s.gen
	s.mu.Unlock()
	if ok && now.Before(c.until) {
		return c.t, nil
	}
	t, err := s.Terminal(ctx, id)
	if err != nil {
		return Terminal{}, err
	}
	s.mu.Lock()
	if s.gen == gen {
		if len(s.cache) > 100_000 {
			s.cache = map[string]cachedTerminal{}
		}
		s.cache[id] = cachedTerminal{t: t, until: now.Add(CacheTTL)}
	}
	s.mu.Unlock()
	return t, nil
}

// forget drops terminal id from the cache (or, with id "", every
// terminal of providerID), and keeps look-ups that read the database
// before this call from caching what they read.
func (s *Service) forget(id, providerID string) {
	s.mu.Lock()
	s.gen++
	if id != "" {
		delete(s.cache, id)
	} else {
		for k, c := range s.cache {
			if c.t.ProviderID == providerID {
				delete(s.cache, k)
			}
		}
	}
	s.mu.Unlock()
}

// Authorize checks that principal p is an enabled terminal that may run
// scenario ("" = any of its scenarios) and returns the terminal.
// Errors: unauthorized (not a terminal, unknown terminal), terminal_disabled,
// forbidden (scenario not the terminal's).
func (s *Service) Authorize(ctx context.Context, p auth.Principal, scenario string) (Terminal, error) {
	if p.Kind != auth.KindTerminal || p.Role != auth.RoleTerminal {
		return Terminal{}, apperr.Newf(apperr.Unauthorized, "only terminals may scan", "只有终端可以扫码")
	}
	t, err := s.cached(ctx, p.Subject)
	if apperr.CodeOf(err) == apperr.NotFound {
		return Terminal{}, apperr.Newf(apperr.Unauthorized, "unknown terminal", "未知终端")
	}
	if err != nil {
		return Terminal{}, err
	}
	if t.Disabled {
		return Terminal{}, apperr.New(apperr.TerminalDisabled)
	}
	if scenario != "" && !slices.Contains(t.Scenarios, scenario) {
		return Terminal{}, apperr.Newf(apperr.Forbidden, "this terminal may not run scenario "+scenario, "该终端无权使用服务场景 "+scenario)
	}
	return t, nil
}

// DisableTerminal disables a terminal at once: its tokens are revoked and
// its scans and batches refused.
func (s *Service) DisableTerminal(ctx context.Context, id string) (Terminal, error) {
	res, err := s.db.W.ExecContext(ctx, `UPDATE terminals SET disabled = 1, disabled_at = $2 WHERE id = $1`, id, s.now().UnixMilli())
	if err != nil {
		return Terminal{}, storeErr(err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return Terminal{}, apperr.Newf(apperr.NotFound, "no such terminal", "未找到该终端")
	}
	s.forget(id, "")
	if err := s.auth.RevokeSubject(ctx, auth.KindTerminal, id); err != nil {
		return Terminal{}, err
	}
	return s.Terminal(ctx, id)
}

// DisableProvider disables a provider and every one of its terminals, and
// signs out its staff: their tokens are revoked, and they cannot sign in
// again while it is disabled. Calling it again (after an error part way)
// finishes the job.
func (s *Service) DisableProvider(ctx context.Context, id string) (Provider, error) {
	if err := s.markProvider(ctx, id, true); err != nil {
		return Provider{}, err
	}
	// After the mark: a sign-in that stores its token after this
	// revocation sees the mark (auth.LoginStaff).
	if err := s.auth.RevokeProviderStaff(ctx, id); err != nil {
		return Provider{}, err
	}
	ts, err := s.Terminals(ctx, id)
	if err != nil {
		return Provider{}, err
	}
	for _, t := range ts {
		if _, err := s.DisableTerminal(ctx, t.ID); err != nil {
			return Provider{}, err
		}
	}
	return s.Provider(ctx, id)
}

// EnableProvider lets a disabled provider back in (a contract renewed, a
// disable by mistake): its staff may sign in again (their old sessions
// stay ended) and new terminals may be onboarded. Its terminals stay
// disabled, their credentials revoked by the disable: each comes back
// with new ones (Reissue). Enabling an enabled provider changes nothing.
func (s *Service) EnableProvider(ctx context.Context, id string) (Provider, error) {
	if err := s.markProvider(ctx, id, false); err != nil {
		return Provider{}, err
	}
	return s.Provider(ctx, id)
}

// markProvider sets provider id's disabled mark and drops its terminals
// from the cache (they carry the mark).
func (s *Service) markProvider(ctx context.Context, id string, disabled bool) error {
	mark := 0
	if disabled {
		mark = 1
	}
	res, err := s.db.W.ExecContext(ctx, `UPDATE providers SET disabled = $2 WHERE id = $1`, id, mark)
	if err != nil {
		return storeErr(err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return apperr.Newf(apperr.NotFound, "no such provider", "未找到该服务商")
	}
	s.forget("", id)
	return nil
}

// BatchPublicKey returns the key that checks terminal id's batches.
func (t Terminal) BatchPublicKey() ed25519.PublicKey {
	b, _ := base64.RawURLEncoding.DecodeString(t.PublicKey)
	if len(b) != ed25519.PublicKeySize {
		return nil
	}
	return ed25519.PublicKey(b)
}

// Mark is a terminal's offline high-water mark: the sequence number and
// time of the latest record (by sequence number) stored from it. The scans
// table's writer moves it in the transaction that stores the records.
type Mark struct {
	Seq int64
	At  time.Time
	Set bool // false until the terminal's first record is stored
}

// OfflineMark returns terminal id's mark, read from the database.
func (s *Service) OfflineMark(ctx context.Context, id string) (Mark, error) {
	var seq sql.NullInt64
	var at int64
	if err := s.db.QueryRow(ctx, `SELECT offline_seq, offline_at FROM terminals WHERE id = $1`, id).Scan(&seq, &at); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return Mark{}, apperr.Newf(apperr.NotFound, "no such terminal", "未找到该终端")
		}
		return Mark{}, storeErr(err)
	}
	return Mark{Seq: seq.Int64, At: time.UnixMilli(at).UTC(), Set: seq.Valid}, nil
}
