// Package federation lets the city nodes of a region trust each other's
// codes and clear money between them (长三角一体化: 一码通行, 同城待遇).
//
// # Trust: one region anchor, no per-pair configuration
//
// A region anchor key (SM2, made by `yikatong region keygen` or `region
// up`) signs the region's member list: each member city's id, base URL and
// node public key, with an expiry (MemberList, SignMembers). Every node is
// given only the anchor's public key and where to read the list (a file or
// a URL). On a schedule it re-reads the list — refusing one not signed by
// the anchor, expired, or altered (bad_member_list), and keeping the last
// good one — and fetches each member's trust bundle, checking the bundle's
// signature against the node key the list gives for that member. The
// peers' issuer keys and deny lists, each with its own expiry (the earlier
// of the peer's bundle and the member list), go into this node's own
// /v1/trust. A new member, a rotated issuer key or a lost card therefore
// reaches every node within one refresh; a member dropped from the list
// stops being trusted at the next refresh, both for its codes and for its
// messages.
//
// # Messages
//
// Node-to-node requests are Envelopes signed with the sender's node key
// (JCS-canonical JSON, like the trust bundle) and checked against the
// member list: a sender not in the list is unknown_peer, a bad signature
// bad_signature, a time more than MaxSkew from the receiver's clock
// clock_skew. Every clearing message carries an id that is its idempotency
// key on both sides (the ledger keys derive from it), so replays and
// retries are applied exactly once.
//
// # Charges across cities
//
// When a terminal in city B scans a code of city A for a charge, B asks A
// online (mode "online"): A debits its resident's wallet (or medical
// account first, for medical settlements) and credits its clearing account
// for B, and answers, signed. B then books the fare from its clearing
// account for A to the provider's receivable. The message id derives from
// the code's one-use nonce, so a retried scan asks A again with the same id
// and A answers the same. If A does not answer within AuthTimeout and the
// scenario allows offline acceptance, B accepts under a per-card risk limit
// (the sum of that card's charges A has not yet confirmed) and queues the
// charge in the outbox (mode "guaranteed": A must book it, from the wallet
// or, if the wallet is short, from its ride-first-pay-later credit account
// ext:fed_credit, since B accepted within the limit A's region agreed to).
// Otherwise B declines (home_unreachable) and queues a "void" so that a
// charge A may have applied after the timeout is reversed.
//
// Equal treatment (同城待遇): B prices the fare with its own scenario rules
// (concessions by category and flags) from the claims in A's code; only
// the code's claims and the opaque card token are used at B — no name or
// ID number of A's resident ever leaves A.
//
// Physical cards: a card number starts with its issuing city's region code
// (resident.CardRegion), so B resolves a number it does not know to a
// member (CardIssuer), checks the number's hash against the member's deny
// list (Admit) and asks it to charge "card:<number>". A card carries no
// claims: B prices it for an adult and offers the lower fares its scenario
// gives other claims; A charges the one its resident's category and flags
// match and answers those claims (never the birth date). Offline batch
// records of other cities' codes and cards take the same path, judged at
// home as of the scan (Charge.ScanAt). See docs/federation.md.
//
// # Clearing, reconciliation, settlement
//
// The outbox is the fed_messages table (direction "out", state pending or
// voiding), retried with backoff until the peer acknowledges (up to
// InFlight batches in flight per peer); the inbox is the same table
// (direction "in"). An inbox row commits in the same transaction as the
// money it moves (it rides in the ledger's batch: ledger.Attach), and a
// void marks the row voided before reversing whatever the message's ledger
// keys moved, so a void racing a slow booking never leaves the resident
// charged (inbox.go). A batch's new guaranteed charges are applied in bulk
// (bulk.go). Reconcile asks the peer for its list of
// messages with us and reports those only one side has or on which the
// sides disagree. Settle computes, per peer and day, the statement both
// sides must agree on (what each owes the other, message count, digest of
// the ids), signs it and has the peer countersign its own identical
// computation. A settled day is final: a new message dated on it is
// refused, and so is a void of a charge its statement counts (day_settled;
// the charge stays in that day on both sides). The sender then gives the
// money back in a refund (ModeRefund), a message of its own dated the day
// it is made, so it counts in that day's statement and never changes a
// signed one (inbox.go: void, refund; messages.go: refundLater).
// Invariant across the region: A's clr:B balance is exactly −(B's clr:A
// balance) once the outboxes are empty.
package federation

import (
	"bytes"
	"context"
	"crypto/tls"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/trust"
)

// Defaults.
const (
	DefaultRefresh      = 30 * time.Second
	DefaultOutboxEvery  = 2 * time.Second
	DefaultAuthTimeout  = 800 * time.Millisecond
	DefaultRiskLimitFen = 5000 // 50 yuan per card not yet confirmed by its home city
	MaxBackoff          = 30 * time.Second
	// FedCreditAccount is the home city's ride-first-pay-later account for
	// guaranteed charges its resident's wallet cannot cover.
	FedCreditAccount = "ext:fed_credit"
	// FedLossAccount takes the charges this city accepted without the
	// home city (within the risk limit) that the home city then refused.
	FedLossAccount = "ext:fed_loss"
	// clearingFloor: clearing accounts are positions, not money held; they
	// may go as far negative as the region's trade requires.
	clearingFloor = -(int64(1) << 52)
)

// Config is how a node takes part in a region.
type Config struct {
	// Anchor is the region anchor's public key; zero disables federation.
	Anchor ecode.PublicKey
	// Members is the member list: a file path or an http(s) URL.
	Members string
	// Refresh is how often the list and the peers' bundles are re-read.
	Refresh time.Duration
	// OutboxEvery is how often the outbox is drained.
	OutboxEvery time.Duration
	// AuthTimeout bounds an online authorisation by the home city.
	AuthTimeout time.Duration
	// RiskLimitFen is the per-card limit of charges accepted without the
	// home city's answer and not yet confirmed by it.
	RiskLimitFen int64
	// MaxBackoff caps the outbox retry interval (default MaxBackoff).
	MaxBackoff time.Duration
	// BookingGrace is how long after an online authorisation its scan
	// must have been booked here; after it, an authorisation whose scan
	// was never booked is voided at the home city (default
	// DefaultBookingGrace).
	BookingGrace time.Duration
}

// DefaultBookingGrace: a terminal retries a failed scan within seconds,
// and a code is valid for a minute.
const DefaultBookingGrace = 10 * time.Minute

// Enabled reports whether the node is configured to federate.
func (c Config) Enabled() bool { return c.Anchor.Valid() && c.Members != "" }

// Deps are the node services the federation uses.
type Deps struct {
	DB        *store.DB
	Ledger    *ledger.Ledger
	Residents *resident.Service
	// Node returns the node key that signs envelopes and statements.
	Node func() ecode.Signer
	City string
	Now  func() time.Time
	Log  *slog.Logger
	// OnChange is called when the peers' trust data changes (the node
	// rebuilds its bundle).
	OnChange func()
	// HolderFlags are the concession flags a physical card's charge is
	// answered with for a resident at an instant: the age flags its
	// e-codes carry (node.AgeFlags; other cities price cards only for
	// those, see scan's remoteFlagSets). Nil: no flags.
	HolderFlags func(r resident.Resident, at time.Time) []string
}

// Service is a node's federation. Safe for concurrent use.
type Service struct {
	Deps
	cfg    Config
	client *http.Client
	w      *writer
	inbox  *inbox // the bulk path's ledger.Attacher

	mu       sync.RWMutex
	members  *MemberList
	peers    map[string]*peerState
	lastErr  string
	lastLoad time.Time
	kick     chan struct{}
	// down: home cities that did not answer an online authorisation,
	// until when (offline batches skip asking them meanwhile).
	down map[string]time.Time
	// risk serialises each card's offline acceptances (by riskStripe).
	risk [riskStripes]sync.Mutex
	// voids serialises, per charge (by riskStripe of its id), the voids
	// and refunds of one charge at home (inbox.go: void, refund).
	voids [riskStripes]sync.Mutex
	// settled caches the days agreed with a peer ("peer|day" → true): a
	// day once countersigned stays so (unless its statement is withdrawn
	// because the books changed while it was being saved: withdraw).
	settled sync.Map

	// reruns coalesces the rounds of bundle notices and the fetches they
	// cause (announce.go).
	reruns    reruns
	peerFetch sync.Map // peer → *sync.Mutex held through a fetch of its bundle

	// hook, if set (tests only, export_test.go), is called at named stages
	// of applying a message ("before_ledger", "after_ledger", "booked",
	// "void_checked") and of countersigning a statement
	// ("statement_computed").
	hook func(ctx context.Context, stage, id string)
}

type peerState struct {
	bundle  *trust.Bundle
	raw     []byte
	checked bool // bundle's signature verified with the member's node key
	fetched time.Time
	// signalled is the bundle expiry at the last change signalled;
	// content the bundle's trustContent.
	signalled time.Time
	content   string
	err       string
}

// New returns the federation service; call Run to start its loops.
func New(ctx context.Context, d Deps, cfg Config) (*Service, error) {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.OutboxEvery <= 0 {
		cfg.OutboxEvery = DefaultOutboxEvery
	}
	if cfg.AuthTimeout <= 0 {
		cfg.AuthTimeout = DefaultAuthTimeout
	}
	if cfg.RiskLimitFen <= 0 {
		cfg.RiskLimitFen = DefaultRiskLimitFen
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = MaxBackoff
	}
	if cfg.BookingGrace <= 0 {
		cfg.BookingGrace = DefaultBookingGrace
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	s := &Service{Deps: d, cfg: cfg, client: &http.Client{Transport: tr, Timeout: 30 * time.Second},
		peers: map[string]*peerState{}, kick: make(chan struct{}, 1), w: newWriter(d.DB)}
	ib, err := newInbox(ctx, s)
	if err != nil {
		s.w.close()
		return nil, err
	}
	s.inbox = ib
	if _, err := d.Ledger.CreateAccount(ctx, ledger.Account{ID: FedLossAccount, Kind: ledger.KindExternal, Label: "cross-city charges refused by the home city"}); err != nil {
		return nil, err
	}
	if _, err := d.Ledger.CreateAccount(ctx, ledger.Account{ID: FedCreditAccount, Kind: ledger.KindExternal, Label: "cross-city ride first, pay later"}); err != nil {
		return nil, err
	}
	if cfg.Enabled() {
		if err := s.loadStoredBundles(ctx); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Close stops the group-commit writer (after Run has returned).
func (s *Service) Close() {
	s.w.close()
	s.inbox.close()
}

// Config returns the service's configuration.
func (s *Service) Config() Config { return s.cfg }

// Run refreshes the member list and peers' bundles and drains the outbox
// until ctx ends.
func (s *Service) Run(ctx context.Context) {
	if !s.cfg.Enabled() {
		return
	}
	go func() {
		s.Refresh(ctx)
		t := time.NewTicker(s.cfg.Refresh)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.Refresh(ctx)
			}
		}
	}()
	t := time.NewTicker(s.cfg.OutboxEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.kick:
		}
		if _, err := s.DrainOutbox(ctx); err != nil && ctx.Err() == nil {
			s.Log.Warn("federation outbox", "err", err)
		}
	}
}

// Kick asks the outbox loop to run now.
func (s *Service) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Members returns the current member list (nil before the first good one).
func (s *Service) Members() *MemberList {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.liveMembers()
}

// liveMembers is the member list in use, or nil once it has expired: the
// anchor removes a member by letting a list that names it run out, so an
// expired list must stop counting even if no newer one can be fetched.
// Callers hold s.mu.
func (s *Service) liveMembers() *MemberList {
	if s.members == nil || !s.Now().Before(s.members.ExpiresAt) {
		return nil
	}
	return s.members
}

func (s *Service) readMembers(ctx context.Context) ([]byte, error) {
	src := s.cfg.Members
	if strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://") {
		return s.get(ctx, src, 5*time.Second)
	}
	return os.ReadFile(src)
}

func (s *Service) get(ctx context.Context, url string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	return b, nil
}

// Refresh re-reads the member list and fetches every member's bundle.
// Errors are logged and kept for Status; the last good data stays in use.
func (s *Service) Refresh(ctx context.Context) error {
	err := s.RefreshMembers(ctx)
	if err != nil {
		s.Log.Warn("federation: member list refused", "err", err)
	}
	s.FetchBundles(ctx)
	return err
}

// RefreshMembers reads and checks the member list. A list signed by
// another key, expired or older than the one in use is refused.
func (s *Service) RefreshMembers(ctx context.Context) error {
	data, err := s.readMembers(ctx)
	if err == nil {
		var l *MemberList
		if l, err = ParseMembers(data, s.cfg.Anchor, s.Now()); err == nil {
			// The newest version this city ever accepted, across restarts:
			// an older list (served by whoever answers the list's URL, or
			// left in the file) must not bring back a removed member.
			var seen string
			if e := s.DB.R.QueryRowContext(ctx, `SELECT value FROM node_settings WHERE name = 'fed_members_version'`).Scan(&seen); e != nil && !errors.Is(e, sql.ErrNoRows) {
				return unavailable(e)
			}
			s.mu.Lock()
			old := s.members
			switch {
			case old != nil && versionLess(l.Version, old.Version):
				err = badList("the member list (version "+l.Version+") is older than the one in use ("+old.Version+")", "成员列表版本低于当前版本")
			case seen != "" && versionLess(l.Version, seen):
				err = badList("the member list (version "+l.Version+") is older than one accepted before ("+seen+")", "成员列表版本低于此前已接受的版本")
			default:
				if seen != l.Version {
					// Recorded under the lock, before the list is used.
					if _, e := s.DB.W.ExecContext(ctx, `INSERT INTO node_settings(name, value) VALUES ('fed_members_version', $1)
						ON CONFLICT (name) DO UPDATE SET value = excluded.value`, l.Version); e != nil {
						s.mu.Unlock()
						return unavailable(e)
					}
				}
				s.members = l
				for city, ps := range s.peers {
					_, key, ok := l.Member(city)
					if !ok {
						delete(s.peers, city)
						continue
					}
					// A stored bundle (from before a restart) counts once it
					// verifies with the node key the list gives.
					if !ps.checked && ps.raw != nil {
						if b, e := trust.Parse(ps.raw, &key); e == nil && b.Issuer == city {
							ps.bundle, ps.checked = b, true
						}
					}
				}
			}
			s.lastLoad = s.Now()
			s.mu.Unlock()
			if err == nil {
				for _, m := range l.Members {
					if m.City == s.City {
						continue
					}
					if _, e := s.Ledger.CreateAccount(ctx, ledger.Account{ID: ledger.ClearingID(m.City), Kind: ledger.KindClearing, Floor: clearingFloor, Label: "clearing with " + m.City}); e != nil {
						err = e
					}
				}
				if old == nil || old.Version != l.Version {
					s.changed()
				}
			}
		}
	}
	s.mu.Lock()
	if err != nil {
		s.lastErr = err.Error()
	} else {
		s.lastErr = ""
	}
	s.mu.Unlock()
	return err
}

func versionLess(a, b string) bool {
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return a < b
}

func (s *Service) changed() {
	if s.OnChange != nil {
		s.OnChange()
	}
}

// FetchBundles fetches every member's trust bundle (concurrently) and keeps
// those whose signature verifies with the member's node key.
//
// Only a change of what this node takes from a peer's bundle — its keys
// and deny lists — counts as a change (OnChange, the stored copy). A
// bundle merely re-issued (new issued_at and signature) replaces the one
// in memory without a signal, except when its expiry has moved on by more
// than a quarter of its validity, so that the peer entries of this node's
// own bundle keep a fresh expiry. Otherwise every re-issue would make every
// peer re-issue its own bundle in turn, and a region would re-sign and
// re-store all its bundles at every refresh (41 cities: 1,640 fetches per
// interval, each one "changed"). The same bytes as last time are not
// parsed or verified again.
func (s *Service) FetchBundles(ctx context.Context) {
	l := s.Members()
	if l == nil {
		return
	}
	var changed atomic.Bool
	s.eachPeer(l, func(m Member) {
		if s.fetchBundle(ctx, l, m) {
			changed.Store(true)
		}
	})
	if changed.Load() {
		s.changed()
	}
}

// eachPeer runs f for every member of l but this node, concurrently, and
// waits for all.
func (s *Service) eachPeer(l *MemberList, f func(Member)) {
	if l == nil {
		return
	}
	var wg sync.WaitGroup
	for _, m := range l.Members {
		if m.City == s.City {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(m)
		}()
	}
	wg.Wait()
}

// fetchBundle fetches member m's bundle (l: the member list in use) and
// reports whether what this node takes from it changed.
func (s *Service) fetchBundle(ctx context.Context, l *MemberList, m Member) (changed bool) {
	// One fetch of a peer at a time (a poll and an announced fetch): one
	// that read the bundle from before a change never lands after one
	// that read the bundle from after it.
	v, _ := s.peerFetch.LoadOrStore(m.City, new(sync.Mutex))
	pm := v.(*sync.Mutex)
	pm.Lock()
	defer pm.Unlock()
	_, key, _ := l.Member(m.City)
	s.mu.RLock()
	var last []byte
	var content string
	var signalled time.Time
	if ps := s.peers[m.City]; ps != nil && ps.checked && ps.bundle != nil && ps.bundle.Signature != nil && ps.bundle.Signature.Kid == key.KidString() {
		last, content, signalled = ps.raw, ps.content, ps.signalled
	}
	s.mu.RUnlock()
	raw, err := s.get(ctx, m.TrustURL(), 5*time.Second)
	var b *trust.Bundle
	if err == nil && !bytes.Equal(raw, last) {
		// Re-issued with the same keys and deny lists (and an
		// expiry not far on): keep the verified bundle we hold,
		// without verifying this one.
		var h bundleHead
		if last == nil || json.Unmarshal(raw, &h) != nil || h.Issuer != m.City || content != trustContent(h.Keys, h.Deny) ||
			h.ExpiresAt.Sub(signalled) > h.ExpiresAt.Sub(h.IssuedAt)/4 {
			b, err = parseBundle(raw, m, key)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.members != l {
		return false // the list changed meanwhile; the next round fetches
	}
	ps := s.peers[m.City]
	if ps == nil {
		ps = &peerState{}
		s.peers[m.City] = ps
	}
	if err != nil {
		ps.err = err.Error()
		return false
	}
	ps.fetched, ps.err = s.Now(), ""
	if b == nil {
		return false // the same bytes as last time
	}
	if ps.bundle != nil && ps.checked && ps.bundle.Signature != nil && ps.bundle.Signature.Kid == key.KidString() &&
		b.IssuedAt.Before(ps.bundle.IssuedAt) {
		// Older than the bundle held (replayed to us on the way): keep
		// the newer. A peer whose clock went back is taken again once it
		// passes the time. A bundle held under a node key the list no
		// longer gives (replaced, perhaps because it leaked) does not
		// count: its issue time may be anything its holder chose.
		return false
	}
	c := trustContent(b.Keys, b.Deny)
	if ps.bundle == nil || !ps.checked || ps.content != c || b.ExpiresAt.Sub(ps.signalled) > b.ExpiresAt.Sub(b.IssuedAt)/4 {
		changed = true
		ps.signalled = b.ExpiresAt
		s.storeBundle(ctx, m.City, raw)
	}
	ps.bundle, ps.raw, ps.checked, ps.content = b, raw, true, c
	return changed
}

// trustContent is what this node takes from a peer's bundle: its keys and
// deny lists.
func trustContent(keys []trust.Key, deny trust.Deny) string {
	j, _ := json.Marshal(struct {
		K []trust.Key
		D trust.Deny
	}{keys, deny})
	return string(j)
}

// bundleHead is the part of a bundle compared before verifying it.
type bundleHead struct {
	Issuer    string      `json:"issuer"`
	IssuedAt  time.Time   `json:"issued_at"`
	ExpiresAt time.Time   `json:"expires_at"`
	Keys      []trust.Key `json:"keys"`
	Deny      trust.Deny  `json:"deny"`
}

func parseBundle(raw []byte, m Member, key ecode.PublicKey) (*trust.Bundle, error) {
	b, err := trust.Parse(raw, &key)
	if err != nil {
		return nil, err
	}
	if b.Issuer != m.City {
		return nil, fmt.Errorf("the bundle at %s is %s's, not %s's", m.TrustURL(), b.Issuer, m.City)
	}
	return b, nil
}

func (s *Service) storeBundle(ctx context.Context, city string, raw []byte) {
	_, err := s.DB.W.ExecContext(ctx, `INSERT INTO fed_peer_bundles(city, bundle, fetched_at) VALUES ($1, $2, $3)
		ON CONFLICT (city) DO UPDATE SET bundle = EXCLUDED.bundle, fetched_at = EXCLUDED.fetched_at`, city, raw, s.Now().UnixMilli())
	if err != nil {
		s.Log.Warn("federation: storing a peer bundle", "city", city, "err", err)
	}
}

// loadStoredBundles restores the last bundles (re-checked against the
// member list once it is loaded: until then they are not used).
func (s *Service) loadStoredBundles(ctx context.Context) error {
	rows, err := s.DB.R.QueryContext(ctx, `SELECT city, bundle FROM fed_peer_bundles`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var city string
		var raw []byte
		if err := rows.Scan(&city, &raw); err != nil {
			return err
		}
		if b, err := trust.Parse(raw, nil); err == nil && b.Issuer == city {
			s.peers[city] = &peerState{bundle: b, raw: raw}
		}
	}
	return rows.Err()
}

// trusted returns a peer's bundle if the peer is in the current member list
// and its bundle was signed by the node key the list gives for it.
func (s *Service) trusted(city string) (*trust.Bundle, time.Time, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	l := s.liveMembers()
	if l == nil || city == s.City {
		return nil, time.Time{}, false
	}
	_, key, ok := l.Member(city)
	ps := s.peers[city]
	if !ok || ps == nil || !ps.checked || ps.bundle == nil || ps.bundle.Signature == nil || ps.bundle.Signature.Kid != key.KidString() {
		return nil, time.Time{}, false
	}
	exp := ps.bundle.ExpiresAt
	if l.ExpiresAt.Before(exp) {
		exp = l.ExpiresAt
	}
	return ps.bundle, exp, true
}

func (s *Service) peerCities() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	l := s.liveMembers()
	if l == nil {
		return nil
	}
	var out []string
	for _, m := range l.Members {
		if m.City != s.City {
			out = append(out, m.City)
		}
	}
	return out
}

// PeerBundles returns the trusted peers' keys and deny lists for this
// node's own trust bundle (each with its own expiry).
func (s *Service) PeerBundles() []trust.PeerBundle {
	var out []trust.PeerBundle
	for _, city := range s.peerCities() {
		b, exp, ok := s.trusted(city)
		if !ok {
			continue
		}
		pb := trust.PeerBundle{Issuer: city, ExpiresAt: exp}
		for _, k := range b.Keys {
			pk, err := ecode.PublicKeyFromJWK(k.JWK)
			if err != nil {
				continue
			}
			if k.NotAfter != nil {
				pk.NotAfter = *k.NotAfter
			}
			pb.Keys = append(pb.Keys, pk)
		}
		for _, d := range b.Deny.Subjects {
			pb.Deny = append(pb.Deny, trust.Revocation{Subject: d.Subject, At: d.At})
		}
		for _, d := range b.Deny.Cards {
			pb.Deny = append(pb.Deny, trust.Revocation{CardHash: d.CardHash, At: d.At})
		}
		out = append(out, pb)
	}
	return out
}

// PeerKeys returns the trusted peers' issuer keys by city, for the online
// YK1 verifier. Keys of a peer whose data has expired are left out.
func (s *Service) PeerKeys() map[string][]ecode.PublicKey {
	now := s.Now()
	out := map[string][]ecode.PublicKey{}
	for _, pb := range s.PeerBundles() {
		if now.After(pb.ExpiresAt) {
			continue
		}
		out[pb.Issuer] = pb.Keys
	}
	return out
}

// CardRevoked reports whether a peer's physical card (by number) is on its
// deny list as of at. The list carries only each card number's hash
// (resident.CardNumberHash).
func (s *Service) CardRevoked(city, number string, at time.Time) bool {
	b, _, ok := s.trusted(city)
	if !ok {
		return false
	}
	h := resident.CardNumberHash(number)
	for _, d := range b.Deny.Cards {
		if d.CardHash == h && !d.At.After(at) {
			return true
		}
	}
	return false
}

// Revoked reports whether a peer's card token is on its deny list as of at.
func (s *Service) Revoked(city, subject string, at time.Time) bool {
	b, _, ok := s.trusted(city)
	if !ok {
		return false
	}
	for _, d := range b.Deny.Subjects {
		if d.Subject == subject && !d.At.After(at) {
			return true
		}
	}
	return false
}

// PeerStatus is one member as this node sees it.
type PeerStatus struct {
	City      string    `json:"city"`
	BaseURL   string    `json:"base_url"`
	NodeKid   string    `json:"node_kid"`
	Trusted   bool      `json:"trusted"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	Keys      int       `json:"keys"`
	FetchedAt time.Time `json:"fetched_at,omitzero"`
	Error     string    `json:"error,omitempty"`
}

// Status is the federation as this node sees it.
type Status struct {
	Enabled        bool         `json:"enabled"`
	City           string       `json:"city"`
	Region         string       `json:"region,omitempty"`
	MembersVersion string       `json:"members_version,omitempty"`
	MembersExpire  time.Time    `json:"members_expires_at,omitzero"`
	MembersLoaded  time.Time    `json:"members_loaded_at,omitzero"`
	Error          string       `json:"error,omitempty"`
	Peers          []PeerStatus `json:"peers"`
}

// Status reports the member list and every peer's trust state.
func (s *Service) Status() Status {
	st := Status{Enabled: s.cfg.Enabled(), City: s.City, Peers: []PeerStatus{}}
	s.mu.RLock()
	l := s.members
	st.Error, st.MembersLoaded = s.lastErr, s.lastLoad
	s.mu.RUnlock()
	if l == nil {
		return st
	}
	st.Region, st.MembersVersion, st.MembersExpire = l.Region, l.Version, l.ExpiresAt
	for _, m := range l.Members {
		if m.City == s.City {
			continue
		}
		_, key, _ := l.Member(m.City)
		ps := PeerStatus{City: m.City, BaseURL: m.BaseURL, NodeKid: key.KidString()}
		if b, exp, ok := s.trusted(m.City); ok {
			ps.Trusted, ps.ExpiresAt, ps.Keys = true, exp, len(b.Keys)
		}
		s.mu.RLock()
		if p := s.peers[m.City]; p != nil {
			ps.FetchedAt, ps.Error = p.fetched, p.err
		}
		s.mu.RUnlock()
		st.Peers = append(st.Peers, ps)
	}
	return st
}

var errNotMember = errors.New("not a member")

func (s *Service) member(city string) (Member, error) {
	m, _, ok := s.Members().Member(city)
	if !ok {
		return Member{}, errNotMember
	}
	return m, nil
}

func unavailable(err error) error { return apperr.Wrap(apperr.Unavailable, err) }
