// Package subsidy pays out benefit, farm and other government subsidies
// (惠民惠农补贴) through the ledger.
//
// A programme is a subsidy_programme ledger account ("sp:<id>") with a
// budget: finance funds it from the treasury external account, and hr_admin
// uploads payment lists (CSV lines "id_number_or_card_number,amount_fen,
// reference", optional header naming the amount column ("amount" or
// "金额"), optional UTF-8 byte order mark as Excel writes it). Each line
// is paid exactly once however often a list is uploaded: its ledger
// idempotency key is "subsidy:<programme>:<reference>" (hashed when that
// is too long for the ledger, lineKey), and the request content includes the
// resident's wallet and the amount, so the same reference for another
// person or amount is reported as a conflict, never paid twice. A refused
// line (unknown person, cancelled card, programme exhausted, malformed)
// writes nothing and may be paid by a later upload.
//
// Lines go through the ledger's batch path (Ledger.Batch): a list of
// thousands is applied in a few database transactions.
//
// Role checks (finance funds, hr_admin uploads) belong to the HTTP layer.
// The package never puts an ID number in a report or error: it reports the
// line number and a masked form.
package subsidy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"io"
	"regexp"
	"strconv"
	"strings"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ledger"
)

// Resolver finds the wallet account of the resident identified by an ID
// number or card number. It returns an *apperr.Error: not_found for an
// unknown person; card_not_active or revoked for a cancelled card.
type Resolver interface {
	Resolve(ctx context.Context, idOrCard string) (walletAccountID string, err error)
}

// Service runs subsidy programmes.
type Service struct {
	L *ledger.Ledger
	R Resolver
}

// Line statuses in a report.
const (
	Paid        = "paid"
	AlreadyPaid = "already_paid"
	Refused     = "refused"
)

// Refusal reasons.
const (
	ReasonUnknownPerson = "unknown_person"
	ReasonCancelledCard = "cancelled_card"
	ReasonExhausted     = "programme_exhausted"
	ReasonMalformed     = "malformed_line"
	ReasonBadAmount     = "bad_amount"
	ReasonConflict      = "reference_conflict" // same reference, other person or amount
	ReasonDuplicate     = "duplicate_in_list"  // same reference twice in one list with other content
	ReasonUnavailable   = "unavailable"        // retry the upload
)

// LineResult is the outcome of one line.
type LineResult struct {
	Line      int    `json:"line"`
	Reference string `json:"reference,omitempty"`
	Person    string `json:"person,omitempty"` // masked
	AmountFen int64  `json:"amount_fen,omitempty"`
	Status    string `json:"status"`
	Reason    string `json:"reason,omitempty"`
	Transfer  string `json:"transfer,omitempty"`
}

// Report is the outcome of an upload.
type Report struct {
	Programme   string       `json:"programme"`
	Paid        int          `json:"paid"`
	AlreadyPaid int          `json:"already_paid"`
	Refused     int          `json:"refused"`
	PaidFen     int64        `json:"paid_fen"`
	Lines       []LineResult `json:"lines"`
}

// MaxFundingFen bounds one funding (10 billion yuan): far above any real
// one, it turns a slip of the keyboard into an error, not a booking.
const MaxFundingFen = 1_000_000_000_000

// MaxLines bounds one upload.
const MaxLines = 100000

// programmeID is the form of a new programme's id: it is a path segment
// in the API and the console, so only lower-case letters, digits, '.',
// '-' and '_', starting with a letter or digit (never "." or ".."), e.g.
// "heating-2026".
var programmeID = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

const maxIDLen = 64

// checkNewProgramme checks the id of a programme being created.
func checkNewProgramme(id string) error {
	if len(id) > maxIDLen || !programmeID.MatchString(id) {
		return apperr.Invalid("id", "the programme id must be 1-64 lower-case letters, digits, '.', '-' or '_', starting with a letter or digit, such as heating-2026",
			"补贴项目编号须为 1-64 个小写字母、数字、“.”、“-”或“_”，以字母或数字开头，如 heating-2026")
	}
	return nil
}

// checkProgramme checks the id of an existing programme. It is looser than
// checkNewProgramme so that programmes created before ids were restricted
// can still be funded and paid from.
func checkProgramme(id string) error {
	if id == "" || len(id) > 64 || strings.ContainsAny(id, ": \t\n") {
		return apperr.Invalid("programme", "the programme id must be 1-64 characters without spaces or colons", "补贴项目编号须为 1-64 个字符，不含空格和冒号")
	}
	return nil
}

// CreateProgramme creates (idempotently) a programme's fund account.
func (s *Service) CreateProgramme(ctx context.Context, id, label string) (ledger.AccountInfo, error) {
	if err := checkNewProgramme(id); err != nil {
		return ledger.AccountInfo{}, err
	}
	return s.L.CreateAccount(ctx, ledger.Account{ID: ledger.ProgrammeID(id), Kind: ledger.KindSubsidy, Label: label})
}

// Fund moves amount from the treasury into the programme (finance only).
func (s *Service) Fund(ctx context.Context, programme, key string, amount int64) (ledger.Transfer, error) {
	if err := checkProgramme(programme); err != nil {
		return ledger.Transfer{}, err
	}
	if amount > MaxFundingFen {
		return ledger.Transfer{}, apperr.Newf(apperr.InvalidAmount, "one funding is at most 10 billion yuan", "单笔拨款不超过100亿元")
	}
	return s.L.Transfer(ctx, ledger.TransferRequest{Key: key, Debit: ledger.AccountTreasury, Credit: ledger.ProgrammeID(programme),
		Amount: amount, Kind: "subsidy_funding", Meta: map[string]string{"programme": programme}})
}

// Mask shows the first 3 and last 4 characters of an identifier.
func Mask(s string) string {
	r := []rune(s)
	if len(r) <= 7 {
		return strings.Repeat("*", len(r))
	}
	return string(r[:3]) + strings.Repeat("*", len(r)-7) + string(r[len(r)-4:])
}

// SkipBOM returns r without its leading UTF-8 byte order mark, if any:
// Excel starts a CSV file saved as UTF-8 with one.
func SkipBOM(r io.Reader) io.Reader {
	br := bufio.NewReader(r)
	if b, err := br.Peek(3); err == nil && string(b) == "\ufeff" {
		br.Discard(3)
	}
	return br
}

// Upload pays the lines of a CSV list from the programme's fund.
func (s *Service) Upload(ctx context.Context, programme string, list io.Reader) (Report, error) {
	if err := checkProgramme(programme); err != nil {
		return Report{}, err
	}
	prog := ledger.ProgrammeID(programme)
	if _, err := s.L.Balance(ctx, prog); err != nil {
		return Report{}, err
	}
	rd := csv.NewReader(SkipBOM(list))
	rd.FieldsPerRecord = -1
	rd.TrimLeadingSpace = true
	rep := Report{Programme: programme}
	var reqs []ledger.TransferRequest
	var at []int                // index into rep.Lines
	seen := map[string]string{} // reference → wallet|amount in this list
	for n := 1; ; n++ {
		rec, err := rd.Read()
		if err == io.EOF {
			break
		}
		if n > MaxLines {
			return Report{}, apperr.Invalid("list", "a list has at most 100000 lines", "名单最多 100000 行")
		}
		var lr LineResult
		if err == nil {
			lr.Line, _ = rd.FieldPos(0) // FieldPos panics after a parse error
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				lr.Line = pe.Line
			}
			lr.Status, lr.Reason = Refused, ReasonMalformed
			rep.Lines = append(rep.Lines, lr)
			continue
		}
		if n == 1 && len(rec) >= 2 && !isInt(strings.TrimSpace(rec[1])) && isHeader(rec) {
			continue // header
		}
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue // blank line
		}
		if len(rec) != 3 || strings.TrimSpace(rec[0]) == "" || strings.TrimSpace(rec[2]) == "" || len(rec[2]) > 64 {
			lr.Status, lr.Reason = Refused, ReasonMalformed
			rep.Lines = append(rep.Lines, lr)
			continue
		}
		who, ref := strings.TrimSpace(rec[0]), strings.TrimSpace(rec[2])
		lr.Reference, lr.Person = ref, Mask(who)
		amount, err := strconv.ParseInt(strings.TrimSpace(rec[1]), 10, 64)
		if err != nil || amount <= 0 {
			lr.Status, lr.Reason = Refused, ReasonBadAmount
			rep.Lines = append(rep.Lines, lr)
			continue
		}
		lr.AmountFen = amount
		wallet, err := s.R.Resolve(ctx, who)
		if err != nil {
			lr.Status = Refused
			switch apperr.CodeOf(err) {
			case apperr.NotFound, apperr.UnknownAccount, apperr.BadLength, apperr.BadFormat, apperr.BadCheckDigit, apperr.BadRegion, apperr.BadBirthDate, apperr.BadNationality:
				lr.Reason = ReasonUnknownPerson
			case apperr.CardNotActive, apperr.Revoked, apperr.AccountClosed:
				lr.Reason = ReasonCancelledCard
			case apperr.Unavailable:
				lr.Reason = ReasonUnavailable
			default:
				lr.Reason = ReasonUnknownPerson
			}
			rep.Lines = append(rep.Lines, lr)
			continue
		}
		content := wallet + "|" + strconv.FormatInt(amount, 10)
		if prev, ok := seen[ref]; ok && prev != content {
			lr.Status, lr.Reason = Refused, ReasonDuplicate
			rep.Lines = append(rep.Lines, lr)
			continue
		}
		seen[ref] = content
		reqs = append(reqs, ledger.TransferRequest{Key: lineKey(programme, ref), Debit: prog, Credit: wallet, Amount: amount,
			Kind: "subsidy", Meta: map[string]string{"programme": programme, "reference": ref}})
		at = append(at, len(rep.Lines))
		rep.Lines = append(rep.Lines, lr)
	}
	for i, r := range s.L.Batch(ctx, reqs) {
		lr := &rep.Lines[at[i]]
		switch code := apperr.CodeOf(r.Err); code {
		case "":
			lr.Transfer = r.Transfer.ID
			if r.Transfer.Replayed {
				lr.Status = AlreadyPaid
			} else {
				lr.Status = Paid
				rep.PaidFen += lr.AmountFen
			}
		case apperr.IdempotencyConflict:
			lr.Status, lr.Reason = Refused, ReasonConflict
		case apperr.InsufficientFunds:
			lr.Status, lr.Reason = Refused, ReasonExhausted
		case apperr.AccountClosed:
			lr.Status, lr.Reason = Refused, ReasonCancelledCard
		case apperr.UnknownAccount:
			lr.Status, lr.Reason = Refused, ReasonUnknownPerson
		case apperr.Unavailable:
			lr.Status, lr.Reason = Refused, ReasonUnavailable
		default:
			lr.Status, lr.Reason = Refused, string(code)
		}
	}
	for _, lr := range rep.Lines {
		switch lr.Status {
		case Paid:
			rep.Paid++
		case AlreadyPaid:
			rep.AlreadyPaid++
		default:
			rep.Refused++
		}
	}
	return rep, nil
}

// lineKey is the ledger idempotency key of a list line:
// "subsidy:<programme>:<reference>", or, when that would be longer than
// the ledger takes (a long programme id with a long reference, up to 137
// bytes), "subsidy#" and the SHA-256 of that plain key in hex. No plain
// key starts with "subsidy#", and a plain key that long was never
// accepted by the ledger, so no line paid before changes its key.
func lineKey(programme, ref string) string {
	k := "subsidy:" + programme + ":" + ref
	if len(k) <= ledger.MaxKeyLen {
		return k
	}
	h := sha256.Sum256([]byte(k))
	return "subsidy#" + hex.EncodeToString(h[:])
}

// isHeader reports whether a first line that has no number for an amount
// names an amount column, in English or Chinese (金额), as the console's
// list reader also takes it.
func isHeader(rec []string) bool {
	head := strings.ToLower(strings.Join(rec, ","))
	return strings.Contains(head, "amount") || strings.Contains(head, "金额")
}

func isInt(s string) bool {
	_, err := strconv.ParseInt(s, 10, 64)
	return err == nil
}
