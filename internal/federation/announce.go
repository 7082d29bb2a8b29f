package federation

import (
	"context"
	"sync"
	"time"
)

// Announcing a changed trust bundle.
//
// Every node polls every member's bundle once per refresh interval, so a
// key rotation or a card put on the deny list reached a peer only at its
// next poll: up to a whole interval plus the fetch (the 41-city simulation
// measured 1.85–2.07 s with a 2 s interval, so "within one interval" held
// only by luck). Now a node whose own keys or deny list change also tells
// every member at once, with a signed "bundle" envelope, and a member that
// receives one fetches that peer's bundle immediately.
//
// The notice carries nothing to trust. The receiver fetches the bundle
// from the member's address in the signed member list and verifies it as
// on every poll, so a lost, late, replayed or repeated notice costs at
// most one more fetch, and polling stays the fallback (a node down while
// a peer rotated catches up at its next poll). Notices are coalesced on
// both sides: one round of notices in flight per node (a change during a
// round sends one more round after it), and one fetch in flight per peer
// (notices during a fetch cause one more fetch after it).

// KindBundle: "my trust bundle changed; fetch it". Answered with {}.
const KindBundle = "bundle"

type bundleNotice struct {
	ChangedAt time.Time `json:"changed_at"`
}

// announceTimeout bounds one round of notices.
const announceTimeout = 5 * time.Second

// Announce tells every member, in the background, that this node's trust
// bundle changed (an issuer key rotated, a card's status changed). The
// caller has already made the node serve the new bundle.
func (s *Service) Announce() {
	if !s.cfg.Enabled() {
		return
	}
	s.reruns.do("announce", s.announceRound)
}

func (s *Service) announceRound() {
	ctx, cancel := context.WithTimeout(context.Background(), announceTimeout)
	defer cancel()
	notice := bundleNotice{ChangedAt: s.Now().UTC()}
	s.eachPeer(s.Members(), func(m Member) {
		var ack struct{}
		if err := s.call(ctx, m, KindBundle, notice, &ack); err != nil {
			// The peer's next poll brings it the bundle.
			s.Log.Info("federation: telling a peer our bundle changed", "peer", m.City, "err", err)
		}
	})
}

// HandleBundle takes a member's notice that its bundle changed and fetches
// that bundle (in the background); the answer only acknowledges.
func (s *Service) HandleBundle(ctx context.Context, data []byte) ([]byte, error) {
	env, _, err := openRequest[bundleNotice](s, data, KindBundle) // the body is checked, not used
	if err != nil {
		return nil, err
	}
	city := env.From
	s.reruns.do("fetch "+city, func() { s.fetchPeer(city) })
	return Seal(s.City, env.From, KindAnswer, s.Now(), struct{}{}, s.Node())
}

func (s *Service) fetchPeer(city string) {
	l := s.Members()
	m, _, ok := l.Member(city)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), announceTimeout)
	defer cancel()
	if s.fetchBundle(ctx, l, m) {
		s.Log.Info("federation: a peer's trust bundle changed", "peer", city)
		s.changed()
	}
}

// reruns runs a job in the background, at most one per key at a time; a
// job asked for while it runs runs once more after it (so the change that
// asked is seen), however often it was asked meanwhile.
type reruns struct {
	mu sync.Mutex
	m  map[string]*bool // key → run again after the run in flight
}

func (r *reruns) do(key string, job func()) {
	r.mu.Lock()
	if again, ok := r.m[key]; ok {
		*again = true
		r.mu.Unlock()
		return
	}
	if r.m == nil {
		r.m = map[string]*bool{}
	}
	again := new(bool)
	r.m[key] = again
	r.mu.Unlock()
	go func() {
		for {
			job()
			r.mu.Lock()
			if !*again {
				delete(r.m, key)
				r.mu.Unlock()
				return
			}
			*again = false
			r.mu.Unlock()
		}
	}()
}
