// Package keys manages a city node's signing keys: the issuer keys that sign
// e-codes and the long-lived node key that signs trust bundles (and later
// federation messages).
//
// # Storage
//
// Private keys are files in DATA/keys/ (directory 0700, files 0600), each a
// PEM "PRIVATE KEY" block holding PKCS #8 (see ecode.MarshalPrivateKey):
// issuer keys are issuer-<kid>.key, the node key is node.key. Files are
// written to a temporary name (.<name>.<random>.tmp, which backups skip),
// fsynced and hard-linked into place, so a key file is never seen
// half-written and never overwritten; Open removes temporary files a crash
// left behind. A keys directory that cannot be made private (a read-only
// mount that others may enter) must hold files of mode 0400 or 0600: Open
// refuses key files others could read there.
//
// The database holds the registry every process of the node shares:
// issuer_keys (kid, seq, alg, public key, created_at, active_from,
// retired_at, not_after)
// and node_keys (one row per purpose, "node"). Public keys, not files, feed
// the trust bundle, so any process can publish every key.
//
// # Rotation
//
// A rotation is announced ahead: RotateAnnounced registers the new key with
// active_from = now + announce and, in the same transaction, retires the
// key it replaces at that instant (retired_at = active_from, not_after =
// active_from + RetireGrace, the 60 s code lifetime plus a margin for clock
// skew and for other processes to notice the rotation). From registration
// on, the new key is in PublicKeys (and so in every trust bundle), so
// terminals learn it before any code is signed with it; the node keeps
// signing with the old key until active_from. The signing key is computed
// from the registry and the clock, not taken as "the newest row": Current
// returns the key of highest seq whose active_from has come and whose
// retired_at has not, so every process that has refreshed since the
// rotation was registered switches at active_from without a restart or
// another refresh. Rotate (an announce of zero) switches at once, for a
// compromised key. A second announced rotation while one is pending is
// refused (ErrRotationPending); a rotation at once while one is pending
// withdraws the pending key (it never signed: it leaves PublicKeys at
// once) and replaces the current key now. A retired key never signs again
// in a process that has refreshed, keeps verifying until not_after, and
// then leaves PublicKeys (and so the bundle). A new key's file is written
// before it is registered and deleted only when the registry is known not
// to hold it (a commit reported as failed may have happened): a registered
// key whose file is missing would stop every process of the node from
// starting.
//
// # Several processes, one data directory
//
// Processes of one city share the database and the data directory. seq is
// UNIQUE, so when two processes race to create the first key (or to rotate)
// exactly one insert wins; the loser deletes its file and reloads. Refresh
// re-reads the registry and loads key files this process has not loaded yet;
// RefreshLoop runs it periodically (every RefreshEvery). A process that
// finds a key in the registry whose file is missing reports it: processes
// sharing a database must share the data directory.
package keys

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/secretfile"
	"github.com/yikatong/yikatong/internal/store"
)

// RetireGrace is how long a rotated-out key keeps verifying: one code
// lifetime plus 60 s for clock skew and for peer processes to refresh.
const RetireGrace = ecode.CodeLifetime + 60*time.Second

// RefreshEvery is the recommended RefreshLoop interval; it must stay well
// under the 60 s margin in RetireGrace.
const RefreshEvery = 15 * time.Second

// Manager holds this process's view of the node's keys. It is safe for
// concurrent use.
type Manager struct {
	dir string
	db  *store.DB
	alg ecode.Alg

	// now is the clock that decides which issuer key signs (time.Now;
	// tests and simulations set another with SetClock).
	now func() time.Time

	mu      sync.RWMutex
	issuers []issuerKey // keys not retired at the last Refresh, by seq
	node    ecode.Signer

	// openDirMode is the mode of a keys directory that others may enter
	// and that could not be made private (read-only file system); zero
	// when the directory is private.
	openDirMode os.FileMode
}

// Open loads (or, on first start, creates) the node key and the current
// issuer key. alg is the algorithm of newly created issuer keys (AlgSM2 by
// default; an existing key of another algorithm stays current until Rotate).
func Open(ctx context.Context, dataDir string, db *store.DB, alg ecode.Alg) (*Manager, error) {
	if alg == 0 {
		alg = ecode.AlgSM2
	}
	if alg != ecode.AlgSM2 && alg != ecode.AlgEdDSA {
		return nil, fmt.Errorf("keys: unsupported algorithm %v", alg)
	}
	dir := filepath.Join(dataDir, "keys")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("keys: creating %s: %w", dir, err)
	}
	// Only the node's user may list the keys. A directory already so is
	// left alone (it may be a read-only mount of the city's secrets,
	// docs/deploy.md); one on a read-only file system cannot be changed,
	// and nobody can write keys into it either.
	// Such a directory that others may enter must then hold only key files
	// that others cannot read (readKeyFile), as the vault refuses such a
	// master key.
	m := &Manager{dir: dir, db: db, alg: alg, now: time.Now}
	if fi, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	} else if fi.Mode().Perm()&0o077 != 0 {
		if err := chmod(dir, 0o700); err != nil && !errors.Is(err, syscall.EROFS) {
			return nil, fmt.Errorf("keys: %w", err)
		} else if err != nil {
			m.openDirMode = fi.Mode().Perm()
		}
	}
	secretfile.RemoveStaleTemps(dir, tempPattern, oldTempPattern)
	if err := m.ensureNodeKey(ctx); err != nil {
		return nil, err
	}
	if err := m.Refresh(ctx); err != nil {
		return nil, err
	}
	if m.Current() == nil {
		// Another process starting at the same time may win the race to
		// create the first key (errLostRace): then we load its key.
		if _, _, err := m.createIssuerKey(ctx, true, 0); err != nil && !errors.Is(err, errLostRace) {
			return nil, err
		}
		if err := m.Refresh(ctx); err != nil {
			return nil, err
		}
	}
	if m.Current() == nil {
		return nil, errors.New("keys: no active issuer key after creating one")
	}
	return m, nil
}

// issuerKey is one issuer key this process has loaded: a key not retired
// (or retired only in the future) at the last Refresh.
type issuerKey struct {
	kid        string
	seq        int64
	activeFrom time.Time // signs from this instant on
	retiredAt  time.Time // and stops at this one; zero: not retired
	signer     ecode.Signer
}

// SetClock replaces the clock that decides which issuer key signs and as
// of when PublicKeys answers (time.Now by default). For tests and
// simulations; call it before the Manager is shared.
func (m *Manager) SetClock(now func() time.Time) {
	if now == nil {
		now = time.Now
	}
	m.mu.Lock()
	m.now = now
	m.mu.Unlock()
}

func (m *Manager) clock() time.Time {
	m.mu.RLock()
	now := m.now
	m.mu.RUnlock()
	return now()
}

// Current returns the issuer key that signs new codes now: of the keys
// loaded at the last Refresh, the one of highest seq whose activation time
// has come and whose retirement has not. A key announced by a rotation thus
// becomes current at its activation time in every process that has
// refreshed since the rotation was registered.
func (m *Manager) Current() ecode.Signer {
	now := m.clock()
	m.mu.RLock()
	defer m.mu.RUnlock()
	return currentAt(m.issuers, now)
}

func currentAt(ks []issuerKey, now time.Time) ecode.Signer {
	for i := len(ks) - 1; i >= 0; i-- {
		k := ks[i]
		if !k.activeFrom.After(now) && (k.retiredAt.IsZero() || k.retiredAt.After(now)) {
			return k.signer
		}
	}
	// No key is in force by the clock (a clock set back before a key's
	// activation, or a process that has not refreshed since its key was
	// retired): sign with the newest key already active, as before
	// pre-announced rotation, rather than with none.
	for i := len(ks) - 1; i >= 0; i-- {
		if !ks[i].activeFrom.After(now) {
			return ks[i].signer
		}
	}
	if len(ks) > 0 {
		return ks[0].signer
	}
	return nil
}

// Pending returns the kid and activation time of an announced issuer key
// that does not sign yet (as of the last Refresh and the clock); ok is
// false when no rotation is pending.
func (m *Manager) Pending() (kid string, activeFrom time.Time, ok bool) {
	now := m.clock()
	m.mu.RLock()
	defer m.mu.RUnlock()
	for i, k := range m.issuers {
		// (the first key, with no predecessor, is never pending)
		if i > 0 && k.activeFrom.After(now) && k.retiredAt.IsZero() {
			return k.kid, k.activeFrom, true
		}
	}
	return "", time.Time{}, false
}

// NodeSigner returns the node key (SM2) that signs trust bundles.
func (m *Manager) NodeSigner() ecode.Signer {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.node
}

// PublicKeys returns every issuer key that may verify now or soon: active,
// announced by a pending rotation (it signs from its activation time), or
// retired with not_after in the future; oldest first, with NotAfter set on
// retired keys and on keys retiring at a pending rotation's activation.
func (m *Manager) PublicKeys(ctx context.Context) ([]ecode.PublicKey, error) {
	return m.PublicKeysAt(ctx, m.clock())
}

// PublicKeysAt is PublicKeys as of at.
func (m *Manager) PublicKeysAt(ctx context.Context, at time.Time) ([]ecode.PublicKey, error) {
	rows, err := m.db.R.QueryContext(ctx,
		`SELECT kid, alg, public_key, not_after FROM issuer_keys WHERE not_after IS NULL OR not_after > $1 ORDER BY seq`,
		at.UnixMilli())
	if err != nil {
		return nil, fmt.Errorf("keys: listing issuer keys: %w", err)
	}
	defer rows.Close()
	var out []ecode.PublicKey
	for rows.Next() {
		var kid, algName string
		var pub []byte
		var notAfter sql.NullInt64
		if err := rows.Scan(&kid, &algName, &pub, &notAfter); err != nil {
			return nil, err
		}
		k, err := parseRegistryKey(kid, algName, pub)
		if err != nil {
			return nil, err
		}
		if notAfter.Valid {
			k.NotAfter = time.UnixMilli(notAfter.Int64).UTC()
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// parseRegistryKey checks and parses one issuer_keys row: its algorithm,
// its public key, and that the key's kid is the row's.
func parseRegistryKey(kid, algName string, pub []byte) (ecode.PublicKey, error) {
	alg, err := ecode.ParseAlg(algName)
	if err != nil {
		return ecode.PublicKey{}, fmt.Errorf("keys: key %s: %w", kid, err)
	}
	k, err := ecode.ParsePublicKey(alg, pub)
	if err != nil || k.KidString() != kid {
		return ecode.PublicKey{}, fmt.Errorf("keys: registry entry %s does not hold a valid key", kid)
	}
	return k, nil
}

// DefaultAnnounce is how long `yikatong keys rotate` publishes a new
// issuer key before it signs: several terminal bundle refreshes.
const DefaultAnnounce = 15 * time.Minute

// ErrRotationPending is RotateAnnounced's answer while an announced key
// has not reached its activation time: one rotation at a time (a rotation
// at once, announce 0, still replaces it).
var ErrRotationPending = errors.New("keys: a rotation is already pending")

// Rotate creates a new issuer key, makes it current at once and retires the
// old one (it keeps verifying until now + RetireGrace). It returns the new
// kid. It is RotateAnnounced with announce 0: terminals holding a bundle
// from before the rotation refuse codes of the new key (unknown_key) until
// they refresh it; use it for a compromised key.
func (m *Manager) Rotate(ctx context.Context) (string, error) {
	kid, _, err := m.RotateAnnounced(ctx, 0)
	return kid, err
}

// RotateAnnounced creates a new issuer key that signs from now + announce
// (its activation time, returned) and is published in PublicKeys at once,
// so terminals learn it ahead; the current key keeps signing until the
// activation time, is retired then and keeps verifying for RetireGrace
// after it. Every process that refreshes before the activation time
// switches at it. While an announced rotation is pending, another with
// announce > 0 fails with ErrRotationPending (naming the pending key and
// its activation time); one with announce 0 withdraws the pending key and
// switches at once.
func (m *Manager) RotateAnnounced(ctx context.Context, announce time.Duration) (string, time.Time, error) {
	if announce < 0 {
		return "", time.Time{}, fmt.Errorf("keys: negative announce period %v", announce)
	}
	var kid string
	var at time.Time
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		kid, at, err = m.createIssuerKey(ctx, false, announce)
		if !errors.Is(err, errLostRace) {
			break
		}
	}
	if err != nil {
		return "", time.Time{}, err
	}
	if err := m.Refresh(ctx); err != nil {
		return "", time.Time{}, err
	}
	return kid, at.UTC(), nil
}

// RefreshLoop calls Refresh every interval until ctx ends; errors are
// logged and the previous keys stay in use.
func (m *Manager) RefreshLoop(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = RefreshEvery
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := m.Refresh(ctx); err != nil && ctx.Err() == nil {
				slog.WarnContext(ctx, "refreshing signing keys", "err", err)
			}
		}
	}
}

// Refresh re-reads the key registry: it loads every key not retired as of
// now (the current key, a key announced by a pending rotation, and the key
// that pending rotation retires at its activation time). A key rotated in
// by another process becomes current here at its activation time, and a
// retired key stops signing.
func (m *Manager) Refresh(ctx context.Context) error {
	now := m.clock()
	rows, err := m.db.R.QueryContext(ctx,
		`SELECT kid, seq, COALESCE(active_from, created_at), retired_at FROM issuer_keys WHERE retired_at IS NULL OR retired_at > $1 ORDER BY seq`,
		now.UnixMilli())
	if err != nil {
		return fmt.Errorf("keys: reading issuer keys: %w", err)
	}
	var ks []issuerKey
	for rows.Next() {
		var k issuerKey
		var from int64
		var retired sql.NullInt64
		if err := rows.Scan(&k.kid, &k.seq, &from, &retired); err != nil {
			rows.Close()
			return err
		}
		k.activeFrom = time.UnixMilli(from)
		if retired.Valid {
			k.retiredAt = time.UnixMilli(retired.Int64)
		}
		ks = append(ks, k)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	m.mu.RLock()
	have := make(map[string]ecode.Signer, len(m.issuers))
	for _, k := range m.issuers {
		have[k.kid] = k.signer
	}
	m.mu.RUnlock()
	loaded := ks[:0]
	for _, k := range ks {
		if s := have[k.kid]; s != nil {
			k.signer = s
			loaded = append(loaded, k)
			continue
		}
		if k.signer, err = m.loadIssuerKey(k.kid); err != nil {
			if errors.Is(err, os.ErrNotExist) && k.activeFrom.After(now) {
				// An announced key whose file has not reached this
				// process yet (a read-only secrets mount updated after
				// the rotation): it signs nothing before its activation
				// time, so go on without it and look again at the next
				// Refresh. Missing at its activation time, it is an error.
				slog.WarnContext(ctx, "the announced issuer key's file is not here yet", "kid", k.kid, "active_from", k.activeFrom.UTC(), "path", m.issuerPath(k.kid))
				continue
			}
			return err
		}
		loaded = append(loaded, k)
	}
	ks = loaded
	m.mu.Lock()
	defer m.mu.Unlock()
	m.issuers = ks
	return nil
}

func (m *Manager) issuerPath(kid string) string {
	return filepath.Join(m.dir, "issuer-"+kid+".key")
}

func (m *Manager) loadIssuerKey(kid string) (ecode.Signer, error) {
	s, err := m.readKeyFile(m.issuerPath(kid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("keys: issuer key %s is registered in the database but %s is missing: processes sharing a database must share the data directory (%w)", kid, m.issuerPath(kid), os.ErrNotExist)
		}
		return nil, err
	}
	if s.Public().KidString() != kid {
		return nil, fmt.Errorf("keys: %s does not hold key %s", m.issuerPath(kid), kid)
	}
	return s, nil
}

// Seams for tests: the directory chmod, the registration transaction, and
// a look at each temporary key file before it is linked into place.
var (
	chmod           = os.Chmod
	registerTx      = func(ctx context.Context, db *store.DB, fn func(*sql.Tx) error) error { return db.Tx(ctx, fn) }
	testHookKeyTemp func(tmp string)
)

var errLostRace = errors.New("keys: another process created the key first")

// createIssuerKey writes a new key file and registers it. With first set it
// registers only into an empty registry; otherwise it becomes seq max+1,
// signs from now + announce (the returned activation time) and retires the
// key it replaces then. errLostRace means another process won.
func (m *Manager) createIssuerKey(ctx context.Context, first bool, announce time.Duration) (string, time.Time, error) {
	now := m.clock()
	at := time.UnixMilli(now.Add(announce).UnixMilli()) // as the registry holds it
	if !first {
		// Refuse early, before writing a key file.
		if err := m.checkNoPending(ctx, m.db.R, now, announce); err != nil {
			return "", time.Time{}, err
		}
	}
	s, err := ecode.Generate(m.alg)
	if err != nil {
		return "", time.Time{}, err
	}
	pemBytes, err := ecode.MarshalPrivateKey(s)
	if err != nil {
		return "", time.Time{}, err
	}
	pub := s.Public()
	kid := pub.KidString()
	path := m.issuerPath(kid)
	if err := writeKeyFile(path, pemBytes); err != nil {
		return "", time.Time{}, err
	}
	nowMs, atMs := now.UnixMilli(), at.UnixMilli()
	err = registerTx(ctx, m.db, func(tx *sql.Tx) error {
		var maxSeq int64
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM issuer_keys`).Scan(&maxSeq); err != nil {
			return err
		}
		if first && maxSeq != 0 {
			return errLostRace
		}
		if !first {
			if err := m.checkNoPending(ctx, tx, now, announce); err != nil {
				return err
			}
			// A rotation at once withdraws a pending key: it never
			// signed, so it leaves PublicKeys now.
			if _, err := tx.ExecContext(ctx,
				`UPDATE issuer_keys SET retired_at = $1, not_after = $1 WHERE retired_at IS NULL AND COALESCE(active_from, created_at) > $1`,
				nowMs); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO issuer_keys(kid, seq, alg, public_key, created_at, active_from) VALUES ($1, $2, $3, $4, $5, $6)`,
			kid, maxSeq+1, pub.Alg.String(), pub.Bytes(), nowMs, atMs); err != nil {
			return err
		}
		// The key in force (and, after a withdrawal, the one whose
		// retirement was pending) retires at the new key's activation.
		_, err := tx.ExecContext(ctx,
			`UPDATE issuer_keys SET retired_at = $1, not_after = $2 WHERE (retired_at IS NULL OR retired_at > $1) AND kid <> $3`,
			atMs, at.Add(RetireGrace).UnixMilli(), kid)
		return err
	})
	if err != nil {
		if errors.Is(err, errLostRace) || errors.Is(err, ErrRotationPending) || store.IsUniqueViolation(err) {
			// Rolled back: nothing names the file.
			os.Remove(path)
			if errors.Is(err, ErrRotationPending) {
				return "", time.Time{}, err
			}
			return "", time.Time{}, errLostRace
		}
		// The transaction may have committed although the commit reported
		// an error (a connection lost during COMMIT, ctx cancelled at that
		// instant). Then the registry names the key, and deleting its file
		// would leave no process able to start: remove it only when the
		// registry is known not to hold it. An orphan key file is
		// harmless; a registered key without its file is not.
		switch registered, rerr := m.registered(ctx, kid); {
		case rerr == nil && registered:
			return kid, at, nil
		case rerr == nil:
			os.Remove(path)
		}
		return "", time.Time{}, fmt.Errorf("keys: registering issuer key: %w", err)
	}
	return kid, at, nil
}

type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// checkNoPending fails with ErrRotationPending when an announced key has
// not reached its activation time and announce is not zero.
func (m *Manager) checkNoPending(ctx context.Context, q queryer, now time.Time, announce time.Duration) error {
	if announce == 0 {
		return nil
	}
	var kid string
	var from int64
	err := q.QueryRowContext(ctx,
		`SELECT kid, COALESCE(active_from, created_at) FROM issuer_keys WHERE retired_at IS NULL AND COALESCE(active_from, created_at) > $1
		   AND seq > (SELECT MIN(seq) FROM issuer_keys WHERE retired_at IS NULL OR retired_at > $1) ORDER BY seq DESC LIMIT 1`,
		now.UnixMilli()).Scan(&kid, &from)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("keys: reading issuer keys: %w", err)
	}
	return fmt.Errorf("%w: key %s becomes current at %s; rotate again after that, or with an announce period of 0 to replace it and switch at once (a compromised key)",
		ErrRotationPending, kid, time.UnixMilli(from).UTC().Format(time.RFC3339))
}

// registered reports whether the registry holds kid, even when ctx has
// just been cancelled.
func (m *Manager) registered(ctx context.Context, kid string) (bool, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	var n int
	err := m.db.W.QueryRowContext(ctx, `SELECT COUNT(*) FROM issuer_keys WHERE kid = $1`, kid).Scan(&n)
	return n > 0, err
}

const nodePurpose = "node"

// ensureNodeKey loads DATA/keys/node.key, creating it on first start, and
// makes sure the database records the same public key.
func (m *Manager) ensureNodeKey(ctx context.Context) error {
	path := filepath.Join(m.dir, "node.key")
	s, err := m.nodeKeyFile(ctx, path)
	if err != nil {
		return err
	}
	pub := s.Public()
	kid := pub.KidString()
	for attempt := 0; attempt < 2; attempt++ {
		var dbKid string
		err := m.db.R.QueryRowContext(ctx, `SELECT kid FROM node_keys WHERE purpose = $1`, nodePurpose).Scan(&dbKid)
		if err == nil {
			if dbKid != kid {
				return fmt.Errorf("keys: %s holds node key %s but the database records %s: processes sharing a database must share the data directory", path, kid, dbKid)
			}
			m.node = s
			return nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("keys: reading node key: %w", err)
		}
		_, err = m.db.W.ExecContext(ctx,
			`INSERT INTO node_keys(purpose, kid, alg, public_key, created_at) VALUES ($1, $2, $3, $4, $5)`,
			nodePurpose, kid, pub.Alg.String(), pub.Bytes(), time.Now().UnixMilli())
		if err != nil && !store.IsUniqueViolation(err) {
			return fmt.Errorf("keys: registering node key: %w", err)
		}
	}
	return errors.New("keys: could not register the node key")
}

// nodeKeyFile reads node.key, creating it when neither it nor a database
// record exists. Creation is race-safe: the file is hard-linked into place
// (never replaced) and only then registered.
func (m *Manager) nodeKeyFile(ctx context.Context, path string) (ecode.Signer, error) {
	s, err := m.readKeyFile(path)
	if !errors.Is(err, os.ErrNotExist) {
		return s, err
	}
	var dbKid string
	qerr := m.db.R.QueryRowContext(ctx, `SELECT kid FROM node_keys WHERE purpose = $1`, nodePurpose).Scan(&dbKid)
	if qerr == nil {
		// A process sharing our directory may have placed and registered
		// the key since we looked.
		if s, err := m.readKeyFile(path); err == nil {
			return s, nil
		}
		return nil, fmt.Errorf("keys: the database records node key %s but %s is missing: processes sharing a database must share the data directory", dbKid, path)
	}
	if !errors.Is(qerr, sql.ErrNoRows) {
		return nil, fmt.Errorf("keys: reading node key: %w", qerr)
	}
	gen, err := ecode.GenerateSM2()
	if err != nil {
		return nil, err
	}
	pemBytes, err := ecode.MarshalPrivateKey(gen)
	if err != nil {
		return nil, err
	}
	switch err := writeKeyFile(path, pemBytes); {
	case err == nil:
		return gen, nil
	case errors.Is(err, os.ErrExist): // another process was quicker
		return m.readKeyFile(path)
	default:
		return nil, err
	}
}

// NodePublicKey returns the public part of the node key (what terminals pin).
func (m *Manager) NodePublicKey() ecode.PublicKey { return m.NodeSigner().Public() }

// readKeyFile reads a private key file. In a keys directory others may
// enter (openDirMode) it refuses a file that others may read.
func (m *Manager) readKeyFile(path string) (ecode.Signer, error) {
	if m.openDirMode != 0 {
		st, err := os.Stat(path)
		if err != nil {
			return nil, err
		}
		if perm := st.Mode().Perm(); perm&0o077 != 0 {
			return nil, fmt.Errorf("keys: %s is accessible by other users (mode %v) in a directory they may enter (%s, mode %v, on a read-only file system): make the key files mode 0400 or 0600 (for a mounted secret, its defaultMode)", path, perm, m.dir, m.openDirMode)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseKeyFile(path, b)
}

// parseKeyFile parses the contents of a private key file; the error names
// the file, never its contents.
func parseKeyFile(path string, b []byte) (ecode.Signer, error) {
	s, err := ecode.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("keys: %s: %w", path, err)
	}
	return s, nil
}

// tempPath is where writeKeyFile writes path's contents first: a hidden
// name ending in ".tmp", never in ".key", so that a copy a crash leaves
// behind is neither taken for a key nor put in the ordinary (not the
// secrets) backup archive: `yikatong backup` skips "*.tmp" files. Versions
// before this one used path + ".tmp-" + hex (oldTempPattern).
func tempPath(path, rnd string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+"."+rnd+".tmp")
}

const (
	tempPattern    = ".*.key.*.tmp"
	oldTempPattern = "*.key.tmp-*"
)

// writeKeyFile writes data to path with mode 0600 without ever exposing a
// partial file or replacing an existing one (os.ErrExist).
func writeKeyFile(path string, data []byte) error {
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := tempPath(path, hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("keys: writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("keys: syncing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if testHookKeyTemp != nil {
		testHookKeyTemp(tmp)
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return err
		}
		return fmt.Errorf("keys: placing %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
