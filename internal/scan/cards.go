package scan

import (
	"context"
	"sync"
	"time"

	"github.com/yikatong/yikatong/internal/resident"
)

// cardCache keeps cards read by number and by token, so a scan decides
// without a database read. A card's number, token and resident never
// change; its status does (lost, recovered, cancelled, replaced). The
// cached status is therefore only a first opinion: every scan row is
// written through the ledger's batch (rows.go), whose Claim re-reads the
// status of the batch's cards in one query, in the transaction that
// commits the scan, and refuses a scan decided on a stale status. The
// scan then forgets the card and decides again, so a card reported lost —
// in this process or any other sharing the database — is refused at once.
type cardCache struct {
	mu    sync.Mutex
	byNum map[string]cachedCard
	byTok map[string]string // token → number
}

type cachedCard struct {
	c     resident.Card
	until time.Time
}

const (
	cardTTL  = 10 * time.Minute
	maxCards = 500_000
)

func (cc *cardCache) get(number string, now time.Time) (resident.Card, bool) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	v, ok := cc.byNum[number]
	if !ok || now.After(v.until) {
		return resident.Card{}, false
	}
	return v.c, true
}

func (cc *cardCache) put(c resident.Card, now time.Time) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.byNum == nil || len(cc.byNum) >= maxCards {
		cc.byNum, cc.byTok = map[string]cachedCard{}, map[string]string{}
	}
	cc.byNum[c.Number] = cachedCard{c: c, until: now.Add(cardTTL)}
	if c.Token != "" {
		cc.byTok[c.Token] = c.Number
	}
}

func (cc *cardCache) forget(number string) {
	cc.mu.Lock()
	delete(cc.byNum, number)
	cc.mu.Unlock()
}

func (cc *cardCache) numberOf(token string) (string, bool) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	n, ok := cc.byTok[token]
	return n, ok
}

// card returns the card with number n, from the cache if there.
func (s *Service) card(ctx context.Context, n string) (resident.Card, error) {
	if s.rows == nil {
		return s.Residents.Card(ctx, n)
	}
	now := time.Now()
	if c, ok := s.cards.get(n, now); ok {
		return c, nil
	}
	c, err := s.Residents.Card(ctx, n)
	if err != nil {
		return c, err
	}
	s.cards.put(c, now)
	return c, nil
}

// cardByToken returns the card whose e-code subject is token.
func (s *Service) cardByToken(ctx context.Context, token string) (resident.Card, error) {
	if s.rows == nil {
		return s.Residents.CardByToken(ctx, token)
	}
	now := time.Now()
	if n, ok := s.cards.numberOf(token); ok {
		if c, ok := s.cards.get(n, now); ok && c.Token == token {
			return c, nil
		}
	}
	c, err := s.Residents.CardByToken(ctx, token)
	if err != nil {
		return c, err
	}
	s.cards.put(c, now)
	return c, nil
}
