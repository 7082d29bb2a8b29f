package resident

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"errors"
	"math/big"
	"strings"
	"sync"
	"time"

	"github.com/yikatong/yikatong/internal/trust"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store"
)

// Card statuses.
const (
	StatusActive    = "active"
	StatusLost      = "lost"
	StatusReplaced  = "replaced"
	StatusCancelled = "cancelled"
)

// Card events other than status changes.
const (
	EventStatus      = "status"
	EventIssued      = "issued"
	EventPINSet      = "pin_set"
	EventPINChanged  = "pin_changed"
	EventPINLocked   = "pin_locked"
	EventPINUnlocked = "pin_unlocked"
)

// Card is a social security card.
type Card struct {
	Number     string `json:"card_number"`
	ResidentID string `json:"resident_id"`
	// Token is the opaque subject of the card's e-codes.
	Token           string    `json:"-"`
	Status          string    `json:"status"`
	Locked          bool      `json:"locked"`
	PINFails        int       `json:"pin_fails"`
	PINSet          bool      `json:"pin_set"`
	IssuedAt        time.Time `json:"issued_at"`
	StatusChangedAt time.Time `json:"status_changed_at"`
	ReplacedBy      string    `json:"replaced_by,omitempty"`
}

// Live reports whether the card is active or lost (not yet dead).
func (c Card) Live() bool { return c.Status == StatusActive || c.Status == StatusLost }

// CardEvent is one entry of a card's history.
type CardEvent struct {
	CardNumber string    `json:"card_number"`
	Event      string    `json:"event"`
	From       string    `json:"from,omitempty"`
	To         string    `json:"to,omitempty"`
	At         time.Time `json:"at"`
	Actor      string    `json:"actor"`
}

// Revocation is a card that can no longer be used: lost, replaced or
// cancelled.
type Revocation struct {
	Token          string    `json:"token"`
	CardNumberHash string    `json:"card_number_hash"`
	Status         string    `json:"status"`
	At             time.Time `json:"at"`
}

// luhn returns the Luhn check digit for digits.
func luhn(digits string) byte {
	sum := 0
	double := true
	for i := len(digits) - 1; i >= 0; i-- {
		d := int(digits[i] - '0')
		if double {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return byte('0' + (10-sum%10)%10)
}

// NormalizeCardNumber removes spaces and dashes.
func NormalizeCardNumber(s string) string {
	return strings.Map(func(r rune) rune {
		if r == ' ' || r == '-' || r == '\t' {
			return -1
		}
		return r
	}, strings.TrimSpace(s))
}

// ValidCardNumber reports whether s (normalised) is 16 digits, the first
// non-zero, with a correct Luhn check digit.
func ValidCardNumber(s string) bool {
	return len(s) == 16 && isDigits(s) && s[0] != '0' && luhn(s[:15]) == s[15]
}

func checkCardNumber(s string) (string, error) {
	n := NormalizeCardNumber(s)
	if len(n) != 16 || !isDigits(n) || n[0] == '0' {
		return "", apperr.Invalid("card_number", "a card number has 16 digits, the first not 0", "卡号应为16位数字且首位不为0")
	}
	if luhn(n[:15]) != n[15] {
		return "", apperr.Invalid("card_number", "the card number's check digit is wrong: a digit was probably mistyped", "卡号校验位错误，可能有数字输入错误")
	}
	return n, nil
}

var cardSpace = big.NewInt(900_000_000_000_000) // 15-digit bodies 1e14 … 1e15-1

// issuedSpace: the random part of a card number that starts with its
// issuing city's code (4 digits + 11 random digits + check digit).
var issuedSpace = big.NewInt(100_000_000_000)

// newCardNumber draws a random card number without a region prefix.
func newCardNumber() string { return newCardNumberIn("") }

// newCardNumberIn draws a card number: the issuing city's 4-digit code
// (prefix, "" for none) then random digits, then the Luhn check digit.
func newCardNumberIn(prefix string) string {
	space, base := cardSpace, big.NewInt(100_000_000_000_000)
	if prefix != "" {
		space, base = issuedSpace, big.NewInt(0)
	}
	n, err := rand.Int(rand.Reader, space)
	if err != nil {
		panic("resident: no randomness: " + err.Error())
	}
	body := new(big.Int).Add(n, base).String()
	if prefix != "" {
		body = prefix + strings.Repeat("0", 15-len(prefix)-len(body)) + body
	}
	return body + string(luhn(body))
}

// RegionCode is the card number prefix of a city node id: the first
// RegionDigits digits of its 6-digit administrative division code
// ("CN-330100" → "3301"), or "" if the id does not end in one (the first
// digit of a division code is never 0).
func RegionCode(city string) string { return trust.RegionCode(city) }

// RegionDigits is the length of the region code a card number starts
// with: the first four digits of the city's administrative division code
// (province and prefecture: CN-330100 Hangzhou → 3301), which tell the
// cities of a region apart and leave 11 random digits to each card.
const RegionDigits = trust.RegionDigits

// CardRegion is the region code a card number starts with: the issuing
// city's, for cards issued since card numbers carry it (as the chip of a
// real social security card carries its issuing region). Older cards
// carry random digits there, so the answer is only a hint for numbers
// that are not this city's own; "" for a malformed number.
func CardRegion(number string) string {
	n := NormalizeCardNumber(number)
	if !ValidCardNumber(n) {
		return ""
	}
	return n[:RegionDigits]
}

// SetCardIssuer makes the cards this service issues from now on start
// with city's region code (RegionCode), so that another city's node can
// tell where a card number comes from. Cards issued before keep their
// numbers and stay valid. A city id without a region code leaves numbers
// random.
func (s *Service) SetCardIssuer(city string) {
	s.prefix.Store(RegionCode(city))
}

func (s *Service) cardPrefix() string {
	v, _ := s.prefix.Load().(string)
	return v
}

// newToken draws an opaque card token (128 random bits, base64url).
func newToken() string {
	b := make([]byte, 16)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// CardNumberHash is the deny-list form of a card number: trust.CardHash
// (iterated SM3, unkeyed, so that an offline terminal that reads a physical
// card can compute it and look it up in its bundle's deny list). It keeps
// card numbers out of the published list in plain text and makes
// recovering them slow, not impossible.
func CardNumberHash(number string) string { return trust.CardHash(number) }

const cardCols = `number, resident_id, token, status, locked, pin_fails, CASE WHEN pin_hash = '' THEN 0 ELSE 1 END, issued_at, status_changed_at, replaced_by`

func scanCard(row interface{ Scan(...any) error }) (Card, error) {
	var c Card
	var locked, pinSet int
	var issued, changed int64
	if err := row.Scan(&c.Number, &c.ResidentID, &c.Token, &c.Status, &locked, &c.PINFails, &pinSet, &issued, &changed, &c.ReplacedBy); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return Card{}, apperr.Newf(apperr.NotFound, "no card with this number", "未找到该卡")
		}
		return Card{}, apperr.Wrap(apperr.Internal, err)
	}
	// A sixth reserved slot whose holder never finished counts as locked.
	c.Locked = locked != 0 || c.PINFails >= MaxPINFails
	c.PINSet = pinSet != 0
	c.IssuedAt = time.UnixMilli(issued).UTC()
	c.StatusChangedAt = time.UnixMilli(changed).UTC()
	return c, nil
}

// insertCard issues a new active card to residentID inside tx, drawing a
// fresh number and token until they are unique.
func (s *Service) insertCard(ctx context.Context, tx *sql.Tx, residentID, pinHash string, now time.Time, actor string) (Card, error) {
	for attempt := 0; attempt < 8; attempt++ {
		c := Card{
			Number: newCardNumberIn(s.cardPrefix()), ResidentID: residentID, Token: newToken(), Status: StatusActive,
			PINSet: pinHash != "", IssuedAt: time.UnixMilli(now.UnixMilli()).UTC(),
		}
		c.StatusChangedAt = c.IssuedAt
		r, err := tx.ExecContext(ctx, `INSERT INTO cards (number, resident_id, token, status, locked, pin_fails, pin_hash, issued_at, status_changed_at, replaced_by)
			VALUES ($1, $2, $3, 'active', 0, 0, $4, $5, $5, '') ON CONFLICT DO NOTHING`,
			c.Number, residentID, c.Token, pinHash, now.UnixMilli())
		if err != nil {
			return Card{}, err
		}
		if n, err := r.RowsAffected(); err != nil {
			return Card{}, err
		} else if n == 0 {
			// A number or token collision, or (IssueCard racing itself) a
			// live card appeared: the caller's check decides on retry.
			if live, err := liveCard(ctx, tx, residentID); err != nil {
				return Card{}, err
			} else if live != "" {
				return Card{}, errHasLiveCard()
			}
			continue
		}
		if err := addEvent(ctx, tx, c.Number, EventIssued, "", StatusActive, now, actor); err != nil {
			return Card{}, err
		}
		return c, nil
	}
	return Card{}, errors.New("resident: could not draw a unique card number")
}

func errHasLiveCard() error {
	return apperr.Newf(apperr.AlreadyExists,
		"the resident already has an active or lost card: recover, replace or cancel it instead",
		"该居民已有正常或挂失状态的卡，请解挂、补换或注销原卡")
}

func liveCard(ctx context.Context, q store.Querier, residentID string) (string, error) {
	var number string
	err := q.QueryRowContext(ctx, `SELECT number FROM cards WHERE resident_id = $1 AND status IN ('active', 'lost')`, residentID).Scan(&number)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return number, err
}

func addEvent(ctx context.Context, q store.Querier, number, event, from, to string, at time.Time, actor string) error {
	_, err := q.ExecContext(ctx, `INSERT INTO card_events (card_number, event, from_status, to_status, at, actor) VALUES ($1, $2, $3, $4, $5, $6)`,
		number, event, from, to, at.UnixMilli(), actor)
	return err
}

// IssueCard issues an active card to a resident who has no live card. pin
// may be "" (no PIN yet: issuing is then cheap). Errors: not_found,
// already_exists, validation_failed (PIN). The card's history names the
// actor "staff"; IssueCardBy names a specific one.
func (s *Service) IssueCard(ctx context.Context, residentID, pin string) (Card, error) {
	return s.IssueCardBy(ctx, residentID, pin, "staff")
}

// IssueCardBy is IssueCard recording actor in the card's history.
func (s *Service) IssueCardBy(ctx context.Context, residentID, pin, actor string) (Card, error) {
	var pinHash string
	if pin != "" {
		if err := ValidatePIN(pin); err != nil {
			return Card{}, err
		}
		pinHash = s.hashPIN(pin, s.pinIter)
	}
	var c Card
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		var one int
		if err := tx.QueryRowContext(ctx, `SELECT 1 FROM residents WHERE id = $1`, residentID).Scan(&one); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return apperr.Newf(apperr.NotFound, "no such resident", "未找到该居民")
			}
			return err
		}
		if live, err := liveCard(ctx, tx, residentID); err != nil {
			return err
		} else if live != "" {
			return errHasLiveCard()
		}
		var err error
		c, err = s.insertCard(ctx, tx, residentID, pinHash, s.now(), actor)
		return err
	})
	if err != nil {
		if store.IsUniqueViolation(err) {
			return Card{}, errHasLiveCard()
		}
		return Card{}, apperr.As(err)
	}
	return c, nil
}

// Card returns the card with the given number (validation_failed for a
// malformed number, not_found).
func (s *Service) Card(ctx context.Context, cardNumber string) (Card, error) {
	n, err := checkCardNumber(cardNumber)
	if err != nil {
		return Card{}, err
	}
	return scanCard(s.db.QueryRow(ctx, `SELECT `+cardCols+` FROM cards WHERE number = $1`, n))
}

// HolderOf returns the id of the resident a card was issued to, whatever
// the card's status (not_found for an unknown card). A card never changes
// hands (a replacement is a new card), so answers are kept in memory and
// stay true in every process: a top-up by card number reads the database
// once per card, not once per top-up.
func (s *Service) HolderOf(ctx context.Context, cardNumber string) (string, error) {
	n, err := checkCardNumber(cardNumber)
	if err != nil {
		return "", err
	}
	if id, ok := s.holders.get(n); ok {
		return id, nil
	}
	c, err := scanCard(s.db.QueryRow(ctx, `SELECT `+cardCols+` FROM cards WHERE number = $1`, n))
	if err != nil {
		return "", err
	}
	s.holders.put(n, c.ResidentID)
	return c.ResidentID, nil
}

// holderCache is HolderOf's memory, bounded: past maxHolders entries it
// starts again empty.
type holderCache struct {
	mu sync.RWMutex
	m  map[string]string
}

const maxHolders = 1 << 20

func (h *holderCache) get(number string) (string, bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	id, ok := h.m[number]
	return id, ok
}

func (h *holderCache) put(number, residentID string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil || len(h.m) >= maxHolders {
		h.m = make(map[string]string, 1024)
	}
	h.m[number] = residentID
}

// CardByToken returns the card whose e-code subject is token (not_found).
func (s *Service) CardByToken(ctx context.Context, token string) (Card, error) {
	return scanCard(s.db.QueryRow(ctx, `SELECT `+cardCols+` FROM cards WHERE token = $1`, token))
}

// CardsOf lists a resident's cards, oldest first.
func (s *Service) CardsOf(ctx context.Context, residentID string) ([]Card, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT `+cardCols+` FROM cards WHERE resident_id = $1 ORDER BY issued_at, number`, residentID)
	if err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	defer rows.Close()
	out := []Card{}
	for rows.Next() {
		c, err := scanCard(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	return out, nil
}

// CardEvents lists a card's history, oldest first.
func (s *Service) CardEvents(ctx context.Context, cardNumber string) ([]CardEvent, error) {
	n, err := checkCardNumber(cardNumber)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.R.QueryContext(ctx, `SELECT card_number, event, from_status, to_status, at, actor FROM card_events WHERE card_number = $1 ORDER BY id`, n)
	if err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	defer rows.Close()
	out := []CardEvent{}
	for rows.Next() {
		var e CardEvent
		var at int64
		if err := rows.Scan(&e.CardNumber, &e.Event, &e.From, &e.To, &at, &e.Actor); err != nil {
			return nil, apperr.Wrap(apperr.Internal, err)
		}
		e.At = time.UnixMilli(at).UTC()
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	return out, nil
}

// StatusAt is the card's status at t by its history (card_events): what the
// last status change at or before t made it, or, before the first one, what
// that change found ("" before the card was issued). ok is false when the
// history holds no status change at all (a card written without one); the
// caller then has only the card's current status and status_changed_at.
//
// Offline scans are judged by it when the card changed after the scan: a
// card that was lost at the scan's time, and has been found or lost again
// since, was not in its holder's hands then, and its status_changed_at
// (the last change) does not say so.
func (s *Service) StatusAt(ctx context.Context, cardNumber string, t time.Time) (status string, ok bool, err error) {
	evs, err := s.CardEvents(ctx, cardNumber)
	if err != nil {
		return "", false, err
	}
	status, ok = statusAt(evs, t)
	return status, ok, nil
}

func statusAt(evs []CardEvent, t time.Time) (string, bool) {
	status, seen := "", false
	for _, e := range evs {
		if e.To == "" { // a PIN lock or unlock: no status change
			continue
		}
		if e.At.After(t) {
			if !seen {
				return e.From, true
			}
			break
		}
		status, seen = e.To, true
	}
	return status, seen
}

// allowed[to] lists the statuses a card may move to `to` from.
var allowed = map[string][]string{
	StatusLost:      {StatusActive},
	StatusActive:    {StatusLost},
	StatusReplaced:  {StatusActive, StatusLost},
	StatusCancelled: {StatusActive, StatusLost},
}

func canMove(from, to string) bool {
	for _, f := range allowed[to] {
		if f == from {
			return true
		}
	}
	return false
}

var statusZH = map[string]string{StatusActive: "正常", StatusLost: "挂失", StatusReplaced: "已补换", StatusCancelled: "已注销"}

func errTransition(from, to string) error {
	return apperr.Newf(apperr.BadTransition,
		"a "+from+" card cannot become "+to, "卡片状态「"+statusZH[from]+"」不能变为「"+statusZH[to]+"」")
}

// lockCard reads a card's status and resident inside tx, locking the row on
// PostgreSQL (SQLite transactions already hold the single writer lock).
func (s *Service) lockCard(ctx context.Context, tx *sql.Tx, number string) (status, residentID, pinHash string, err error) {
	q := `SELECT status, resident_id, pin_hash FROM cards WHERE number = $1`
	if s.db.Dialect == store.Postgres {
		q += ` FOR UPDATE`
	}
	err = tx.QueryRowContext(ctx, q, number).Scan(&status, &residentID, &pinHash)
	if errors.Is(err, sql.ErrNoRows) {
		err = apperr.Newf(apperr.NotFound, "no card with this number", "未找到该卡")
	}
	return
}

// changedAt is the card's status_changed_at after a move from → to at
// now. It is when the card last stopped (or started) working: a lost card
// then replaced or cancelled stopped working when it was reported lost,
// and offline scans and deny lists count it revoked from then, not from
// the replacement (a thief's taps in between must not be charged).
// Between two states that both do not work it is the zero time: the
// stored time stays (keepZero, the UPDATE's fallback).
func changedAt(from, to string, now time.Time) time.Time {
	if from == StatusActive || to == StatusActive {
		return now
	}
	return time.Time{}
}

// keepZero is t in Unix milliseconds, 0 for the zero time (keep the
// stored value).
func keepZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// move performs one status change with its event.
func (s *Service) move(ctx context.Context, cardNumber, to, actor string) (Card, error) {
	n, err := checkCardNumber(cardNumber)
	if err != nil {
		return Card{}, err
	}
	err = s.db.Tx(ctx, func(tx *sql.Tx) error {
		from, _, _, err := s.lockCard(ctx, tx, n)
		if err != nil {
			return err
		}
		if !canMove(from, to) {
			return errTransition(from, to)
		}
		now := s.now()
		if _, err := tx.ExecContext(ctx, `UPDATE cards SET status = $2, status_changed_at = CASE WHEN CAST($3 AS BIGINT) > 0 THEN CAST($3 AS BIGINT) ELSE status_changed_at END
			WHERE number = $1 AND status = $4`, n, to, keepZero(changedAt(from, to, now)), from); err != nil {
			return err
		}
		return addEvent(ctx, tx, n, EventStatus, from, to, now, actor)
	})
	if err != nil {
		return Card{}, apperr.As(err)
	}
	return s.Card(ctx, n)
}

// ReportLost moves an active card to lost (挂失): it stops working at once
// and appears in Revocations.
func (s *Service) ReportLost(ctx context.Context, cardNumber, actor string) (Card, error) {
	return s.move(ctx, cardNumber, StatusLost, actor)
}

// Recover moves a lost card back to active (解挂).
func (s *Service) Recover(ctx context.Context, cardNumber, actor string) (Card, error) {
	return s.move(ctx, cardNumber, StatusActive, actor)
}

// Cancel cancels an active or lost card for good (注销).
func (s *Service) Cancel(ctx context.Context, cardNumber, actor string) (Card, error) {
	return s.move(ctx, cardNumber, StatusCancelled, actor)
}

// Replace replaces an active or lost card (补换): the old card becomes
// replaced (dead for ever, pointing to its successor) and a new active card
// with a new number and a new token is returned. The PIN carries over; the
// failure count and lock do not.
func (s *Service) Replace(ctx context.Context, cardNumber, actor string) (Card, error) {
	n, err := checkCardNumber(cardNumber)
	if err != nil {
		return Card{}, err
	}
	var nc Card
	err = s.db.Tx(ctx, func(tx *sql.Tx) error {
		from, residentID, pinHash, err := s.lockCard(ctx, tx, n)
		if err != nil {
			return err
		}
		if !canMove(from, StatusReplaced) {
			return errTransition(from, StatusReplaced)
		}
		now := s.now()
		if _, err := tx.ExecContext(ctx, `UPDATE cards SET status = 'replaced', status_changed_at = CASE WHEN CAST($2 AS BIGINT) > 0 THEN CAST($2 AS BIGINT) ELSE status_changed_at END
			WHERE number = $1 AND status = $3`, n, keepZero(changedAt(from, StatusReplaced, now)), from); err != nil {
			return err
		}
		if err := addEvent(ctx, tx, n, EventStatus, from, StatusReplaced, now, actor); err != nil {
			return err
		}
		nc, err = s.insertCard(ctx, tx, residentID, pinHash, now, actor)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE cards SET replaced_by = $2 WHERE number = $1`, n, nc.Number)
		return err
	})
	if err != nil {
		return Card{}, apperr.As(err)
	}
	return nc, nil
}

// Revocations lists the cards that are now lost, replaced or cancelled and
// whose status changed after since, oldest change first. A lost card that
// was recovered is no longer listed; build a full deny list with the zero
// time.
func (s *Service) Revocations(ctx context.Context, since time.Time) ([]Revocation, error) {
	var ms int64 = -1 << 62
	if !since.IsZero() {
		ms = since.UnixMilli()
	}
	rows, err := s.db.R.QueryContext(ctx, `SELECT token, number, status, status_changed_at FROM cards
		WHERE status IN ('lost', 'replaced', 'cancelled') AND status_changed_at > $1
		ORDER BY status_changed_at, number`, ms)
	if err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	defer rows.Close()
	out := []Revocation{}
	for rows.Next() {
		var r Revocation
		var number string
		var at int64
		if err := rows.Scan(&r.Token, &number, &r.Status, &at); err != nil {
			return nil, apperr.Wrap(apperr.Internal, err)
		}
		r.CardNumberHash = CardNumberHash(number)
		r.At = time.UnixMilli(at).UTC()
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	return out, nil
}
