package ledger

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emmansun/gmsm/sm3"

	"github.com/yikatong/yikatong/internal/apperr"
)

// Account kinds.
const (
	KindWallet     = "resident_wallet"
	KindMedical    = "resident_medical" // 医保个人账户
	KindSubsidy    = "subsidy_programme"
	KindReceivable = "provider_receivable"
	KindClearing   = "clearing" // one per peer city
	KindFeeIncome  = "fee_income"
	// KindExternal accounts stand for money outside the system (the bank
	// top-up channel, the treasury, the medical insurance fund). They have no
	// floor: their negative balance is what the outside world put in.
	KindExternal = "external"
)

var kinds = map[string]bool{KindWallet: true, KindMedical: true, KindSubsidy: true, KindReceivable: true,
	KindClearing: true, KindFeeIncome: true, KindExternal: true}

// Well-known accounts created by Open.
const (
	AccountBank        = "ext:bank"         // bank top-up channel
	AccountTreasury    = "ext:treasury"     // treasury funding (财政)
	AccountMedicalFund = "ext:medical_fund" // medical insurance fund (医保基金)
	AccountFeeIncome   = "fee:income"
)

// DefaultCurrency is the currency of every account unless said otherwise.
const DefaultCurrency = "CNY"

// Account statuses.
const (
	StatusOpen   = "open"
	StatusClosed = "closed"
)

// Journal entry types.
const (
	TypeTransfer = "transfer"
	TypeHold     = "hold"
	TypePost     = "post"
	TypeVoid     = "void"
	TypeExpire   = "expire" // a hold voided by its timeout
	TypeReversal = "reversal"
)

// Hold statuses.
const (
	HoldPending = "pending"
	HoldPosted  = "posted"
	HoldVoided  = "voided"
	HoldExpired = "expired"
)

// Limits on request fields.
const (
	MaxKeyLen      = 128
	MaxKindLen     = 32
	MaxMemoLen     = 256
	MaxMetaEntries = 8
	MaxMetaKeyLen  = 32
	MaxMetaValLen  = 128
	MaxHoldTimeout = 30 * 24 * time.Hour
	// DefaultHoldTimeout applies when a HoldRequest gives none.
	DefaultHoldTimeout = 24 * time.Hour
)

// Account is a ledger account as created.
type Account struct {
	ID       string
	Kind     string
	Currency string // default CNY
	// Floor is the lowest available balance allowed (0, or negative for
	// bounded credit such as transit "ride first, pay later"). Ignored for
	// external accounts, which are unbounded.
	Floor int64
	Label string
}

// AccountInfo is an account with its current balances.
type AccountInfo struct {
	Account
	Unbounded bool
	Status    string
	// Balance is credits minus debits posted; Pending the sum of pending
	// holds debiting the account; Available = Balance - Pending.
	Balance   int64
	Pending   int64
	Available int64
	Version   int64
	CreatedAt time.Time
}

// TransferRequest asks for one transfer: debit one account, credit another.
type TransferRequest struct {
	// Key is the caller's idempotency key (required). The same key with the
	// same content returns the original result; with other content it is
	// idempotency_conflict.
	Key    string
	Debit  string
	Credit string
	Amount int64 // fen, > 0
	Kind   string
	Memo   string
	Meta   map[string]string // small: scenario, terminal, provider, …
}

// HoldRequest asks to reserve Amount on Debit for a later post to Credit.
type HoldRequest struct {
	Key     string
	Debit   string
	Credit  string
	Amount  int64
	Timeout time.Duration // 0 = DefaultHoldTimeout
	Kind    string
	Memo    string
	Meta    map[string]string
}

// Transfer is one journal entry as returned to callers.
type Transfer struct {
	ID       string
	Key      string
	Type     string
	Kind     string
	Debit    string
	Credit   string
	Amount   int64
	Currency string
	// Ref is the hold (post, void, expire) or the original transfer
	// (reversal) this entry refers to.
	Ref string
	// Link is the ID of the first transfer of a linked set.
	Link      string
	Memo      string
	Meta      map[string]string
	At        time.Time
	ExpiresAt time.Time // holds only
	// DebitAfter and CreditAfter are the two accounts' balances right after
	// this entry.
	DebitAfter  int64
	CreditAfter int64
	// Replayed is true when the result is the original one, returned again
	// for a retried idempotency key.
	Replayed bool
}

// HoldInfo is a hold with its current status.
type HoldInfo struct {
	ID        string
	Debit     string
	Credit    string
	Amount    int64
	ExpiresAt time.Time
	Status    string
	// ResolvedBy is the post, void or expire entry that ended the hold.
	ResolvedBy string
}

// TransferID formats a journal sequence number as a transfer ID.
func TransferID(seq int64) string { return "tr-" + strconv.FormatInt(seq, 10) }

// parseID parses a transfer ID; ok is false for anything malformed.
func parseID(id string) (int64, bool) {
	s, ok := strings.CutPrefix(id, "tr-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, false
	}
	return n, true
}

func refID(seq int64) string {
	if seq == 0 {
		return ""
	}
	return TransferID(seq)
}

// WalletID and MedicalID are the deterministic account ids of a resident.
func WalletID(residentID string) string  { return "w:" + residentID }
func MedicalID(residentID string) string { return "m:" + residentID }

// ClearingID is the clearing account for a peer city, ReceivableID a
// provider's receivable, ProgrammeID a subsidy programme's fund.
func ClearingID(peerCity string) string     { return "clr:" + peerCity }
func ReceivableID(providerID string) string { return "prv:" + providerID }
func ProgrammeID(programme string) string   { return "sp:" + programme }

// ---- validation ----

func invalid(field, en, zh string) *apperr.Error { return apperr.Invalid(field, en, zh) }

func checkText(field, s string, max int) error {
	if len(s) > max {
		return invalid(field, fmt.Sprintf("%s is longer than %d bytes", field, max), fmt.Sprintf("%s 超过 %d 字节", field, max))
	}
	if !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
		return invalid(field, field+" is not valid UTF-8 text", field+" 不是有效的 UTF-8 文本")
	}
	return nil
}

func checkKey(key string) error {
	if strings.TrimSpace(key) == "" {
		return invalid("key", "an idempotency key is required", "缺少幂等键")
	}
	return checkText("key", key, MaxKeyLen)
}

func checkAccountRef(field, id string) error {
	if id == "" {
		return invalid(field, field+" account is required", "缺少"+field+"账户")
	}
	return checkText(field, id, MaxKeyLen)
}

func checkAmount(a int64) error {
	if a <= 0 {
		return apperr.New(apperr.InvalidAmount)
	}
	return nil
}

func checkMeta(kind, memo string, meta map[string]string) error {
	if err := checkText("kind", kind, MaxKindLen); err != nil {
		return err
	}
	if err := checkText("memo", memo, MaxMemoLen); err != nil {
		return err
	}
	if len(meta) > MaxMetaEntries {
		return invalid("meta", fmt.Sprintf("at most %d metadata entries", MaxMetaEntries), fmt.Sprintf("元数据最多 %d 项", MaxMetaEntries))
	}
	for k, v := range meta {
		if k == "" {
			return invalid("meta", "empty metadata key", "元数据键为空")
		}
		if err := checkText("meta", k, MaxMetaKeyLen); err != nil {
			return err
		}
		if err := checkText("meta", v, MaxMetaValLen); err != nil {
			return err
		}
	}
	return nil
}

func (r *TransferRequest) validate() error {
	if err := checkKey(r.Key); err != nil {
		return err
	}
	if err := checkAccountRef("debit", r.Debit); err != nil {
		return err
	}
	if err := checkAccountRef("credit", r.Credit); err != nil {
		return err
	}
	if err := checkAmount(r.Amount); err != nil {
		return err
	}
	if r.Debit == r.Credit {
		return invalid("credit", "debit and credit must be different accounts", "借方与贷方不能是同一账户")
	}
	return checkMeta(r.Kind, r.Memo, r.Meta)
}

func (a *Account) validate() error {
	if err := checkAccountRef("id", a.ID); err != nil {
		return err
	}
	if !kinds[a.Kind] {
		return invalid("kind", "unknown account kind "+strconv.Quote(a.Kind), "未知账户类型")
	}
	if a.Currency == "" {
		a.Currency = DefaultCurrency
	}
	if len(a.Currency) != 3 || strings.ToUpper(a.Currency) != a.Currency || strings.ContainsAny(a.Currency, "0123456789 ") {
		return invalid("currency", "currency must be a 3-letter ISO 4217 code such as CNY", "币种须为三位大写字母代码，如 CNY")
	}
	if a.Kind == KindExternal {
		a.Floor = 0
	}
	if a.Floor > 0 {
		return invalid("floor", "the floor must be zero or negative", "透支下限须为零或负数")
	}
	return checkText("label", a.Label, MaxMemoLen)
}

// ---- canonical encodings and hashes ----

// enc builds length-prefixed canonical byte strings for hashing.
type enc struct{ b []byte }

func (e *enc) str(s string) {
	e.b = binary.AppendUvarint(e.b, uint64(len(s)))
	e.b = append(e.b, s...)
}
func (e *enc) bytes(s []byte) {
	e.b = binary.AppendUvarint(e.b, uint64(len(s)))
	e.b = append(e.b, s...)
}
func (e *enc) i64(v int64) { e.b = binary.BigEndian.AppendUint64(e.b, uint64(v)) }
func (e *enc) meta(m map[string]string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	e.i64(int64(len(keys)))
	for _, k := range keys {
		e.str(k)
		e.str(m[k])
	}
}

func sum(b []byte) [32]byte {
	h := sm3.New()
	h.Write(b)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// requestHash is the SM3 hash of what a request asks for (everything but
// its key). linkN/linkI place a transfer inside a linked set, so a linked
// transfer never matches a lone one.
func requestHash(typ string, debit, credit string, amount int64, kind, memo string, meta map[string]string, ref int64, timeout time.Duration, linkN, linkI int) []byte {
	var e enc
	e.b = make([]byte, 0, 160)
	e.str("yikatong-ledger-request-v1")
	e.str(typ)
	e.str(debit)
	e.str(credit)
	e.i64(amount)
	e.str(kind)
	e.str(memo)
	e.meta(meta)
	e.i64(ref)
	e.i64(int64(timeout / time.Millisecond))
	e.i64(int64(linkN))
	e.i64(int64(linkI))
	h := sum(e.b)
	return h[:]
}

// metaJSON is the canonical stored form of metadata ("" for none);
// encoding/json sorts map keys, so it is deterministic.
func metaJSON(m map[string]string) string {
	if len(m) == 0 {
		return ""
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// metaCopy is m as a transfer answers it: a copy, nil when empty (as
// parseMeta gives for a stored entry).
func metaCopy(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return maps.Clone(m)
}

func parseMeta(s string) map[string]string {
	if s == "" {
		return nil
	}
	var m map[string]string
	if json.Unmarshal([]byte(s), &m) != nil {
		return nil
	}
	return m
}

// entry is one journal row.
type entry struct {
	seq         int64
	key         string // "" = NULL (system events)
	reqHash     []byte
	typ         string
	kind        string
	debit       string
	credit      string
	amount      int64
	currency    string
	ref         int64
	link        int64
	debitAfter  int64
	creditAfter int64
	memo        string
	meta        string
	at          int64
	expiresAt   int64
	hash        []byte
	// debitPrev and creditPrev chain a moving entry (transfer, post,
	// reversal) to the previous moving entry of its debit and of its
	// credit account (0: none). They are an index, not content: the
	// chain hash does not cover them, and Check verifies them.
	debitPrev, creditPrev int64
}

// chainHash returns SM3(prev || canonical(entry)).
func (en *entry) chainHash(prev []byte) []byte {
	var e enc
	e.b = make([]byte, 0, 256)
	e.b = append(e.b, prev...)
	e.str("yikatong-ledger-entry-v1")
	e.i64(en.seq)
	e.str(en.key)
	e.bytes(en.reqHash)
	e.str(en.typ)
	e.str(en.kind)
	e.str(en.debit)
	e.str(en.credit)
	e.i64(en.amount)
	e.str(en.currency)
	e.i64(en.ref)
	e.i64(en.link)
	e.i64(en.debitAfter)
	e.i64(en.creditAfter)
	e.str(en.memo)
	e.str(en.meta)
	e.i64(en.at)
	e.i64(en.expiresAt)
	h := sum(e.b)
	return h[:]
}

func (en *entry) transfer() Transfer { return en.transferMeta(parseMeta(en.meta)) }

// transferMeta is transfer with its metadata given (already decoded).
func (en *entry) transferMeta(meta map[string]string) Transfer {
	t := Transfer{
		ID: TransferID(en.seq), Key: en.key, Type: en.typ, Kind: en.kind, Debit: en.debit, Credit: en.credit,
		Amount: en.amount, Currency: en.currency, Ref: refID(en.ref), Link: refID(en.link), Memo: en.memo,
		Meta: meta, At: time.UnixMilli(en.at).UTC(), DebitAfter: en.debitAfter, CreditAfter: en.creditAfter,
	}
	if en.expiresAt != 0 {
		t.ExpiresAt = time.UnixMilli(en.expiresAt).UTC()
	}
	return t
}

// moves reports whether an entry type changes posted balances.
func moves(typ string) bool { return typ == TypeTransfer || typ == TypePost || typ == TypeReversal }

// addOK adds without overflow.
func addOK(a, b int64) (int64, bool) {
	c := a + b
	if (b > 0 && c < a) || (b < 0 && c > a) {
		return 0, false
	}
	return c, true
}
