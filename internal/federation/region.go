package federation

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/trust"
)

// DefaultMembersTTL is the lifetime of a member list signed by `yikatong
// region sign` / `region up` unless told otherwise.
const DefaultMembersTTL = 30 * 24 * time.Hour

var cityRe = regexp.MustCompile(`^CN-[0-9]{6}$`)

// Member is one city node of the region as the anchor vouches for it.
type Member struct {
	City string `json:"city"`
	// BaseURL is where the node answers (…/v1/federation/…); BundleURL
	// defaults to BaseURL + "/v1/trust".
	BaseURL   string    `json:"base_url"`
	BundleURL string    `json:"bundle_url,omitempty"`
	NodeKey   ecode.JWK `json:"node_key"`
}

// TrustURL is the member's bundle URL.
func (m Member) TrustURL() string {
	if m.BundleURL != "" {
		return m.BundleURL
	}
	return strings.TrimRight(m.BaseURL, "/") + "/v1/trust"
}

// MemberList is the region's signed list of members.
type MemberList struct {
	Region    string           `json:"region"`
	Version   string           `json:"version"`
	IssuedAt  time.Time        `json:"issued_at"`
	ExpiresAt time.Time        `json:"expires_at"`
	Members   []Member         `json:"members"`
	Signature *trust.Signature `json:"signature,omitempty"`

	keys map[string]ecode.PublicKey
}

func badList(en, zh string) error { return apperr.Newf(apperr.BadMemberList, en, zh) }

// SignMembers signs a member list with the region anchor key: the anchor's
// signature (SM2/SM3 or Ed25519, r||s) over the RFC 8785 canonical JSON of
// the list without its "signature" member — the same scheme as the trust
// bundle (docs/trust-bundle.md). Version defaults to the issue time in
// Unix milliseconds, so a newer list always has a larger version.
func SignMembers(l MemberList, anchor ecode.Signer) ([]byte, error) {
	if l.IssuedAt.IsZero() {
		l.IssuedAt = time.Now()
	}
	l.IssuedAt = l.IssuedAt.UTC().Truncate(time.Second)
	if l.ExpiresAt.IsZero() {
		l.ExpiresAt = l.IssuedAt.Add(DefaultMembersTTL)
	}
	l.ExpiresAt = l.ExpiresAt.UTC().Truncate(time.Second)
	if l.Version == "" {
		l.Version = fmt.Sprint(time.Now().UnixMilli())
	}
	if l.Members == nil {
		l.Members = []Member{}
	}
	sort.Slice(l.Members, func(i, j int) bool { return l.Members[i].City < l.Members[j].City })
	if err := l.index(); err != nil {
		return nil, err
	}
	l.Signature = nil
	unsigned, err := json.Marshal(l)
	if err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	canon, err := trust.Canonical(unsigned, "signature")
	if err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	sig, err := anchor.Sign(canon)
	if err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	l.Signature = &trust.Signature{Alg: anchor.Alg().String(), Kid: anchor.Public().KidString(), Value: base64.RawURLEncoding.EncodeToString(sig)}
	return json.MarshalIndent(l, "", "  ")
}

// ParseMembers checks a member list against the region anchor's public key
// and its expiry as of now. A list signed by another key, altered, expired
// or naming a city twice is bad_member_list.
func ParseMembers(data []byte, anchor ecode.PublicKey, now time.Time) (*MemberList, error) {
	var l MemberList
	if err := json.Unmarshal(data, &l); err != nil {
		return nil, badList("the member list is not valid JSON", "成员列表不是有效的JSON")
	}
	if l.Signature == nil {
		return nil, badList("the member list is not signed", "成员列表未签名")
	}
	if l.Signature.Kid != anchor.KidString() || l.Signature.Alg != anchor.Alg.String() {
		return nil, badList("the member list is signed by another key than the region anchor", "成员列表非由区域根密钥签名")
	}
	sig, err := base64.RawURLEncoding.DecodeString(l.Signature.Value)
	if err != nil {
		return nil, badList("the member list's signature is not base64url", "成员列表签名编码错误")
	}
	canon, err := trust.Canonical(data, "signature")
	if err != nil {
		return nil, badList("the member list cannot be canonicalised: "+err.Error(), "成员列表无法规范化")
	}
	if !anchor.Verify(canon, sig) {
		return nil, badList("the member list's signature is not valid", "成员列表签名无效")
	}
	if !now.Before(l.ExpiresAt) {
		return nil, badList("the member list expired at "+l.ExpiresAt.Format(time.RFC3339), "成员列表已过期")
	}
	if err := l.index(); err != nil {
		return nil, err
	}
	return &l, nil
}

func (l *MemberList) index() error {
	l.keys = map[string]ecode.PublicKey{}
	for _, m := range l.Members {
		if !cityRe.MatchString(m.City) {
			return badList("member city "+m.City+" is not of the form CN-NNNNNN", "成员城市编号格式错误")
		}
		if _, dup := l.keys[m.City]; dup {
			return badList("city "+m.City+" is listed twice", "成员城市重复")
		}
		if !strings.HasPrefix(m.BaseURL, "http://") && !strings.HasPrefix(m.BaseURL, "https://") {
			return badList("member "+m.City+" has no http(s) base_url", "成员缺少有效的地址")
		}
		k, err := ecode.PublicKeyFromJWK(m.NodeKey)
		if err != nil {
			return badList("member "+m.City+"'s node key: "+err.Error(), "成员节点公钥无效")
		}
		l.keys[m.City] = k
	}
	return nil
}

// Member returns the member entry and node key of city.
func (l *MemberList) Member(city string) (Member, ecode.PublicKey, bool) {
	if l == nil {
		return Member{}, ecode.PublicKey{}, false
	}
	k, ok := l.keys[city]
	if !ok {
		return Member{}, ecode.PublicKey{}, false
	}
	for _, m := range l.Members {
		if m.City == city {
			return m, k, true
		}
	}
	return Member{}, ecode.PublicKey{}, false
}

// ReadAnchorKey reads a region anchor public key: a JWK file ({"kid","alg",
// "crv","x","y"}), as `yikatong region keygen` writes next to the private key.
func ReadAnchorKey(data []byte) (ecode.PublicKey, error) {
	var j ecode.JWK
	if err := json.Unmarshal(data, &j); err != nil {
		return ecode.PublicKey{}, badList("the region anchor key is not a JWK: "+err.Error(), "区域根公钥不是有效的JWK")
	}
	k, err := ecode.PublicKeyFromJWK(j)
	if err != nil {
		return ecode.PublicKey{}, badList("the region anchor key: "+err.Error(), "区域根公钥无效")
	}
	return k, nil
}
