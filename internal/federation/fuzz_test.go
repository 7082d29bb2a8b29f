package federation

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/trust"
)

// resign re-signs a JSON object with key the way SignMembers and Seal do
// (signature over the canonical JSON without "signature"), so the fuzzers
// reach the checks behind the signature. Input that is not a JSON object is
// returned as it is.
func resign(data []byte, key ecode.Signer) []byte {
	var m map[string]json.RawMessage
	if json.Unmarshal(data, &m) != nil || m == nil {
		return data
	}
	delete(m, "signature")
	unsigned, err := json.Marshal(m)
	if err != nil {
		return data
	}
	canon, err := trust.Canonical(unsigned, "signature")
	if err != nil {
		return data
	}
	sig, err := key.Sign(canon)
	if err != nil {
		return data
	}
	s, _ := json.Marshal(trust.Signature{Alg: key.Alg().String(), Kid: key.Public().KidString(), Value: base64.RawURLEncoding.EncodeToString(sig)})
	m["signature"] = s
	out, _ := json.Marshal(m)
	return out
}

func fuzzKey(f *testing.F) ecode.Signer {
	k, err := ecode.GenerateEd25519() // fast: the fuzzers sign every input
	if err != nil {
		f.Fatal(err)
	}
	return k
}

// FuzzParseMembers: whatever a member list says — signed by the anchor or
// not — ParseMembers answers bad_member_list or a list whose every member
// is a well-formed city with a usable node key, never a panic.
func FuzzParseMembers(f *testing.F) {
	anchor, n1, n2 := fuzzKey(f), fuzzKey(f), fuzzKey(f)
	l := MemberList{Region: "yrd", Members: []Member{
		{City: "CN-310000", BaseURL: "http://127.0.0.1:1", NodeKey: n1.Public().JWK()},
		{City: "CN-330100", BaseURL: "http://127.0.0.1:2", NodeKey: n2.Public().JWK()},
	}}
	signed, err := SignMembers(l, anchor)
	if err != nil {
		f.Fatal(err)
	}
	now := time.Now()
	f.Add(signed, false)
	f.Add(signed, true)
	f.Add([]byte(`{"region":"yrd","members":[{"city":"CN-310000"},{"city":"CN-310000"}]}`), true)
	f.Add([]byte(`{"members":null,"expires_at":"1999-01-01T00:00:00Z"}`), true)
	f.Add([]byte(`[]`), false)
	f.Fuzz(func(t *testing.T, data []byte, sign bool) {
		if sign {
			data = resign(data, anchor)
		}
		got, err := ParseMembers(data, anchor.Public(), now)
		if err != nil {
			var ae *apperr.Error
			if !errors.As(err, &ae) || ae.Code != apperr.BadMemberList {
				t.Fatalf("error %v (%T), want bad_member_list", err, err)
			}
			return
		}
		if !got.ExpiresAt.After(now) {
			t.Fatalf("an expired list was accepted: %v", got.ExpiresAt)
		}
		seen := map[string]bool{}
		for _, m := range got.Members {
			if !cityRe.MatchString(m.City) || seen[m.City] {
				t.Fatalf("member %q accepted (seen before: %v)", m.City, seen[m.City])
			}
			seen[m.City] = true
			if _, k, ok := got.Member(m.City); !ok || !k.Valid() {
				t.Fatalf("member %s has no usable node key", m.City)
			}
		}
	})
}

// FuzzOpen: an envelope from a peer — signed by the sender's node key or
// not — is refused with one of Open's codes or opened with exactly what
// Open promises (a member sender other than self, addressed to self, the
// wanted kind, within the skew), never a panic.
func FuzzOpen(f *testing.F) {
	anchor, a, b := fuzzKey(f), fuzzKey(f), fuzzKey(f)
	signed, err := SignMembers(MemberList{Region: "yrd", Members: []Member{
		{City: "CN-310000", BaseURL: "http://127.0.0.1:1", NodeKey: a.Public().JWK()},
		{City: "CN-330100", BaseURL: "http://127.0.0.1:2", NodeKey: b.Public().JWK()},
	}}, anchor)
	if err != nil {
		f.Fatal(err)
	}
	now := time.Now()
	members, err := ParseMembers(signed, anchor.Public(), now)
	if err != nil {
		f.Fatal(err)
	}
	env, err := Seal("CN-330100", "CN-310000", "charge", now, map[string]any{"id": "m1", "amount_fen": 200}, b)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(env, false)
	f.Add(env, true)
	f.Add([]byte(`{"from":"CN-310000","to":"CN-310000","kind":"charge"}`), true)
	f.Add([]byte(`{"from":"CN-330100","to":"CN-310000","kind":"charge","at":"2001-01-01T00:00:00Z","body":null}`), true)
	f.Add([]byte(`null`), false)
	f.Fuzz(func(t *testing.T, data []byte, sign bool) {
		if sign {
			data = resign(data, b)
		}
		e, err := Open(data, "CN-310000", "charge", members, now)
		if err != nil {
			switch apperr.CodeOf(err) {
			case apperr.ValidationFailed, apperr.UnknownPeer, apperr.BadSignature, apperr.ClockSkew:
			default:
				t.Fatalf("error %v, want one of Open's codes", err)
			}
			return
		}
		if e.From != "CN-330100" || e.To != "CN-310000" || e.Kind != "charge" {
			t.Fatalf("opened %+v", e)
		}
		if d := now.Sub(e.At); d > MaxSkew || d < -MaxSkew {
			t.Fatalf("opened an envelope %v off the clock", d)
		}
	})
}
