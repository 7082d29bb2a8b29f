package federation

import (
	"encoding/base64"
	"encoding/json"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/trust"
)

// MaxSkew is how far a peer's envelope time may be from our clock. A
// message outside it is refused with clock_skew (the sender retries; its
// outbox keeps the message), which also bounds how long a captured
// envelope could be replayed — harmless anyway, as every message is
// applied at most once by its id.
const MaxSkew = 2 * time.Minute

// Envelope is every node-to-node request and answer: who sends it to whom,
// when, a kind, a body, and the sender's node-key signature over the RFC
// 8785 canonical JSON of the envelope without "signature".
type Envelope struct {
	From      string           `json:"from"`
	To        string           `json:"to"`
	At        time.Time        `json:"at"`
	Kind      string           `json:"kind"`
	Body      json.RawMessage  `json:"body"`
	Signature *trust.Signature `json:"signature,omitempty"`
}

// Seal builds and signs an envelope.
func Seal(from, to, kind string, at time.Time, body any, node ecode.Signer) ([]byte, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	e := Envelope{From: from, To: to, At: at.UTC().Truncate(time.Millisecond), Kind: kind, Body: b}
	unsigned, err := json.Marshal(e)
	if err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	canon, err := trust.Canonical(unsigned, "signature")
	if err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	sig, err := node.Sign(canon)
	if err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	e.Signature = &trust.Signature{Alg: node.Alg().String(), Kid: node.Public().KidString(), Value: base64.RawURLEncoding.EncodeToString(sig)}
	return json.Marshal(e)
}

// Open checks an envelope addressed to self: the sender must be in the
// member list (unknown_peer), the signature must verify with the sender's
// node key from that list (bad_signature), the kind must be want, and the
// time within MaxSkew of now (clock_skew).
func Open(data []byte, self, want string, members *MemberList, now time.Time) (*Envelope, error) {
	var e Envelope
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, apperr.Newf(apperr.ValidationFailed, "the federation envelope is not valid JSON", "联邦消息不是有效的JSON")
	}
	if e.To != self {
		return nil, apperr.Newf(apperr.ValidationFailed, "the message is addressed to "+e.To+", not "+self, "消息收件方不是本节点")
	}
	_, key, ok := members.Member(e.From)
	if !ok || e.From == self {
		return nil, apperr.Newf(apperr.UnknownPeer, "node "+e.From+" is not in the region's member list", "发送节点不在区域成员列表中")
	}
	if e.Signature == nil || e.Signature.Kid != key.KidString() || e.Signature.Alg != key.Alg.String() {
		return nil, apperr.Newf(apperr.BadSignature, "the message is not signed with "+e.From+"'s node key", "消息未使用发送节点的密钥签名")
	}
	sig, err := base64.RawURLEncoding.DecodeString(e.Signature.Value)
	if err != nil {
		return nil, apperr.New(apperr.BadSignature)
	}
	canon, err := trust.Canonical(data, "signature")
	if err != nil {
		return nil, apperr.Newf(apperr.ValidationFailed, "the envelope cannot be canonicalised", "消息无法规范化")
	}
	if !key.Verify(canon, sig) {
		return nil, apperr.Newf(apperr.BadSignature, "the message's signature does not verify", "消息签名无效")
	}
	if e.Kind != want {
		return nil, apperr.Newf(apperr.ValidationFailed, "expected a "+want+" message, got "+e.Kind, "消息类型错误")
	}
	if d := now.Sub(e.At); d > MaxSkew || d < -MaxSkew {
		return nil, apperr.Newf(apperr.ClockSkew, "the message's time is "+d.Round(time.Second).String()+" from this node's clock", "消息时间与本节点时钟偏差过大")
	}
	return &e, nil
}

// openRequest opens a request envelope of kind addressed to this node
// (Open) and decodes its body, strictly, as a T.
func openRequest[T any](s *Service, data []byte, kind string) (*Envelope, T, error) {
	var body T
	env, err := Open(data, s.City, kind, s.Members(), s.Now())
	if err != nil {
		return nil, body, err
	}
	if err := strictJSON(env.Body, &body); err != nil {
		return nil, body, err
	}
	return env, body, nil
}
