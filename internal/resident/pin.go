package resident

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"

	"github.com/emmansun/gmsm/sm3"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store"
)

// MaxPINFails is the number of consecutive wrong PINs that locks a card.
const MaxPINFails = 6

const pinScheme = "pbkdf2-sm3"

// ValidatePIN checks that pin is six digits and not trivially guessable
// (all digits equal, or a straight ascending or descending run).
func ValidatePIN(pin string) error {
	if len(pin) != 6 || !isDigits(pin) {
		return apperr.Invalid("pin", "the PIN must be exactly 6 digits", "密码必须为6位数字")
	}
	same, up, down := true, true, true
	for i := 1; i < 6; i++ {
		d := int(pin[i]) - int(pin[i-1])
		same = same && d == 0
		up = up && d == 1
		down = down && d == -1
	}
	if same || up || down {
		return apperr.Invalid("pin", "the PIN is too easy to guess (all digits equal or in a straight run); choose another",
			"密码过于简单（数字全部相同或连续），请另选")
	}
	return nil
}

// hashPIN returns the storable hash of pin with a fresh salt.
func (s *Service) hashPIN(pin string, iter int) string {
	salt := make([]byte, 16)
	rand.Read(salt)
	return pinScheme + "$" + strconv.Itoa(iter) + "$" + base64.RawStdEncoding.EncodeToString(salt) + "$" +
		base64.RawStdEncoding.EncodeToString(s.derivePIN(pin, salt, iter))
}

func (s *Service) derivePIN(pin string, salt []byte, iter int) []byte {
	m := hmac.New(sm3.New, s.pepper)
	m.Write([]byte(pin))
	dk, err := pbkdf2.Key(sm3.New, string(m.Sum(nil)), salt, iter, 32)
	if err != nil {
		panic("resident: pbkdf2: " + err.Error()) // only in FIPS mode with tiny keys
	}
	return dk
}

// checkPIN compares pin with a stored hash; ok is false for a wrong PIN and
// err non-nil for an unreadable hash. iter is the stored iteration count.
func (s *Service) checkPIN(stored, pin string) (ok bool, iter int, err error) {
	parts := strings.Split(stored, "$")
	if len(parts) != 4 || parts[0] != pinScheme {
		return false, 0, errors.New("resident: unreadable PIN hash")
	}
	iter, err = strconv.Atoi(parts[1])
	if err != nil || iter < 1 || iter > 10_000_000 {
		return false, 0, errors.New("resident: unreadable PIN hash iterations")
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[2])
	want, err2 := base64.RawStdEncoding.DecodeString(parts[3])
	if err1 != nil || err2 != nil || len(want) != 32 {
		return false, 0, errors.New("resident: unreadable PIN hash encoding")
	}
	got := s.derivePIN(pin, salt, iter)
	return subtle.ConstantTimeCompare(got, want) == 1, iter, nil
}

type pinState struct {
	status  string
	locked  bool
	fails   int
	pinHash string
}

func (s *Service) readPINState(ctx context.Context, q store.Querier, number string) (pinState, error) {
	var st pinState
	var locked int
	err := q.QueryRowContext(ctx, `SELECT status, locked, pin_fails, pin_hash FROM cards WHERE number = $1`, number).
		Scan(&st.status, &locked, &st.fails, &st.pinHash)
	if errors.Is(err, sql.ErrNoRows) {
		return st, apperr.New(apperr.BadPIN)
	}
	if err != nil {
		return st, apperr.Wrap(apperr.Internal, err)
	}
	st.locked = locked != 0 || st.fails >= MaxPINFails
	return st, nil
}

// refusal explains why a card cannot take a PIN attempt now, or nil.
func (st pinState) refusal() error {
	switch {
	case st.status != StatusActive:
		return apperr.Newf(apperr.CardNotActive, "the card is "+st.status, "卡片状态为「"+statusZH[st.status]+"」")
	case st.pinHash == "":
		return apperr.New(apperr.PINNotSet)
	case st.locked:
		return apperr.New(apperr.CardLocked)
	}
	return nil
}

// VerifyPIN checks a card's PIN. A wrong PIN returns bad_pin and counts;
// the sixth consecutive wrong PIN locks the card (card_locked), and a locked
// card refuses every PIN until UnlockPIN. A right PIN resets the count.
// Other errors: validation_failed (not 6 digits; not counted),
// card_not_active, pin_not_set, and bad_pin for an unknown card number.
func (s *Service) VerifyPIN(ctx context.Context, cardNumber, pin string) (Card, error) {
	return s.verifyPIN(ctx, cardNumber, pin, false)
}

// verifyPIN is VerifyPIN; current says the PIN is the card's current one
// asked for a change (a wrong one is said as such, the card number being
// known).
func (s *Service) verifyPIN(ctx context.Context, cardNumber, pin string, current bool) (Card, error) {
	n, err := checkCardNumber(cardNumber)
	if err != nil {
		return Card{}, err
	}
	if len(pin) != 6 || !isDigits(pin) {
		return Card{}, apperr.Invalid("pin", "the PIN must be exactly 6 digits", "密码必须为6位数字")
	}
	for attempt := 0; ; attempt++ {
		st, err := s.readPINState(ctx, s.db.R, n)
		if err != nil {
			return Card{}, err
		}
		if err := st.refusal(); err != nil {
			return Card{}, err
		}
		// Reserve one of the six slots before the slow hash.
		var slot int
		err = s.db.W.QueryRowContext(ctx, `UPDATE cards SET pin_fails = pin_fails + 1
			WHERE number = $1 AND status = 'active' AND locked = 0 AND pin_fails < $2 AND pin_hash = $3
			RETURNING pin_fails`, n, MaxPINFails, st.pinHash).Scan(&slot)
		if errors.Is(err, sql.ErrNoRows) {
			// State changed since the read: re-read and explain, or retry
			// if only the PIN itself changed.
			if attempt < 3 {
				continue
			}
			return Card{}, apperr.New(apperr.CardLocked)
		}
		if err != nil {
			return Card{}, apperr.Wrap(apperr.Internal, err)
		}
		ok, iter, err := s.checkPIN(st.pinHash, pin)
		if err != nil {
			return Card{}, apperr.Wrap(apperr.Internal, err)
		}
		if !ok {
			return Card{}, s.wrongPIN(ctx, n, slot, current)
		}
		newHash := st.pinHash
		if iter < s.pinIter {
			newHash = s.hashPIN(pin, s.pinIter)
		}
		r, err := s.db.W.ExecContext(ctx, `UPDATE cards SET pin_fails = 0, pin_hash = $3
			WHERE number = $1 AND locked = 0 AND pin_hash = $2`, n, st.pinHash, newHash)
		if err != nil {
			return Card{}, apperr.Wrap(apperr.Internal, err)
		}
		if k, _ := r.RowsAffected(); k == 0 {
			// Locked (or the PIN was changed) while we were hashing.
			st, err := s.readPINState(ctx, s.db.W, n)
			if err != nil {
				return Card{}, err
			}
			if err := st.refusal(); err != nil {
				return Card{}, err
			}
			return Card{}, apperr.New(apperr.BadPIN)
		}
		return s.Card(ctx, n)
	}
}

func (s *Service) wrongPIN(ctx context.Context, number string, slot int, current bool) error {
	if slot < MaxPINFails {
		left := strconv.Itoa(MaxPINFails - slot)
		tries := " tries left"
		if slot == MaxPINFails-1 {
			tries = " try left"
		}
		if current {
			return apperr.Newf(apperr.BadPIN, "the current PIN is wrong; "+left+tries+" before the card is locked",
				"原密码错误，再错"+left+"次卡片将被锁定")
		}
		return apperr.Newf(apperr.BadPIN, "wrong card number or PIN; "+left+tries+" before the card is locked",
			"卡号或密码错误，再错"+left+"次卡片将被锁定")
	}
	now := s.now()
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE cards SET locked = 1 WHERE number = $1`, number); err != nil {
			return err
		}
		return addEvent(ctx, tx, number, EventPINLocked, "", "", now, "system")
	})
	if err != nil {
		return apperr.Wrap(apperr.Internal, err)
	}
	return apperr.Newf(apperr.CardLocked,
		"wrong PIN for the 6th time in a row: the card is now locked; ask staff to unlock it",
		"连续第6次密码错误，卡片已锁定，请联系工作人员解锁")
}

// ChangePIN changes the PIN of an active card after checking the old one
// (a wrong old PIN counts toward the lock-out).
func (s *Service) ChangePIN(ctx context.Context, cardNumber, oldPIN, newPIN string) error {
	if err := ValidatePIN(newPIN); err != nil {
		return err
	}
	c, err := s.verifyPIN(ctx, cardNumber, oldPIN, true)
	if err != nil {
		return err
	}
	return s.storePIN(ctx, c.Number, s.hashPIN(newPIN, s.pinIter), EventPINChanged, "resident", false)
}

// SetPIN sets (or resets) an active card's PIN on staff authority; it also
// clears the failure count and the lock.
func (s *Service) SetPIN(ctx context.Context, cardNumber, pin, actor string) error {
	n, err := checkCardNumber(cardNumber)
	if err != nil {
		return err
	}
	if err := ValidatePIN(pin); err != nil {
		return err
	}
	return s.storePIN(ctx, n, s.hashPIN(pin, s.pinIter), EventPINSet, actor, true)
}

func (s *Service) storePIN(ctx context.Context, number, hash, event, actor string, unlock bool) error {
	q := `UPDATE cards SET pin_hash = $2 WHERE number = $1 AND status = 'active'`
	if unlock {
		q = `UPDATE cards SET pin_hash = $2, pin_fails = 0, locked = 0 WHERE number = $1 AND status = 'active'`
	}
	return s.adminPIN(ctx, number, q, []any{number, hash}, event, actor)
}

// UnlockPIN clears a card's PIN failure count and lock (staff only).
func (s *Service) UnlockPIN(ctx context.Context, cardNumber, actor string) error {
	n, err := checkCardNumber(cardNumber)
	if err != nil {
		return err
	}
	return s.adminPIN(ctx, n, `UPDATE cards SET pin_fails = 0, locked = 0 WHERE number = $1 AND status = 'active'`,
		[]any{n}, EventPINUnlocked, actor)
}

func (s *Service) adminPIN(ctx context.Context, number, q string, args []any, event, actor string) error {
	now := s.now()
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		r, err := tx.ExecContext(ctx, q, args...)
		if err != nil {
			return err
		}
		if k, err := r.RowsAffected(); err != nil {
			return err
		} else if k == 0 {
			var status string
			err := tx.QueryRowContext(ctx, `SELECT status FROM cards WHERE number = $1`, number).Scan(&status)
			if errors.Is(err, sql.ErrNoRows) {
				return apperr.Newf(apperr.NotFound, "no card with this number", "未找到该卡")
			}
			if err != nil {
				return err
			}
			return apperr.Newf(apperr.CardNotActive, "the card is "+status, "卡片状态为「"+statusZH[status]+"」")
		}
		return addEvent(ctx, tx, number, event, "", "", now, actor)
	})
	if err != nil {
		return apperr.As(err)
	}
	return nil
}
