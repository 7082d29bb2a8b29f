package catalog

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store"
)

// Options tune a Catalog.
type Options struct {
	// RefreshInterval is how long the in-memory snapshot is trusted before
	// the generation counter is read again to notice changes made by other
	// processes (default 1s; negative means check on every call). Changes
	// made through this Catalog are visible at once.
	RefreshInterval time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Catalog is the service catalogue of a node, backed by the database and
// cached in memory. It is safe for concurrent use.
type Catalog struct {
	db      *store.DB
	refresh time.Duration
	now     func() time.Time

	snap    atomic.Pointer[snapshot]
	checked atomic.Int64 // UnixNano of the last generation check
	mu      sync.Mutex   // serialises reloads

	watchMu  sync.Mutex
	watchers []func()
}

// OnChange registers f to run after every scenario change committed
// through this catalogue (create, update, enable, disable). Changes made
// by another process are seen by the catalogue's own refresh instead.
func (c *Catalog) OnChange(f func()) {
	c.watchMu.Lock()
	c.watchers = append(c.watchers, f)
	c.watchMu.Unlock()
}

type snapshot struct {
	gen  int64
	list []Scenario // ordered by item, position, id
	byID map[string]*Scenario

	// The replaced versions of scenarios, read when first asked for
	// (ScenarioAt). A change bumps the generation, so a snapshot's
	// histories never miss a version replaced before the snapshot.
	histMu sync.Mutex
	hist   map[string][]pastVersion
}

// pastVersion is a scenario as it was until an edit replaced it.
type pastVersion struct {
	until int64 // Unix ms: in force before this instant
	s     Scenario
}

// Open returns the catalogue of db, seeding the 13 items and the seeded
// scenarios that are missing. Opening again never duplicates a row or
// overwrites an edit.
func Open(ctx context.Context, db *store.DB) (*Catalog, error) {
	return OpenWith(ctx, db, Options{})
}

// OpenWith is Open with options.
func OpenWith(ctx context.Context, db *store.DB, opt Options) (*Catalog, error) {
	return open(ctx, db, opt, seedItems, SeedScenarios())
}

func open(ctx context.Context, db *store.DB, opt Options, items []Item, seed []Scenario) (*Catalog, error) {
	c := &Catalog{db: db, refresh: opt.RefreshInterval, now: opt.Now}
	if c.refresh == 0 {
		c.refresh = time.Second
	}
	if c.now == nil {
		c.now = time.Now
	}
	for _, s := range seed {
		if err := Validate(s); err != nil {
			return nil, fmt.Errorf("catalog seed %s: %w", s.ID, err)
		}
	}
	if err := c.seed(ctx, items, seed); err != nil {
		return nil, fmt.Errorf("seeding the service catalogue: %w", err)
	}
	return c, nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (c *Catalog) seed(ctx context.Context, items []Item, seed []Scenario) error {
	// Cheap check first: most starts find everything in place.
	have := map[string]bool{}
	rows, err := c.db.R.QueryContext(ctx, `SELECT id FROM catalog_scenarios`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return err
		}
		have[id] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	var nItems int
	if err := c.db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM catalog_items`).Scan(&nItems); err != nil {
		return err
	}
	missing := nItems < len(items)
	for _, s := range seed {
		if !have[s.ID] {
			missing = true
		}
	}
	if !missing {
		return nil
	}
	now := c.now().UnixMilli()
	return c.db.Tx(ctx, func(tx *sql.Tx) error {
		for _, it := range items {
			if _, err := tx.ExecContext(ctx, `INSERT INTO catalog_items(number, name_zh, name_en, description_zh, description_en)
				VALUES ($1, $2, $3, $4, $5) ON CONFLICT (number) DO NOTHING`,
				it.Number, it.NameZh, it.NameEn, it.DescriptionZh, it.DescriptionEn); err != nil {
				return err
			}
		}
		for i, s := range seed {
			if have[s.ID] {
				continue
			}
			if _, err := insertScenario(ctx, tx, s, i, "seed", now, true); err != nil {
				return err
			}
		}
		return bumpGeneration(ctx, tx)
	})
}

const scenarioCols = `id, item, position, name_zh, name_en, kind, default_amount_fen, amount_from_terminal, max_amount_fen,
	eligibility, concessions, view_fields, offline_allowed, credit_limit_fen, local_only, require_pin, pin_above_fen,
	enabled, origin, version, created_at, updated_at`

func encodeRules(s Scenario) (elig, conc, view string, err error) {
	b1, err := json.Marshal(s.Eligibility)
	if err != nil {
		return
	}
	cs := s.Concessions
	if cs == nil {
		cs = []Concession{}
	}
	b2, err := json.Marshal(cs)
	if err != nil {
		return
	}
	vf := s.ViewFields
	if vf == nil {
		vf = []string{}
	}
	b3, err := json.Marshal(vf)
	return string(b1), string(b2), string(b3), err
}

// insertScenario inserts s; with ignoreConflict a row with the same id is
// left alone and (false, nil) returned.
func insertScenario(ctx context.Context, q store.Querier, s Scenario, position int, origin string, now int64, ignoreConflict bool) (bool, error) {
	elig, conc, view, err := encodeRules(s)
	if err != nil {
		return false, err
	}
	stmt := `INSERT INTO catalog_scenarios(` + scenarioCols + `)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, 1, $20, $20)`
	if ignoreConflict {
		stmt += ` ON CONFLICT (id) DO NOTHING`
	}
	res, err := q.ExecContext(ctx, stmt,
		s.ID, s.Item, position, s.NameZh, s.NameEn, string(s.Kind), s.DefaultAmountFen, b2i(s.AmountFromTerminal), s.MaxAmountFen,
		elig, conc, view, b2i(s.OfflineAllowed), s.CreditLimitFen, b2i(s.LocalOnly), b2i(s.RequirePIN), s.PINAboveFen,
		b2i(s.Enabled), origin, now)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

func bumpGeneration(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, `UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1`)
	return err
}

type rowScanner interface{ Scan(dest ...any) error }

func scanScenario(r rowScanner) (Scenario, int, error) {
	var s Scenario
	var kind, elig, conc, view, origin string
	var position int
	var fromTerm, offline, local, reqPIN, enabled int
	var created, updated int64
	if err := r.Scan(&s.ID, &s.Item, &position, &s.NameZh, &s.NameEn, &kind, &s.DefaultAmountFen, &fromTerm, &s.MaxAmountFen,
		&elig, &conc, &view, &offline, &s.CreditLimitFen, &local, &reqPIN, &s.PINAboveFen,
		&enabled, &origin, &s.Version, &created, &updated); err != nil {
		return s, 0, err
	}
	s.Kind = Kind(kind)
	s.AmountFromTerminal, s.OfflineAllowed, s.LocalOnly, s.RequirePIN, s.Enabled = fromTerm != 0, offline != 0, local != 0, reqPIN != 0, enabled != 0
	s.Seeded = origin == "seed"
	s.CreatedAt, s.UpdatedAt = time.UnixMilli(created).UTC(), time.UnixMilli(updated).UTC()
	if err := json.Unmarshal([]byte(elig), &s.Eligibility); err != nil {
		return s, 0, fmt.Errorf("scenario %s: eligibility: %w", s.ID, err)
	}
	if err := json.Unmarshal([]byte(conc), &s.Concessions); err != nil {
		return s, 0, fmt.Errorf("scenario %s: concessions: %w", s.ID, err)
	}
	if err := json.Unmarshal([]byte(view), &s.ViewFields); err != nil {
		return s, 0, fmt.Errorf("scenario %s: view_fields: %w", s.ID, err)
	}
	return s, position, nil
}

// snapshot returns the current in-memory snapshot, reloading it when it was
// invalidated locally or the database generation has moved on.
func (c *Catalog) snapshotFor(ctx context.Context) (*snapshot, error) {
	snap := c.snap.Load()
	now := c.now().UnixNano()
	if snap != nil && c.refresh > 0 && now-c.checked.Load() < int64(c.refresh) {
		return snap, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	snap = c.snap.Load()
	if snap != nil && c.refresh > 0 && now-c.checked.Load() < int64(c.refresh) {
		return snap, nil // another caller refreshed while we waited
	}
	var gen int64
	if err := c.db.QueryRow(ctx, `SELECT generation FROM catalog_generation WHERE id = 1`).Scan(&gen); err != nil {
		return nil, apperr.Wrap(apperr.Unavailable, err)
	}
	if snap != nil && snap.gen == gen {
		c.checked.Store(now)
		return snap, nil
	}
	// Generation first, rows second: a change committed in between makes the
	// next check reload again, never leaves new data marked as old.
	next, err := c.load(ctx, gen)
	if err != nil {
		return nil, err
	}
	c.snap.Store(next)
	c.checked.Store(now)
	return next, nil
}

func (c *Catalog) load(ctx context.Context, gen int64) (*snapshot, error) {
	rows, err := c.db.R.QueryContext(ctx, `SELECT `+scenarioCols+` FROM catalog_scenarios`)
	if err != nil {
		return nil, apperr.Wrap(apperr.Unavailable, err)
	}
	defer rows.Close()
	type withPos struct {
		s   Scenario
		pos int
	}
	var all []withPos
	for rows.Next() {
		s, pos, err := scanScenario(rows)
		if err != nil {
			return nil, apperr.Wrap(apperr.Internal, err)
		}
		all = append(all, withPos{s, pos})
	}
	if err := rows.Err(); err != nil {
		return nil, apperr.Wrap(apperr.Unavailable, err)
	}
	slices.SortFunc(all, func(a, b withPos) int {
		return cmp.Or(cmp.Compare(a.s.Item, b.s.Item), cmp.Compare(a.pos, b.pos), cmp.Compare(a.s.ID, b.s.ID))
	})
	snap := &snapshot{gen: gen, list: make([]Scenario, len(all)), byID: make(map[string]*Scenario, len(all))}
	for i, w := range all {
		snap.list[i] = w.s
		snap.byID[w.s.ID] = &snap.list[i]
	}
	return snap, nil
}

// invalidate drops the local snapshot after a change committed here. It
// takes the reload lock so that a reload that read the database before the
// change cannot store its stale snapshot after this.
func (c *Catalog) invalidate() {
	c.mu.Lock()
	c.snap.Store(nil)
	c.mu.Unlock()
	c.watchMu.Lock()
	ws := slices.Clone(c.watchers)
	c.watchMu.Unlock()
	for _, f := range ws {
		f()
	}
}

// Items returns the 13 service items in the regulation's order.
func (c *Catalog) Items(ctx context.Context) ([]Item, error) {
	rows, err := c.db.R.QueryContext(ctx, `SELECT number, name_zh, name_en, description_zh, description_en FROM catalog_items ORDER BY number`)
	if err != nil {
		return nil, apperr.Wrap(apperr.Unavailable, err)
	}
	defer rows.Close()
	var out []Item
	for rows.Next() {
		var it Item
		if err := rows.Scan(&it.Number, &it.NameZh, &it.NameEn, &it.DescriptionZh, &it.DescriptionEn); err != nil {
			return nil, apperr.Wrap(apperr.Internal, err)
		}
		out = append(out, it)
	}
	if err := rows.Err(); err != nil {
		return nil, apperr.Wrap(apperr.Unavailable, err)
	}
	return out, nil
}

// Scenarios returns the scenarios of service item item (1..13) in order,
// disabled ones included; item 0 returns every scenario.
func (c *Catalog) Scenarios(ctx context.Context, item int) ([]Scenario, error) {
	if item < 0 || item > ItemCount {
		return nil, apperr.Invalid("item", "the item must be a service item number from 1 to 13", "服务事项编号须为 1 至 13")
	}
	snap, err := c.snapshotFor(ctx)
	if err != nil {
		return nil, err
	}
	out := []Scenario{}
	for _, s := range snap.list {
		if item == 0 || s.Item == item {
			out = append(out, s.Clone())
		}
	}
	return out, nil
}

// Scenario returns the scenario with this id (apperr.NotFound if there is
// none). It reads the in-memory snapshot: cheap enough for every scan.
func (c *Catalog) Scenario(ctx context.Context, id string) (Scenario, error) {
	snap, err := c.snapshotFor(ctx)
	if err != nil {
		return Scenario{}, err
	}
	s, ok := snap.byID[id]
	if !ok {
		return Scenario{}, notFound(id)
	}
	return s.Clone(), nil
}

// ScenarioAt returns the scenario with this id as it was in force at the
// instant at: the current version, unless an edit replaced it after at;
// then the version in force at at (for an instant before the scenario
// existed, its first version). An offline ride is charged at the fare and
// under the rules of its time, not of its upload: a fare raised, or a
// concession withdrawn, while the terminal was offline does not change
// what its earlier rides cost.
func (c *Catalog) ScenarioAt(ctx context.Context, id string, at time.Time) (Scenario, error) {
	snap, err := c.snapshotFor(ctx)
	if err != nil {
		return Scenario{}, err
	}
	cur, ok := snap.byID[id]
	if !ok {
		return Scenario{}, notFound(id)
	}
	if !cur.UpdatedAt.After(at) {
		return cur.Clone(), nil
	}
	past, err := c.history(ctx, snap, id)
	if err != nil {
		return Scenario{}, err
	}
	ms := at.UnixMilli()
	for _, v := range past { // ordered by until
		if v.until > ms {
			return v.s.Clone(), nil
		}
	}
	return cur.Clone(), nil
}

// history returns the replaced versions of scenario id, oldest first.
func (c *Catalog) history(ctx context.Context, snap *snapshot, id string) ([]pastVersion, error) {
	snap.histMu.Lock()
	past, ok := snap.hist[id]
	snap.histMu.Unlock()
	if ok {
		return past, nil
	}
	rows, err := c.db.R.QueryContext(ctx, `SELECT valid_to, scenario FROM catalog_scenario_history WHERE id = $1 ORDER BY valid_to, version`, id)
	if err != nil {
		return nil, apperr.Wrap(apperr.Unavailable, err)
	}
	defer rows.Close()
	for rows.Next() {
		var v pastVersion
		var b string
		if err := rows.Scan(&v.until, &b); err != nil {
			return nil, apperr.Wrap(apperr.Unavailable, err)
		}
		if err := json.Unmarshal([]byte(b), &v.s); err != nil {
			return nil, apperr.Wrap(apperr.Internal, fmt.Errorf("scenario %s, a past version: %w", id, err))
		}
		past = append(past, v)
	}
	if err := rows.Err(); err != nil {
		return nil, apperr.Wrap(apperr.Unavailable, err)
	}
	snap.histMu.Lock()
	if snap.hist == nil {
		snap.hist = map[string][]pastVersion{}
	}
	snap.hist[id] = past
	snap.histMu.Unlock()
	return past, nil
}

// keepVersion copies scenario id as it stands into the history, in force
// until now, in the transaction of the edit that replaces it. Two edits at
// once on PostgreSQL may both find the same version; the first copy stays.
func keepVersion(ctx context.Context, tx *sql.Tx, id string, now int64) error {
	s, _, err := scanScenario(tx.QueryRowContext(ctx, `SELECT `+scenarioCols+` FROM catalog_scenarios WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return notFound(id)
	}
	if err != nil {
		return err
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO catalog_scenario_history(id, version, valid_to, scenario) VALUES ($1, $2, $3, $4)
		ON CONFLICT (id, version) DO NOTHING`, id, s.Version, now, string(b))
	return err
}

func notFound(id string) *apperr.Error {
	if len(id) > maxIDLen || !scenarioID.MatchString(id) {
		id = "(invalid id)"
	}
	return apperr.Newf(apperr.NotFound, "no service scenario "+id, "服务场景 "+id+" 不存在")
}

// CreateScenario validates and stores a new scenario (enabled as given) and
// returns it as stored. A taken id is apperr.AlreadyExists.
func (c *Catalog) CreateScenario(ctx context.Context, s Scenario) (Scenario, error) {
	if err := Validate(s); err != nil {
		return Scenario{}, err
	}
	now := c.now().UnixMilli()
	err := c.db.Tx(ctx, func(tx *sql.Tx) error {
		var pos int
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(position), 0) FROM catalog_scenarios`).Scan(&pos); err != nil {
			return err
		}
		if _, err := insertScenario(ctx, tx, s, max(pos+1, 10_000), "staff", now, false); err != nil {
			return err
		}
		return bumpGeneration(ctx, tx)
	})
	if err != nil {
		if store.IsUniqueViolation(err) {
			return Scenario{}, apperr.Newf(apperr.AlreadyExists, "a service scenario "+s.ID+" already exists", "服务场景 "+s.ID+" 已存在")
		}
		return Scenario{}, storeErr(err)
	}
	c.invalidate()
	return c.reread(ctx, s.ID)
}

// UpdateScenario replaces the editable fields of the scenario s.ID. The
// item and kind cannot change. If s.Version is not zero it must equal the
// stored version (apperr.Conflict otherwise), so two staff edits do not
// silently overwrite each other.
func (c *Catalog) UpdateScenario(ctx context.Context, s Scenario) (Scenario, error) {
	if err := Validate(s); err != nil {
		return Scenario{}, err
	}
	elig, conc, view, err := encodeRules(s)
	if err != nil {
		return Scenario{}, apperr.Wrap(apperr.Internal, err)
	}
	now := c.now().UnixMilli()
	err = c.db.Tx(ctx, func(tx *sql.Tx) error {
		var item int
		var kind string
		var version int64
		err := tx.QueryRowContext(ctx, `SELECT item, kind, version FROM catalog_scenarios WHERE id = $1`, s.ID).Scan(&item, &kind, &version)
		if errors.Is(err, sql.ErrNoRows) {
			return notFound(s.ID)
		}
		if err != nil {
			return err
		}
		if item != s.Item {
			return apperr.Invalid("item", "a scenario cannot move to another service item", "服务场景不能改属其他服务事项")
		}
		if kind != string(s.Kind) {
			return apperr.Invalid("kind", "a scenario's kind cannot change; create a new scenario instead", "服务场景类型不可修改，请新建场景")
		}
		if s.Version != 0 && s.Version != version {
			return apperr.Newf(apperr.Conflict, "the scenario was changed by someone else; reload it and try again", "服务场景已被他人修改，请刷新后重试")
		}
		if err := keepVersion(ctx, tx, s.ID, now); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE catalog_scenarios SET name_zh = $2, name_en = $3, default_amount_fen = $4,
			amount_from_terminal = $5, max_amount_fen = $6, eligibility = $7, concessions = $8, view_fields = $9,
			offline_allowed = $10, credit_limit_fen = $11, local_only = $12, require_pin = $13, pin_above_fen = $14,
			enabled = $15, version = version + 1, updated_at = $16 WHERE id = $1`,
			s.ID, s.NameZh, s.NameEn, s.DefaultAmountFen, b2i(s.AmountFromTerminal), s.MaxAmountFen, elig, conc, view,
			b2i(s.OfflineAllowed), s.CreditLimitFen, b2i(s.LocalOnly), b2i(s.RequirePIN), s.PINAboveFen,
			b2i(s.Enabled), now); err != nil {
			return err
		}
		return bumpGeneration(ctx, tx)
	})
	if err != nil {
		return Scenario{}, storeErr(err)
	}
	c.invalidate()
	return c.reread(ctx, s.ID)
}

// SetEnabled enables or disables the scenario id. Disabled scenarios stay
// listed; Decide refuses them with apperr.ScenarioDisabled.
func (c *Catalog) SetEnabled(ctx context.Context, id string, enabled bool) (Scenario, error) {
	now := c.now().UnixMilli()
	err := c.db.Tx(ctx, func(tx *sql.Tx) error {
		if err := keepVersion(ctx, tx, id, now); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `UPDATE catalog_scenarios SET enabled = $2, version = version + 1, updated_at = $3 WHERE id = $1`,
			id, b2i(enabled), now)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return notFound(id)
		}
		return bumpGeneration(ctx, tx)
	})
	if err != nil {
		return Scenario{}, storeErr(err)
	}
	c.invalidate()
	return c.reread(ctx, id)
}

// reread reads one scenario straight from the database (after a write).
func (c *Catalog) reread(ctx context.Context, id string) (Scenario, error) {
	s, _, err := scanScenario(c.db.QueryRow(ctx, `SELECT `+scenarioCols+` FROM catalog_scenarios WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Scenario{}, notFound(id)
	}
	if err != nil {
		return Scenario{}, storeErr(err)
	}
	return s, nil
}

func storeErr(err error) error {
	var ae *apperr.Error
	if errors.As(err, &ae) {
		return ae
	}
	if store.IsRetryable(err) {
		return apperr.Wrap(apperr.Unavailable, err)
	}
	return apperr.Wrap(apperr.Internal, err)
}
