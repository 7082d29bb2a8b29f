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
	a := &s.announce
	a.Lock()
	if a.running {
		a.again = true
		a.Unlock()
		return
	}
	a.running = true
	a.Unlock()
	go func() {
		for {
			s.announceRound()
			a.Lock()
			if !a.again {
				a.running = false
				a.Unlock()
				return
			}
			a.again = false
			a.Unlock()
		}
	}()
}

func (s *Service) announceRound() {
	l := s.Members()
	if l == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), announceTimeout)
	defer cancel()
	notice := bundleNotice{ChangedAt: s.Now().UTC()}
	var wg sync.WaitGroup
	for _, m := range l.Members {
		if m.City == s.City {
			continue
		}
		wg.Add(1)
		go func(m Member) {
			defer wg.Done()
			var ack struct{}
			if err := s.call(ctx, m, KindBundle, notice, &ack); err != nil {
				// The peer's next poll brings it the bundle.
				s.Log.Info("federation: telling a peer our bundle changed", "peer", m.City, "err", err)
			}
		}(m)
	}
	wg.Wait()
}

// HandleBundle takes a member's notice that its bundle changed and fetches
// that bundle (in the background); the answer only acknowledges.
func (s *Service) HandleBundle(ctx context.Context, data []byte) ([]byte, error) {
	env, err := Open(data, s.City, KindBundle, s.Members(), s.Now())
	if err != nil {
		return nil, err
	}
	var n bundleNotice
	if err := strictJSON(env.Body, &n); err != nil {
		return nil, err
	}
	s.fetchSoon(env.From)
	return Seal(s.City, env.From, KindAnswer, s.Now(), struct{}{}, s.Node())
}

// fetchSoon fetches city's bundle now, or once more after the fetch of it
// in flight.
func (s *Service) fetchSoon(city string) {
	f := &s.fetching
	f.Lock()
	if again, ok := f.m[city]; ok {
		*again = true
		f.Unlock()
		return
	}
	if f.m == nil {
		f.m = map[string]*bool{}
	}
	again := new(bool)
	f.m[city] = again
	f.Unlock()
	go func() {
		for {
			s.fetchPeer(city)
			f.Lock()
			if !*again {
				delete(f.m, city)
				f.Unlock()
				return
			}
			*again = false
			f.Unlock()
		}
	}()
}

func (s *Service) fetchPeer(city string) {
	l := s.Members()
	if l == nil {
		return
	}
	for _, m := range l.Members {
		if m.City != city {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), announceTimeout)
		defer cancel()
		if s.fetchBundle(ctx, l, m) {
			s.Log.Info("federation: a peer's trust bundle changed", "peer", city)
			s.changed()
		}
		return
	}
}
