// Package apperr holds yikatong's stable error codes and their bilingual
// messages. Every error a client can see — on the command line, in a
// problem+json answer or in a per-record batch report — is an *Error with a
// code from this catalogue, an HTTP status and an English and Chinese text.
//
// Domain packages return *Error values (wrapping causes where useful);
// the HTTP layer turns them into problem+json, and anything that is not an
// *Error becomes "internal" without leaking its text.
package apperr

import (
	"errors"
	"fmt"
	"net/http"
)

// Code is a stable, machine-readable error code. Codes never change meaning.
type Code string

// The catalogue. Add codes here, never inline strings elsewhere.
const (
	// e-codes and trust (CONTRACT.md)
	Malformed         Code = "malformed"
	UnsupportedScheme Code = "unsupported_scheme"
	UnknownIssuer     Code = "unknown_issuer"
	UnknownKey        Code = "unknown_key"
	BadSignature      Code = "bad_signature"
	Expired           Code = "expired"
	NotYetValid       Code = "not_yet_valid"
	Revoked           Code = "revoked"
	TrustExpired      Code = "trust_expired"
	// BadTrustBundle: a trust bundle that does not parse or whose node
	// signature does not verify.
	BadTrustBundle Code = "bad_trust_bundle"

	// ID numbers
	BadLength      Code = "bad_length"
	BadFormat      Code = "bad_format"
	BadRegion      Code = "bad_region"
	BadBirthDate   Code = "bad_birth_date"
	BadCheckDigit  Code = "bad_check_digit"
	BadNationality Code = "bad_nationality"

	// API
	Unauthorized        Code = "unauthorized"
	Forbidden           Code = "forbidden"
	NotFound            Code = "not_found"
	ValidationFailed    Code = "validation_failed"
	BodyTooLarge        Code = "body_too_large"
	MethodNotAllowed    Code = "method_not_allowed"
	Conflict            Code = "conflict"
	AlreadyExists       Code = "already_exists"
	RateLimited         Code = "rate_limited"
	Unavailable         Code = "unavailable"
	Internal            Code = "internal"
	IdempotencyConflict Code = "idempotency_conflict"

	// residents and cards
	CardNotActive Code = "card_not_active"
	CardLocked    Code = "card_locked"
	BadPIN        Code = "bad_pin"
	BadTransition Code = "bad_transition"
	PINNotSet     Code = "pin_not_set"

	// ledger
	InsufficientFunds Code = "insufficient_funds"
	InvalidAmount     Code = "invalid_amount"
	AccountClosed     Code = "account_closed"
	UnknownAccount    Code = "unknown_account"
	CurrencyMismatch  Code = "currency_mismatch"
	HoldNotPending    Code = "hold_not_pending"
	ReversalExceeds   Code = "reversal_exceeds"
	Overflow          Code = "overflow"

	// scans
	Replayed Code = "replayed"
	// TerminalDisabled: the terminal (or its provider) has been disabled.
	TerminalDisabled Code = "terminal_disabled"
	// BatchTampered: an offline batch whose terminal signature does not verify.
	BatchTampered Code = "batch_tampered"
	// ClockSkew: an offline record's time is too far from the node's clock.
	ClockSkew Code = "clock_skew"
	// DuplicateRecord: an offline record already applied (reported, not charged again).
	DuplicateRecord Code = "duplicate_record"
	// OutOfOrder: an offline record whose sequence number is not above the previous one in its batch,
	// or is below a record the terminal uploaded before while its time is after that record's.
	OutOfOrder Code = "out_of_order"
	// ClockBack: an offline record dated before a record its terminal made earlier (by sequence number).
	ClockBack Code = "clock_back"
	// UnknownHolder: the card or code belongs to no resident of this city (or is not bound).
	UnknownHolder Code = "unknown_holder"
	// PINRequired: the scenario asks for the holder's PIN at this amount and none was sent.
	PINRequired Code = "pin_required"

	// service catalogue
	NotEligible      Code = "not_eligible"
	ScenarioDisabled Code = "scenario_disabled"

	// federation
	// BadMemberList: a region member list that does not parse, is not
	// signed by the region anchor, or has expired.
	BadMemberList Code = "bad_member_list"
	// UnknownPeer: a federation message from a node not in the member list.
	UnknownPeer Code = "unknown_peer"
	// HomeUnreachable: the code's home city did not answer in time and the
	// scenario does not allow accepting without it.
	HomeUnreachable Code = "home_unreachable"
	// RiskLimit: accepting without the home city would exceed the card's
	// offline risk limit.
	RiskLimit Code = "risk_limit"
	// DaySettled: the message changes a day both cities have signed the
	// statement of; a correction goes in a new message dated today.
	DaySettled Code = "day_settled"
)

type entry struct {
	status int
	en, zh string
}

var catalogue = map[Code]entry{
	Malformed:         {400, "the code is malformed", "码格式错误"},
	UnsupportedScheme: {400, "the code's scheme is not supported", "不支持的码制"},
	UnknownIssuer:     {400, "the code's issuer is not trusted", "发码方不受信任"},
	UnknownKey:        {400, "the code was signed by an unknown key", "签名密钥未知"},
	BadSignature:      {400, "the code's signature is not valid", "签名无效"},
	Expired:           {400, "the code has expired", "码已过期"},
	NotYetValid:       {400, "the code is not yet valid", "码尚未生效"},
	Revoked:           {400, "the card has been reported lost or cancelled", "卡已挂失或注销"},
	TrustExpired:      {400, "the trust bundle has expired; refresh it before accepting codes", "信任列表已过期，请更新后再受理"},
	BadTrustBundle:    {400, "the trust bundle is malformed or its signature is not valid", "信任列表格式错误或签名无效"},

	BadLength:      {400, "the ID number has the wrong length", "证件号码长度错误"},
	BadFormat:      {400, "the ID number contains invalid characters", "证件号码含有非法字符"},
	BadRegion:      {400, "the ID number's region code is not valid", "证件号码地区码无效"},
	BadBirthDate:   {400, "the ID number's date of birth is not a real past date", "证件号码出生日期无效"},
	BadCheckDigit:  {400, "the ID number's check character is wrong", "证件号码校验位错误"},
	BadNationality: {400, "the permanent residence card's nationality code is not valid", "永久居留证国籍代码无效"},

	Unauthorized:        {401, "sign in first: the credential is missing, wrong or expired", "请先登录：凭证缺失、错误或已过期"},
	Forbidden:           {403, "you are not allowed to do this", "无权执行此操作"},
	NotFound:            {404, "not found", "未找到"},
	ValidationFailed:    {422, "the request is not valid", "请求参数无效"},
	BodyTooLarge:        {413, "the request body is too large", "请求体过大"},
	MethodNotAllowed:    {405, "method not allowed", "不支持的请求方法"},
	Conflict:            {409, "the request conflicts with the current state", "请求与当前状态冲突"},
	AlreadyExists:       {409, "it already exists", "已存在"},
	RateLimited:         {429, "too many requests; try again later", "请求过于频繁，请稍后再试"},
	Unavailable:         {503, "the service is temporarily unavailable; retry (a request with an idempotency key: with the same key)", "服务暂时不可用，请重试（带幂等键的请求请使用相同的幂等键）"},
	Internal:            {500, "internal error", "内部错误"},
	IdempotencyConflict: {409, "the idempotency key was already used with different content", "幂等键已用于不同的请求内容"},

	CardNotActive: {409, "the card is not active", "卡片状态非正常"},
	CardLocked:    {423, "the card is locked after too many wrong PINs; ask staff to unlock it", "密码错误次数过多，卡片已锁定，请联系工作人员解锁"},
	BadPIN:        {401, "wrong card number or PIN", "卡号或密码错误"},
	BadTransition: {409, "the card cannot go to that status from its current one", "卡片当前状态不允许此操作"},
	PINNotSet:     {409, "no PIN has been set for this card yet; ask staff to set one", "该卡尚未设置密码，请联系工作人员设置"},

	InsufficientFunds: {409, "insufficient funds", "余额不足"},
	InvalidAmount:     {422, "the amount must be a positive whole number of fen", "金额必须为正整数（分）"},
	AccountClosed:     {409, "the account is closed", "账户已关闭"},
	UnknownAccount:    {404, "unknown account", "账户不存在"},
	CurrencyMismatch:  {422, "the accounts hold different currencies", "账户币种不一致"},
	HoldNotPending:    {409, "the hold is no longer pending", "预授权已不处于待处理状态"},
	ReversalExceeds:   {409, "the reversal exceeds what remains of the original transfer", "冲正金额超过原交易剩余金额"},
	Overflow:          {422, "the amount would overflow", "金额溢出"},

	Replayed:         {409, "this code has already been used", "此码已被使用"},
	TerminalDisabled: {403, "this terminal has been disabled", "该终端已停用"},
	BatchTampered:    {422, "the offline batch's signature does not verify: it was altered, not made by this terminal, or signed with a batch key replaced since (credentials reissued)", "离线批次签名无效：已被篡改、并非本终端生成，或所用批次密钥已因重新签发凭据而作废"},
	ClockSkew:        {422, "the record's time is too far from the node's clock", "记录时间与节点时钟偏差过大"},
	DuplicateRecord:  {409, "this offline record was already applied", "该离线记录已处理"},
	OutOfOrder:       {422, "this offline record is out of order: in its batch, or numbered before a record of this terminal that is dated earlier", "该离线记录顺序错误：在批次内乱序，或编号早于本终端某条时间更早的记录"},
	ClockBack:        {422, "this offline record is dated before a record the terminal made earlier; its clock went back", "该离线记录的时间早于本终端先前生成的记录，终端时钟被回拨"},
	UnknownHolder:    {404, "no resident of this city holds this card or code", "本市无此卡或码的持有人"},
	PINRequired:      {401, "this payment needs the holder's PIN", "此笔支付需要输入密码"},

	NotEligible:      {403, "the holder is not eligible for this service", "持卡人不符合该服务的使用条件"},
	ScenarioDisabled: {409, "this service is currently disabled", "该服务场景已停用"},

	BadMemberList:   {422, "the region member list is malformed, expired or not signed by the region anchor", "区域成员列表格式错误、已过期或非区域根密钥签名"},
	UnknownPeer:     {403, "the sending node is not a member of this region", "发送节点不是本区域成员"},
	HomeUnreachable: {503, "the card's home city could not be reached; try again", "无法连接持卡人所属城市，请重试"},
	RiskLimit:       {409, "the card's offline risk limit in this city is used up", "该卡在本市的脱机风险额度已用完"},
	DaySettled:      {409, "the day of this message is settled: both cities signed its statement; a correction must be a new message dated today", "该消息所属日期已结算（双方已签署结算单），更正须以当日新消息发出"},
}

// Error is a client-visible error with a stable code.
type Error struct {
	Code   Code
	Status int
	// Message and MessageZh are the catalogue texts, possibly refined.
	Message   string
	MessageZh string
	// Detail is an optional, safe, specific explanation (never personal data).
	Detail   string
	DetailZh string
	// Field names the offending input field, if any.
	Field string
	cause error
}

// New returns the catalogue error for code.
func New(code Code) *Error {
	e, ok := catalogue[code]
	if !ok {
		e = catalogue[Internal]
	}
	return &Error{Code: code, Status: e.status, Message: e.en, MessageZh: e.zh}
}

// Newf returns the catalogue error for code with a specific detail in both languages.
func Newf(code Code, detailEN, detailZH string) *Error {
	err := New(code)
	err.Detail, err.DetailZh = detailEN, detailZH
	return err
}

// Invalid reports a validation failure on one field.
func Invalid(field, detailEN, detailZH string) *Error {
	err := Newf(ValidationFailed, detailEN, detailZH)
	err.Field = field
	return err
}

// Wrap attaches an internal cause (logged, never shown) to a catalogue error.
func Wrap(code Code, cause error) *Error {
	err := New(code)
	err.cause = cause
	return err
}

func (e *Error) Error() string {
	if e.Detail != "" {
		return string(e.Code) + ": " + e.Detail
	}
	if e.cause != nil {
		return fmt.Sprintf("%s: %s (%v)", e.Code, e.Message, e.cause)
	}
	return string(e.Code) + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.cause }

// Is lets errors.Is match on the code: errors.Is(err, apperr.New(apperr.Expired)).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// As returns err as an *Error; anything else becomes Internal wrapping it.
func As(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return Wrap(Internal, err)
}

// CodeOf returns the code of err ("" for nil, Internal for foreign errors).
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	return As(err).Code
}

// Text returns the English and Chinese texts, detail preferred.
func (e *Error) Text() (en, zh string) {
	en, zh = e.Message, e.MessageZh
	if e.Detail != "" {
		en = e.Detail
	}
	if e.DetailZh != "" {
		zh = e.DetailZh
	}
	return en, zh
}

// JSON is the short form used by the CLI and in batch reports:
// {"code","message","message_zh"}.
type JSON struct {
	Code      Code   `json:"code"`
	Message   string `json:"message"`
	MessageZh string `json:"message_zh"`
	Field     string `json:"field,omitempty"`
}

// ToJSON returns the short JSON form of err.
func ToJSON(err error) JSON {
	e := As(err)
	en, zh := e.Text()
	return JSON{Code: e.Code, Message: en, MessageZh: zh, Field: e.Field}
}

// Problem is the RFC 9457 problem+json body.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail"`
	DetailZh string `json:"detail_zh"`
	Code     Code   `json:"code"`
	Field    string `json:"field,omitempty"`
	// Retryable tells the client that the same request (same idempotency key)
	// may be sent again.
	Retryable bool `json:"retryable,omitempty"`
}

// ToProblem returns the problem+json body of err.
func ToProblem(err error) Problem {
	e := As(err)
	en, zh := e.Text()
	status := e.Status
	if status == 0 {
		status = http.StatusInternalServerError
	}
	return Problem{
		Type:      "https://yikatong.example/errors/" + string(e.Code),
		Title:     e.Message,
		Status:    status,
		Detail:    en,
		DetailZh:  zh,
		Code:      e.Code,
		Field:     e.Field,
		Retryable: e.Code == Unavailable,
	}
}

// Codes lists every code in the catalogue (for docs and tests).
func Codes() []Code {
	out := make([]Code, 0, len(catalogue))
	for c := range catalogue {
		out = append(out, c)
	}
	return out
}
