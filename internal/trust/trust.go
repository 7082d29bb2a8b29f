// Package trust is the signed trust bundle: everything an offline terminal
// needs to check any recognised e-code — the issuer keys of this city and of
// its peers, their deny lists of lost or cancelled cards, and an expiry —
// signed by the city node's node key. See docs/trust-bundle.md.
//
// # Format
//
//	{"issuer":"CN-410100","issued_at":"…","expires_at":"…",
//	 "keys":[{"kid","alg","crv","x","y"?,"not_after"?}],
//	 "deny":{"subjects":[{"sub","at"}],"cards":[{"card_hash","at"}]},
//	 "peers":[{"issuer","expires_at","keys":[…],"deny":{…}}],
//	 "signature":{"alg":"SM2","kid":"…","value":"…"}}
//
// Times are RFC 3339 UTC, whole seconds. Keys are JWK style (ecode.JWK).
// A deny entry keeps its revocation time: a code counts as revoked only if
// the card was revoked at or before the instant the code is checked for, so
// an offline scan made before a card was reported lost stays valid when it
// is uploaded later. Revocation times are rounded down to the second (a
// revocation never takes effect later than it happened).
//
// # Signature
//
// signature.value is base64url (no padding) of the 64-byte signature (SM2
// with SM3 and the default user id, r||s; or Ed25519) over the RFC 8785 JSON
// Canonicalization Scheme form of the bundle object with its "signature"
// member removed (Canonical). Verifiers canonicalise the bytes they
// received, so whitespace, member order and members added by later versions
// do not matter; duplicate member names are rejected. signature.kid is the
// node key's kid; the terminal pins the node public key (a JWK) when it is
// provisioned and passes it to Parse.
//
// This package imports no database code: a terminal program can use it
// alone. internal/keys and the node supply Build's inputs.
package trust

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"sort"
	"strings"
	"time"

	"github.com/emmansun/gmsm/sm3"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ecode"
)

// DefaultTTL is a bundle's lifetime when BuildInput.TTL is zero.
const DefaultTTL = 24 * time.Hour

// Bundle is a parsed or built trust bundle. Do not modify it after Build or
// Parse: its look-up indexes are built once.
type Bundle struct {
	Issuer    string    `json:"issuer"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
	Keys      []Key     `json:"keys"`
	Deny      Deny      `json:"deny"`
	Peers     []Peer    `json:"peers"`
	// Scenarios: the issuing city's scenarios by id, each "offline" (may
	// be accepted offline), "online" (online only) or "disabled"
	// (CheckScenario). Absent in bundles of nodes older than it.
	Scenarios map[string]string `json:"scenarios,omitempty"`
	Signature *Signature        `json:"signature,omitempty"`

	keys    ecode.KeyMap
	subs    map[string]map[string]time.Time // issuer → subject → revoked at
	cards   map[string]map[string]time.Time // issuer → card hash → revoked at
	peerExp map[string]time.Time
	regions map[string][]string // a peer's card region code → the peer
}

// Key is an issuer key in a bundle.
type Key struct {
	ecode.JWK
	NotAfter *time.Time `json:"not_after,omitempty"`
}

// Deny lists revoked card tokens (the e-code subject) and physical cards.
type Deny struct {
	Subjects []DeniedSubject `json:"subjects"`
	Cards    []DeniedCard    `json:"cards"`
}

// DeniedSubject is a card token revoked at At.
type DeniedSubject struct {
	Subject string    `json:"sub"`
	At      time.Time `json:"at"`
}

// DeniedCard is a physical card (by CardHash of its number) revoked at At.
type DeniedCard struct {
	CardHash string    `json:"card_hash"`
	At       time.Time `json:"at"`
}

// Peer is another city's trust data, carried inside this city's bundle.
type Peer struct {
	Issuer    string    `json:"issuer"`
	ExpiresAt time.Time `json:"expires_at"`
	Keys      []Key     `json:"keys"`
	Deny      Deny      `json:"deny"`
}

// Signature is the node's signature over the bundle.
type Signature struct {
	Alg   string `json:"alg"`
	Kid   string `json:"kid"`
	Value string `json:"value"`
}

// Revocation is one lost, replaced or cancelled card: its e-code subject
// (card token) and/or its card hash, and when it was revoked.
type Revocation struct {
	Subject  string
	CardHash string
	At       time.Time
}

// PeerBundle is a peer city's input to Build.
type PeerBundle struct {
	Issuer    string
	ExpiresAt time.Time
	Keys      []ecode.PublicKey
	Deny      []Revocation
}

// A scenario's state in a bundle (Bundle.Scenarios).
const (
	ScenarioOffline  = "offline"  // enabled; its scans may be accepted offline
	ScenarioOnline   = "online"   // enabled; online only (its offline records are rejected)
	ScenarioDisabled = "disabled" // switched off by the city
)

// CheckScenario says whether a terminal may accept a scan of scenario id
// offline, as the bundle's issuer would take the record: nil if so;
// forbidden for an online-only scenario, scenario_disabled, or not_found
// for a scenario the city does not have. A bundle without scenarios (from
// a node older than them) says nothing: nil.
func (b *Bundle) CheckScenario(id string) error {
	if b.Scenarios == nil {
		return nil
	}
	switch b.Scenarios[id] {
	case ScenarioOffline:
		return nil
	case ScenarioOnline:
		return apperr.Newf(apperr.Forbidden, "scenario "+id+" may not run offline: scan it online",
			"服务场景 "+id+" 不允许脱机受理，请联机扫码")
	case ScenarioDisabled:
		return apperr.Newf(apperr.ScenarioDisabled, "scenario "+id+" is disabled", "服务场景 "+id+" 已停用")
	}
	return apperr.Newf(apperr.NotFound, "the city has no scenario "+id, "本市没有服务场景 "+id)
}

// BuildInput is everything Build needs; no database access.
type BuildInput struct {
	Issuer string
	Keys   []ecode.PublicKey
	Deny   []Revocation
	Peers  []PeerBundle
	// Scenarios: scenario id → ScenarioOffline, ScenarioOnline or
	// ScenarioDisabled.
	Scenarios map[string]string
	IssuedAt  time.Time     // default now
	TTL       time.Duration // default DefaultTTL
}

// CardHash is how a physical card number appears on deny lists:
// base64url of SM3 iterated CardHashRounds times, the first over
// "yikatong/card/v2:" + number, each next over the previous digest. It is
// unkeyed so that a terminal can compute it from the card it reads (about
// 50 µs); the rounds make guessing the numbers behind a published list
// slow (card numbers have 11 random digits: 10¹¹ × 256 SM3 rounds is about
// two core-months), but it is no secret.
func CardHash(cardNumber string) string {
	h := sm3.Sum([]byte("yikatong/card/v2:" + cardNumber))
	for i := 1; i < CardHashRounds; i++ {
		h = sm3.Sum(h[:])
	}
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// CardHashRounds is the number of SM3 rounds of CardHash.
const CardHashRounds = 256

func utcSec(t time.Time) time.Time { return t.UTC().Truncate(time.Second) }

func keysOut(in []ecode.PublicKey) []Key {
	out := make([]Key, 0, len(in))
	for _, k := range in {
		key := Key{JWK: k.JWK()}
		if !k.NotAfter.IsZero() {
			na := utcSec(k.NotAfter)
			key.NotAfter = &na
		}
		out = append(out, key)
	}
	return out
}

func denyOut(in []Revocation) Deny {
	subs, cards := map[string]time.Time{}, map[string]time.Time{}
	for _, r := range in {
		at := utcSec(r.At)
		if r.Subject != "" {
			if t, ok := subs[r.Subject]; !ok || at.Before(t) {
				subs[r.Subject] = at
			}
		}
		if r.CardHash != "" {
			if t, ok := cards[r.CardHash]; !ok || at.Before(t) {
				cards[r.CardHash] = at
			}
		}
	}
	d := Deny{Subjects: []DeniedSubject{}, Cards: []DeniedCard{}}
	for s, at := range subs {
		d.Subjects = append(d.Subjects, DeniedSubject{s, at})
	}
	for c, at := range cards {
		d.Cards = append(d.Cards, DeniedCard{c, at})
	}
	sort.Slice(d.Subjects, func(i, j int) bool { return d.Subjects[i].Subject < d.Subjects[j].Subject })
	sort.Slice(d.Cards, func(i, j int) bool { return d.Cards[i].CardHash < d.Cards[j].CardHash })
	return d
}

// Build assembles and signs a bundle with the node key and returns it with
// its JSON. Times are truncated to whole seconds, lists sorted, empty lists
// written as [].
func Build(in BuildInput, node ecode.Signer) (*Bundle, []byte, error) {
	if in.Issuer == "" {
		return nil, nil, apperr.Invalid("issuer", "the bundle needs an issuer", "信任列表须有发码方")
	}
	if node == nil {
		return nil, nil, apperr.Newf(apperr.Internal, "no node key", "无节点密钥")
	}
	if in.IssuedAt.IsZero() {
		in.IssuedAt = time.Now()
	}
	if in.TTL <= 0 {
		in.TTL = DefaultTTL
	}
	b := &Bundle{
		Issuer:    in.Issuer,
		IssuedAt:  utcSec(in.IssuedAt),
		ExpiresAt: utcSec(in.IssuedAt.Add(in.TTL)),
		Keys:      keysOut(in.Keys),
		Deny:      denyOut(in.Deny),
		Peers:     []Peer{},
	}
	for id, st := range in.Scenarios {
		if st != ScenarioOffline && st != ScenarioOnline && st != ScenarioDisabled {
			return nil, nil, apperr.Invalid("scenarios", "scenario "+id+": unknown state "+st, "服务场景 "+id+" 的状态未知："+st)
		}
		if b.Scenarios == nil {
			b.Scenarios = map[string]string{}
		}
		b.Scenarios[id] = st
	}
	for _, p := range in.Peers {
		b.Peers = append(b.Peers, Peer{Issuer: p.Issuer, ExpiresAt: utcSec(p.ExpiresAt), Keys: keysOut(p.Keys), Deny: denyOut(p.Deny)})
	}
	sort.Slice(b.Peers, func(i, j int) bool { return b.Peers[i].Issuer < b.Peers[j].Issuer })
	unsigned, err := json.Marshal(b)
	if err != nil {
		return nil, nil, apperr.Wrap(apperr.Internal, err)
	}
	canon, err := Canonical(unsigned, "signature")
	if err != nil {
		return nil, nil, apperr.Wrap(apperr.Internal, err)
	}
	sig, err := node.Sign(canon)
	if err != nil {
		return nil, nil, apperr.Wrap(apperr.Internal, err)
	}
	b.Signature = &Signature{Alg: node.Alg().String(), Kid: node.Public().KidString(), Value: base64.RawURLEncoding.EncodeToString(sig)}
	out, err := json.Marshal(b)
	if err != nil {
		return nil, nil, apperr.Wrap(apperr.Internal, err)
	}
	if err := b.index(); err != nil {
		return nil, nil, err
	}
	return b, out, nil
}

func badBundle(en, zh string) error { return apperr.Newf(apperr.BadTrustBundle, en, zh) }

// Parse reads a bundle. With nodeKey set it also checks the node signature
// (a terminal always passes its pinned key); with nil it trusts the bytes as
// given (for a file the operator vouches for, e.g. `yikatong code verify`).
// Errors are bad_trust_bundle.
func Parse(data []byte, nodeKey *ecode.PublicKey) (*Bundle, error) {
	var b Bundle
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&b); err != nil {
		return nil, badBundle("the trust bundle is not valid JSON: "+err.Error(), "信任列表不是有效的JSON")
	}
	if nodeKey != nil {
		if err := checkSignature(data, b.Signature, nodeKey); err != nil {
			return nil, err
		}
	}
	if b.Issuer == "" || b.ExpiresAt.IsZero() {
		return nil, badBundle("the trust bundle lacks issuer or expires_at", "信任列表缺少发码方或过期时间")
	}
	if err := b.index(); err != nil {
		return nil, err
	}
	return &b, nil
}

func checkSignature(data []byte, sig *Signature, nodeKey *ecode.PublicKey) error {
	if sig == nil {
		return badBundle("the trust bundle is not signed", "信任列表未签名")
	}
	if sig.Kid != nodeKey.KidString() || sig.Alg != nodeKey.Alg.String() {
		return badBundle("the trust bundle is signed by another node key", "信任列表由其他节点密钥签名")
	}
	value, err := base64.RawURLEncoding.DecodeString(sig.Value)
	if err != nil {
		return badBundle("the trust bundle's signature is not base64url", "信任列表签名编码错误")
	}
	canon, err := Canonical(data, "signature")
	if err != nil {
		return badBundle("the trust bundle cannot be canonicalised: "+err.Error(), "信任列表无法规范化")
	}
	if !nodeKey.Verify(canon, value) {
		return badBundle("the trust bundle's signature is not valid", "信任列表签名无效")
	}
	return nil
}

func (b *Bundle) index() error {
	b.keys = ecode.KeyMap{}
	b.subs = map[string]map[string]time.Time{}
	b.cards = map[string]map[string]time.Time{}
	b.peerExp = map[string]time.Time{}
	b.regions = map[string][]string{}
	add := func(issuer string, keys []Key, d Deny) error {
		if issuer == "" {
			return badBundle("a peer entry lacks its issuer", "对端条目缺少发码方")
		}
		if _, dup := b.subs[issuer]; dup {
			return badBundle("issuer "+issuer+" appears twice", "发码方重复出现")
		}
		for _, k := range keys {
			pk, err := ecode.PublicKeyFromJWK(k.JWK)
			if err != nil {
				return badBundle("key "+k.Kid+" of "+issuer+": "+err.Error(), "信任列表含无效密钥")
			}
			if k.NotAfter != nil {
				pk.NotAfter = *k.NotAfter
			}
			b.keys.Add(issuer, pk)
		}
		subs := map[string]time.Time{}
		for _, s := range d.Subjects {
			if t, ok := subs[s.Subject]; !ok || s.At.Before(t) {
				subs[s.Subject] = s.At
			}
		}
		b.subs[issuer] = subs
		cards := map[string]time.Time{}
		for _, c := range d.Cards {
			if t, ok := cards[c.CardHash]; !ok || c.At.Before(t) {
				cards[c.CardHash] = c.At
			}
		}
		b.cards[issuer] = cards
		return nil
	}
	if err := add(b.Issuer, b.Keys, b.Deny); err != nil {
		return err
	}
	for _, p := range b.Peers {
		if err := add(p.Issuer, p.Keys, p.Deny); err != nil {
			return err
		}
		b.peerExp[p.Issuer] = p.ExpiresAt
		if r := RegionCode(p.Issuer); r != "" {
			b.regions[r] = append(b.regions[r], p.Issuer)
		}
	}
	return nil
}

// RegionCode is the code a city's card numbers start with: the first
// RegionDigits digits (province and prefecture) of the 6-digit
// administrative division code its node id ends in (CN-330100 → 3301),
// or "" if the id does not end in one (the first digit of a division code
// is never 0).
func RegionCode(city string) string {
	code := city[strings.LastIndexByte(city, '-')+1:]
	if len(code) != 6 || code[0] < '1' || code[0] > '9' {
		return ""
	}
	for i := 1; i < len(code); i++ {
		if code[i] < '0' || code[i] > '9' {
			return ""
		}
	}
	return code[:RegionDigits]
}

// RegionDigits is the length of the region code a card number starts with.
const RegionDigits = 4

// KeySet returns the keys of this city and its peers as an ecode.KeySet.
func (b *Bundle) KeySet() ecode.KeySet { return b.keys }

// VerifyCode checks a code as of at: trust_expired if the bundle (or the
// issuing peer's entry) has expired, then every ecode.Verify check, then
// unknown_key if the code claims to be issued after its key's not_after,
// then revoked if its subject was revoked at or before at.
func (b *Bundle) VerifyCode(code string, at time.Time) (ecode.Claims, error) {
	c, _, err := b.VerifyCodeHeader(code, at)
	return c, err
}

// VerifyCodeHeader is VerifyCode that also returns the code's header.
func (b *Bundle) VerifyCodeHeader(code string, at time.Time) (ecode.Claims, ecode.Header, error) {
	if at.After(b.ExpiresAt) {
		return ecode.Claims{}, ecode.Header{}, apperr.New(apperr.TrustExpired)
	}
	d, err := ecode.Decode(code)
	if err != nil {
		return ecode.Claims{}, ecode.Header{}, err
	}
	iss := d.Claims.Issuer
	if exp, ok := b.peerExp[iss]; ok && at.After(exp) {
		return ecode.Claims{}, ecode.Header{}, apperr.Newf(apperr.TrustExpired,
			"the trust data for "+iss+" has expired; refresh the bundle", "该发码方的信任数据已过期，请更新信任列表")
	}
	if err := d.Check(b.keys, at); err != nil {
		return ecode.Claims{}, ecode.Header{}, err
	}
	if key, err := b.keys.Key(iss, d.Header.Kid); err == nil && !key.NotAfter.IsZero() && d.Claims.IssuedAt.After(key.NotAfter) {
		return ecode.Claims{}, ecode.Header{}, apperr.Newf(apperr.UnknownKey,
			"the code claims a time after its key was retired", "码的签发时间晚于其密钥的停用时间")
	}
	if t, ok := b.subs[iss][d.Claims.Subject]; ok && !t.After(at) {
		return ecode.Claims{}, ecode.Header{}, apperr.New(apperr.Revoked)
	}
	return d.Claims, d.Header, nil
}

// CheckCard checks a physical card offline as VerifyCode checks a code:
// trust_expired past the bundle's expires_at or, for a card with a peer's
// region code, past that peer's expires_at (the deny list held for it can
// no longer be vouched for); revoked if a deny list that speaks for the
// card lists it at or before at (CardRevoked); nil otherwise.
func (b *Bundle) CheckCard(cardNumber string, at time.Time) error {
	if at.After(b.ExpiresAt) {
		return apperr.New(apperr.TrustExpired)
	}
	if len(cardNumber) >= RegionDigits {
		for _, p := range b.regions[cardNumber[:RegionDigits]] {
			if exp, ok := b.peerExp[p]; ok && p != b.Issuer && at.After(exp) {
				return apperr.Newf(apperr.TrustExpired,
					"the trust data for "+p+" has expired; refresh the bundle", "该发卡城市的信任数据已过期，请更新信任列表")
			}
		}
	}
	if b.CardRevoked(cardNumber, at) {
		return apperr.New(apperr.Revoked)
	}
	return nil
}

// CardRevoked reports whether the physical card with this number is on a
// deny list with a revocation at or before at: this city's (any number),
// or that of the peer whose region code the number starts with. A peer
// speaks only for its own cards, as for its codes: a peer listing another
// city's card number does not revoke it here.
func (b *Bundle) CardRevoked(cardNumber string, at time.Time) bool {
	h := CardHash(cardNumber)
	revoked := func(issuer string) bool {
		t, ok := b.cards[issuer][h]
		return ok && !t.After(at)
	}
	if revoked(b.Issuer) {
		return true
	}
	if len(cardNumber) >= RegionDigits {
		for _, p := range b.regions[cardNumber[:RegionDigits]] {
			if p != b.Issuer && revoked(p) {
				return true
			}
		}
	}
	return false
}
