// Package subsidy pays out benefit, farm and other government subsidies
// (惠民惠农补贴) through the ledger.
//
// A programme is a subsidy_programme ledger account ("sp:<id>") with a
// budget: finance funds it from the treasury external account, and hr_admin
// uploads payment lists (CSV lines "id_number_or_card_number,amount_fen,
// reference", optional header naming the amount column, second, in fen
// ("amount", "amount_fen", "金额", "金额（分）"), optional UTF-8 byte order
// mark as Excel writes it; readList). A header naming the amount in yuan
// or in another column refuses the whole list: paid as fen, ¥150 would be
// paid as ¥1.50. Each line is paid exactly once however often a list is
// uploaded: its ledger idempotency key is "subsidy:<programme>:<reference>"
// (hashed when that is too long for the ledger, lineKey), and the request
// content includes the resident's wallet and the amount, so the same
// reference for another person or amount is reported as a conflict, never
// paid twice. A refused line (unknown person, cancelled card, programme
// exhausted, malformed, unavailable) writes nothing and may be paid by a
// later upload. A line paid by an earlier upload is reported already paid
// even if its person can no longer be found (a card cancelled since), and
// reported refused, reason reversed, if its transfer was reversed since:
// the reference is spent either way.
//
// Lines go through the ledger's batch path (Ledger.Batch): a list of
// thousands is applied in a few database transactions.
//
// Role checks (finance funds, hr_admin uploads) belong to the HTTP layer.
// The package never puts an ID number in a report or error: it reports the
// line number and a masked form, and refuses a line whose reference holds
// an ID number (id_number_in_reference; the reference would stay in the
// append-only journal for ever), showing that reference masked.
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
	"time"
	"unicode/utf8"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/idnum"
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
	ReasonReversed      = "reversed"           // paid by an earlier upload, reversed since
	// ReasonIDInReference: the reference holds an ID number, which would
	// stay in the ledger's append-only journal for ever; use another one.
	ReasonIDInReference = "id_number_in_reference"
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
	// ReversedFen is what reversals have returned of the line's transfer
	// (reason reversed).
	ReversedFen int64 `json:"reversed_fen,omitempty"`
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

// listLine is one line of a list as read by readList: refused already
// (Status Refused and a Reason), or to be paid (Status empty) to Who.
type listLine struct {
	LineResult
	Who string
}

// readList reads a payout list: CSV records "id_number_or_card_number,
// amount_fen,reference" in UTF-8 (a list in another encoding, such as
// GBK, is refused whole), with an optional byte order mark, CRLF or
// LF line ends, blank lines skipped and an optional header as first
// record. It checks the form of each line and returns them in order;
// it writes nothing and asks nobody.
//
// A header names the amount column (amount, amount_fen, 金额, 金额（分）) in
// the second column. The list is refused whole (validation_failed) when
// its header names the amount in yuan (金额（元）, amount_yuan): the API
// speaks fen, and paying such a list would pay a hundredth of what was
// meant, under references then spent; or when it names the amount in
// another column: its lines would be read in the wrong columns. The list
// is refused whole too when it cannot be read to its end (a dropped
// connection, a body over its limit): the error wraps the read error.
func readList(list io.Reader) ([]listLine, error) {
	rd := csv.NewReader(SkipBOM(list))
	rd.FieldsPerRecord = -1
	rd.TrimLeadingSpace = true
	var out []listLine
	for n := 1; ; n++ {
		rec, err := rd.Read()
		if err == io.EOF {
			break
		}
		var pe *csv.ParseError
		if err != nil && !errors.As(err, &pe) {
			e := apperr.Wrap(apperr.ValidationFailed, err)
			e.Field = "list"
			e.Detail = "the list could not be read to its end (" + readErrText(err) + "); nothing of it was paid: upload it again"
			e.DetailZh = "名单未能完整读取（" + readErrText(err) + "），未发放任何一行，请重新上传"
			return nil, e
		}
		if n > MaxLines {
			return nil, apperr.Invalid("list", "a list has at most 100000 lines", "名单最多 100000 行")
		}
		var lr listLine
		if err != nil {
			lr.Line = pe.Line
			lr.Status, lr.Reason = Refused, ReasonMalformed
			out = append(out, lr)
			continue
		}
		lr.Line, _ = rd.FieldPos(0) // FieldPos panics after a parse error
		for _, f := range rec {
			if !utf8.ValidString(f) {
				// GBK, as Excel saves "CSV" on a Chinese Windows: a header
				// in yuan (金额（元）) could not even be read as one.
				return nil, apperr.Invalid("list", "the list is not UTF-8 text (save it as \"CSV UTF-8\"); nothing of it was paid",
					"名单不是 UTF-8 文本（请另存为“CSV UTF-8”），未发放任何一行")
			}
		}
		if n == 1 {
			header, err := checkHeader(rec)
			if err != nil {
				return nil, err
			}
			if header {
				continue
			}
		}
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue // blank line
		}
		if len(rec) != 3 || strings.TrimSpace(rec[0]) == "" || strings.TrimSpace(rec[2]) == "" || len(rec[2]) > 64 {
			lr.Status, lr.Reason = Refused, ReasonMalformed
			out = append(out, lr)
			continue
		}
		who, ref := strings.TrimSpace(rec[0]), strings.TrimSpace(rec[2])
		lr.Who, lr.Reference, lr.Person = who, ref, Mask(who)
		if hasIDNumber(ref) {
			lr.Reference = Mask(ref)
			lr.Status, lr.Reason = Refused, ReasonIDInReference
			out = append(out, lr)
			continue
		}
		amount, err := strconv.ParseInt(strings.TrimSpace(rec[1]), 10, 64)
		if err != nil || amount <= 0 {
			lr.Status, lr.Reason = Refused, ReasonBadAmount
			out = append(out, lr)
			continue
		}
		lr.AmountFen = amount
		out = append(out, lr)
	}
	return out, nil
}

// readErrText names a read error without its text, which may say
// anything (the HTTP layer answers a body over its limit with
// body_too_large: the read error is wrapped).
func readErrText(err error) string {
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "truncated"
	case strings.Contains(err.Error(), "too large"):
		return "too large"
	}
	return "read error"
}

// Upload pays the lines of a CSV list (readList) from the programme's fund.
//
// A line that is not paid now is reported with why: refused (nothing
// written; a later upload may pay it, unless it is a conflict), already
// paid (by an earlier upload: its transfer, whether or not the person
// could be found again today), or reversed (paid earlier and reversed
// since, in whole or part: reported refused with the amount reversed, as
// the resident no longer has it, and never paid again under that
// reference). A failure that is not about the line itself (the database,
// a timeout) is reported as unavailable: upload the list again.
func (s *Service) Upload(ctx context.Context, programme string, list io.Reader) (Report, error) {
	if err := checkProgramme(programme); err != nil {
		return Report{}, err
	}
	prog := ledger.ProgrammeID(programme)
	a, err := s.L.Balance(ctx, prog)
	if err != nil {
		return Report{}, err
	}
	if a.Kind != ledger.KindSubsidy {
		return Report{}, apperr.Newf(apperr.NotFound, "no such subsidy programme", "补贴项目不存在")
	}
	if a.Status == ledger.StatusClosed {
		return Report{}, apperr.Newf(apperr.AccountClosed, "the programme is closed: it pays nothing more", "补贴项目已关闭，不再发放")
	}
	lines, err := readList(list)
	if err != nil {
		return Report{}, err
	}
	rep := Report{Programme: programme, Lines: make([]LineResult, 0, len(lines))}
	var reqs []ledger.TransferRequest
	var at []int                // index into rep.Lines
	seen := map[string]string{} // reference → wallet|amount in this list
	for _, ll := range lines {
		lr := ll.LineResult
		if lr.Status != "" {
			rep.Lines = append(rep.Lines, lr)
			continue
		}
		wallet, err := s.R.Resolve(ctx, ll.Who)
		if err != nil {
			lr.Status = Refused
			switch apperr.CodeOf(err) {
			case apperr.NotFound, apperr.UnknownAccount, apperr.UnknownHolder, apperr.BadLength, apperr.BadFormat, apperr.BadCheckDigit, apperr.BadRegion, apperr.BadBirthDate, apperr.BadNationality:
				lr.Reason = ReasonUnknownPerson
			case apperr.CardNotActive, apperr.Revoked, apperr.AccountClosed:
				lr.Reason = ReasonCancelledCard
			default:
				// Not an answer about the person (a database error, a
				// timeout): reported as unknown, the line would be
				// dropped and the resident never paid.
				lr.Reason = ReasonUnavailable
			}
			if lr.Reason != ReasonUnavailable {
				s.paidBefore(ctx, prog, programme, &lr)
			}
			rep.Lines = append(rep.Lines, lr)
			continue
		}
		content := wallet + "|" + strconv.FormatInt(lr.AmountFen, 10)
		if prev, ok := seen[lr.Reference]; ok && prev != content {
			lr.Status, lr.Reason = Refused, ReasonDuplicate
			rep.Lines = append(rep.Lines, lr)
			continue
		}
		seen[lr.Reference] = content
		reqs = append(reqs, ledger.TransferRequest{Key: lineKey(programme, lr.Reference), Debit: prog, Credit: wallet, Amount: lr.AmountFen,
			Kind: "subsidy", Meta: map[string]string{"programme": programme, "reference": lr.Reference}})
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
		case apperr.Unavailable, apperr.Internal:
			lr.Status, lr.Reason = Refused, ReasonUnavailable
		default:
			lr.Status, lr.Reason = Refused, string(code)
		}
	}
	for i := range rep.Lines {
		lr := &rep.Lines[i]
		if lr.Status == AlreadyPaid {
			s.checkReversed(ctx, lr)
		}
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

// paidBefore reports a line the resolver refused as already paid (or a
// reference conflict) when its reference was paid from this programme by
// an earlier upload: the person's card may have been cancelled since, and
// a line reported refused would be paid some other way, a second time.
func (s *Service) paidBefore(ctx context.Context, prog, programme string, lr *LineResult) {
	t, err := s.L.GetTransferByKey(ctx, lineKey(programme, lr.Reference))
	switch {
	case apperr.CodeOf(err) == apperr.NotFound:
	case err != nil:
		lr.Reason = ReasonUnavailable
	case t.Type != ledger.TypeTransfer || t.Debit != prog || t.Amount != lr.AmountFen || t.Meta["reference"] != lr.Reference:
		lr.Reason = ReasonConflict
	default:
		lr.Status, lr.Reason, lr.Transfer = AlreadyPaid, "", t.ID
	}
}

// checkReversed reports an already paid line whose transfer was reversed
// since (in whole or part) as refused, reason reversed, with the amount
// reversed: the resident does not have it, and the reference is spent.
func (s *Service) checkReversed(ctx context.Context, lr *LineResult) {
	n, err := s.L.Reversed(ctx, lr.Transfer, "")
	switch {
	case err != nil:
		lr.Status, lr.Reason = Refused, ReasonUnavailable
	case n > 0:
		lr.Status, lr.Reason, lr.ReversedFen = Refused, ReasonReversed, n
	}
}

// hasIDNumber reports whether s holds a valid ID number, alone or within
// other text (idnum.Contains).
func hasIDNumber(s string) bool { return idnum.Contains(s, time.Now()) }

// checkHeader reports whether rec, the first record of a list, is a
// header, and refuses a header the list cannot be paid by (see readList):
// one naming the amount in another column (HeaderUnit), or in yuan.
func checkHeader(rec []string) (bool, error) {
	header, unit, err := HeaderUnit(rec)
	if err != nil || !header {
		return header, err
	}
	switch unit {
	case UnitYuan:
		return true, apperr.Invalid("list", "the header gives the amounts in yuan; a list sent here gives them in fen (amount_fen, 金额（分）): ¥150 is 15000",
			"表头金额单位为元；此处上传的名单金额须以分为单位（amount_fen、金额（分）），150 元应写为 15000")
	case UnitMixed, UnitOther:
		return true, apperr.Invalid("list", "the header's amount column names another unit than fen, or two units; a list sent here gives the amounts in fen (amount_fen, 金额（分）)",
			"表头金额列的单位不是分，或写了两种单位；此处上传的名单金额须以分为单位（amount_fen、金额（分））")
	}
	return true, nil
}

// Units a header names for its amount column (HeaderUnit).
const (
	UnitNone  = ""      // amount, 金额: the reader's own default (fen here)
	UnitFen   = "fen"   // amount_fen, 金额（分）
	UnitYuan  = "yuan"  // amount_yuan, 金额（元）
	UnitMixed = "mixed" // both, such as 金额（元/分）: refused
	UnitOther = "other" // another unit (万元, 千元, 角, cents): refused
)

// HeaderUnit reports whether rec, the first record of a list, is a
// header by the rule readList applies, and the unit its amount column
// names. A header names an amount column (amount, 金额) and has no number
// in its second column; a first record with a number there is a line. A
// header must name the amount in its second column: a first record naming
// it elsewhere is a line when it holds a digit (a bad amount such as
// 150.00 with a reference such as 补贴金额2024, to be reported refused),
// and otherwise a header refused whole (validation_failed), its lines
// being in other columns. Exported so that a reader of the same lists in
// another unit (the web console reads yuan) takes the same first lines
// for headers.
func HeaderUnit(rec []string) (header bool, unit string, err error) {
	if len(rec) < 2 || isInt(strings.TrimSpace(rec[1])) || !isHeader(rec) {
		return false, UnitNone, nil
	}
	amount := strings.ToLower(rec[1])
	if !namesAmount(amount) {
		if strings.ContainsAny(strings.Join(rec, ""), "0123456789") {
			// A line with a bad amount (150.00) and a reference such as
			// 补贴金额2024: reported refused. The console hands lists on in
			// chunks without their header, so any line may come first.
			return false, UnitNone, nil
		}
		return true, UnitNone, apperr.Invalid("list", "the header names the amount in another column than the second: a list's columns are ID or card number, amount in fen, reference",
			"表头中金额不在第二列：名单各列依次为证件号码或卡号、金额（分）、业务流水号")
	}
	fen := strings.Contains(amount, "fen") || strings.Contains(amount, "分")
	yuan := strings.Contains(amount, "yuan") || strings.Contains(amount, "元")
	switch {
	case otherUnit(amount):
		return true, UnitOther, nil
	case fen && yuan:
		return true, UnitMixed, nil
	case fen:
		return true, UnitFen, nil
	case yuan:
		return true, UnitYuan, nil
	}
	return true, UnitNone, nil
}

// otherUnit reports whether an amount column's name (lower case) names a
// unit other than yuan and fen (万元, 千元, 角, cents), which a reader
// would take for its default unit: ten thousand times too little, or ten
// or a hundred times too much.
func otherUnit(col string) bool {
	for _, u := range []string{"万", "千", "角", "cent", "jiao"} {
		if strings.Contains(col, u) {
			return true
		}
	}
	return false
}

func namesAmount(s string) bool {
	s = strings.ToLower(s)
	return strings.Contains(s, "amount") || strings.Contains(s, "金额")
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
	return namesAmount(strings.Join(rec, ","))
}

func isInt(s string) bool {
	_, err := strconv.ParseInt(s, 10, 64)
	return err == nil
}
