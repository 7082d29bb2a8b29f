package trust

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ecode"
)

var t0 = time.Date(2024, 3, 1, 8, 0, 0, 0, time.UTC)

type fixture struct {
	node, sm, ed, peer ecode.Signer
	bundle             *Bundle
	json               []byte
}

func gen(t *testing.T, alg ecode.Alg) ecode.Signer {
	t.Helper()
	s, err := ecode.Generate(alg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newFixture(t *testing.T, deny []Revocation, peerDeny []Revocation) fixture {
	t.Helper()
	f := fixture{node: gen(t, ecode.AlgSM2), sm: gen(t, ecode.AlgSM2), ed: gen(t, ecode.AlgEdDSA), peer: gen(t, ecode.AlgSM2)}
	var err error
	f.bundle, f.json, err = Build(BuildInput{
		Issuer:   "CN-410100",
		Keys:     []ecode.PublicKey{f.sm.Public(), f.ed.Public()},
		Deny:     deny,
		Peers:    []PeerBundle{{Issuer: "CN-310000", ExpiresAt: t0.Add(12 * time.Hour), Keys: []ecode.PublicKey{f.peer.Public()}, Deny: peerDeny}},
		IssuedAt: t0,
		TTL:      24 * time.Hour,
	}, f.node)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func code(t *testing.T, s ecode.Signer, issuer, sub string, at time.Time) string {
	t.Helper()
	c, err := ecode.Issue(s, ecode.Claims{Issuer: issuer, Subject: sub, IssuedAt: at, Category: ecode.CategoryLocal, Flags: []string{"student"}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func wantCode(t *testing.T, err error, c apperr.Code) {
	t.Helper()
	if got := apperr.CodeOf(err); got != c {
		t.Fatalf("want %q, got %v", c, err)
	}
}

func TestSignedRoundTrip(t *testing.T) {
	f := newFixture(t, nil, nil)
	nk := f.node.Public()
	b, err := Parse(f.json, &nk)
	if err != nil {
		t.Fatal(err)
	}
	if b.Issuer != "CN-410100" || !b.IssuedAt.Equal(t0) || !b.ExpiresAt.Equal(t0.Add(24*time.Hour)) || len(b.Keys) != 2 || len(b.Peers) != 1 {
		t.Fatalf("bundle %+v", b)
	}
	// Contract shape: members, JWK fields, RFC 3339 UTC times, [] not null.
	var raw map[string]any
	json.Unmarshal(f.json, &raw)
	for _, m := range []string{"issuer", "issued_at", "expires_at", "keys", "deny", "peers", "signature"} {
		if _, ok := raw[m]; !ok {
			t.Fatalf("member %q missing", m)
		}
	}
	if raw["issued_at"] != "2024-03-01T08:00:00Z" {
		t.Fatalf("issued_at %v", raw["issued_at"])
	}
	keys := raw["keys"].([]any)
	sm := keys[0].(map[string]any)
	ed := keys[1].(map[string]any)
	if sm["alg"] != "SM2" || sm["crv"] != "SM2" || len(sm["x"].(string)) != 43 || len(sm["y"].(string)) != 43 {
		t.Fatalf("SM2 key %v", sm)
	}
	if ed["alg"] != "EdDSA" || ed["crv"] != "Ed25519" || ed["y"] != nil || len(ed["x"].(string)) != 43 {
		t.Fatalf("Ed25519 key %v", ed)
	}
	if !strings.Contains(string(f.json), `"deny":{"subjects":[],"cards":[]}`) {
		t.Fatalf("empty deny lists not written as []: %s", f.json)
	}
	// Codes of both algorithms and of the peer verify.
	for _, s := range []ecode.Signer{f.sm, f.ed} {
		c, err := b.VerifyCode(code(t, s, "CN-410100", "tok_a", t0), t0.Add(10*time.Second))
		if err != nil || c.Subject != "tok_a" || c.Flags[0] != "student" {
			t.Fatalf("%v %+v", err, c)
		}
	}
	if _, err := b.VerifyCode(code(t, f.peer, "CN-310000", "tok_p", t0), t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	// The peer's key does not verify for our issuer, nor ours for the peer.
	_, err = b.VerifyCode(code(t, f.peer, "CN-410100", "tok", t0), t0)
	wantCode(t, err, apperr.UnknownKey)
	_, err = b.VerifyCode(code(t, f.sm, "CN-999999", "tok", t0), t0)
	wantCode(t, err, apperr.UnknownIssuer)
}

func TestSignatureSurvivesReformatting(t *testing.T) {
	f := newFixture(t, []Revocation{{Subject: "tok<&>", At: t0}}, nil)
	nk := f.node.Public()
	var pretty bytes.Buffer
	json.Indent(&pretty, f.json, "", "  ")
	if _, err := Parse(pretty.Bytes(), &nk); err != nil {
		t.Fatalf("indented bundle rejected: %v", err)
	}
	// member order does not matter either: re-encode through a map
	var m map[string]any
	json.Unmarshal(f.json, &m)
	reordered, _ := json.Marshal(m)
	if _, err := Parse(reordered, &nk); err != nil {
		t.Fatalf("reordered bundle rejected: %v", err)
	}
}

func TestTamperedBundleRejected(t *testing.T) {
	f := newFixture(t, []Revocation{{Subject: "tok_lost", At: t0}}, nil)
	nk := f.node.Public()
	other := gen(t, ecode.AlgSM2)
	attacker := gen(t, ecode.AlgSM2)
	var sigless map[string]any
	json.Unmarshal(f.json, &sigless)
	delete(sigless, "signature")
	unsigned, _ := json.Marshal(sigless)
	cases := map[string][]byte{
		"later expiry":     bytes.Replace(f.json, []byte(`"expires_at":"2024-03-02T08:00:00Z"`), []byte(`"expires_at":"2025-03-02T08:00:00Z"`), 1),
		"deny list erased": bytes.Replace(f.json, []byte(`"sub":"tok_lost"`), []byte(`"sub":"tok_lozt"`), 1),
		"key replaced":     bytes.Replace(f.json, []byte(f.sm.Public().JWK().X), []byte(attacker.Public().JWK().X), 1),
		"unsigned":         unsigned,
		"duplicate member": bytes.Replace(f.json, []byte(`{"issuer":"CN-410100",`), []byte(`{"issuer":"CN-410100","issuer":"CN-410100",`), 1),
		"not json":         []byte("{"),
	}
	for name, data := range cases {
		if bytes.Equal(data, f.json) {
			t.Fatalf("%s: tampering did not change the bundle", name)
		}
		_, err := Parse(data, &nk)
		wantCode(t, err, apperr.BadTrustBundle)
	}
	// a genuine bundle checked against another node's pinned key
	ok := other.Public()
	_, err := Parse(f.json, &ok)
	wantCode(t, err, apperr.BadTrustBundle)
	// the same genuine bundle passes with the right key
	if _, err := Parse(f.json, &nk); err != nil {
		t.Fatal(err)
	}
	// a bundle re-signed by the attacker with a key swapped is rejected too
	_, forged, _ := Build(BuildInput{Issuer: "CN-410100", Keys: []ecode.PublicKey{attacker.Public()}, IssuedAt: t0}, attacker)
	_, err = Parse(forged, &nk)
	wantCode(t, err, apperr.BadTrustBundle)
}

func TestExpiredBundle(t *testing.T) {
	f := newFixture(t, nil, nil)
	c := code(t, f.sm, "CN-410100", "tok", t0.Add(24*time.Hour-10*time.Second))
	if _, err := f.bundle.VerifyCode(c, t0.Add(24*time.Hour)); err != nil {
		t.Fatalf("at expires_at the bundle is still valid: %v", err)
	}
	_, err := f.bundle.VerifyCode(c, t0.Add(24*time.Hour+time.Second))
	wantCode(t, err, apperr.TrustExpired)
	// even a malformed code gets trust_expired first: the terminal must refresh
	_, err = f.bundle.VerifyCode("garbage", t0.Add(25*time.Hour))
	wantCode(t, err, apperr.TrustExpired)
	// a peer's entry expires on its own
	pc := code(t, f.peer, "CN-310000", "tok", t0.Add(13*time.Hour))
	_, err = f.bundle.VerifyCode(pc, t0.Add(13*time.Hour))
	wantCode(t, err, apperr.TrustExpired)
}

func TestRevocationRespectsScanTime(t *testing.T) {
	lostAt := t0.Add(30 * time.Second)
	f := newFixture(t,
		[]Revocation{{Subject: "tok_lost", CardHash: CardHash("6100000000000001"), At: lostAt}},
		[]Revocation{{Subject: "tok_peer_lost", At: t0}})
	nk := f.node.Public()
	b, err := Parse(f.json, &nk)
	if err != nil {
		t.Fatal(err)
	}
	c := code(t, f.sm, "CN-410100", "tok_lost", t0)
	// scanned before the card was reported lost (offline, uploaded later): valid
	if _, err := b.VerifyCode(c, t0.Add(10*time.Second)); err != nil {
		t.Fatalf("scan before loss: %v", err)
	}
	// scanned at or after the loss: revoked
	_, err = b.VerifyCode(c, lostAt)
	wantCode(t, err, apperr.Revoked)
	_, err = b.VerifyCode(c, lostAt.Add(5*time.Second))
	wantCode(t, err, apperr.Revoked)
	// another holder is unaffected
	if _, err := b.VerifyCode(code(t, f.sm, "CN-410100", "tok_ok", t0), lostAt.Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	// the peer's deny list applies to the peer's codes only
	_, err = b.VerifyCode(code(t, f.peer, "CN-310000", "tok_peer_lost", t0), t0.Add(time.Second))
	wantCode(t, err, apperr.Revoked)
	if _, err := b.VerifyCode(code(t, f.sm, "CN-410100", "tok_peer_lost", t0), t0.Add(time.Second)); err != nil {
		t.Fatalf("a peer's revocation leaked to our subjects: %v", err)
	}
	// physical cards
	if b.CardRevoked("6100000000000001", t0) || !b.CardRevoked("6100000000000001", lostAt) || b.CardRevoked("6100000000000002", lostAt) {
		t.Fatal("card deny list")
	}
	if strings.Contains(string(f.json), "6100000000000001") {
		t.Fatal("card number in clear in the bundle")
	}
}

func TestRetiredKeyCannotSignLater(t *testing.T) {
	node, k := gen(t, ecode.AlgSM2), gen(t, ecode.AlgEdDSA)
	pk := k.Public()
	pk.NotAfter = t0.Add(2 * time.Minute)
	b, _, err := Build(BuildInput{Issuer: "CN-410100", Keys: []ecode.PublicKey{pk}, IssuedAt: t0}, node)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.VerifyCode(code(t, k, "CN-410100", "tok", t0.Add(time.Minute)), t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	late := t0.Add(3 * time.Minute)
	_, err = b.VerifyCode(code(t, k, "CN-410100", "tok", late), late)
	wantCode(t, err, apperr.UnknownKey)
}

func TestCodeErrorsPassThrough(t *testing.T) {
	f := newFixture(t, nil, nil)
	c := code(t, f.sm, "CN-410100", "tok", t0)
	_, err := f.bundle.VerifyCode(c, t0.Add(time.Minute))
	wantCode(t, err, apperr.Expired)
	_, err = f.bundle.VerifyCode(c, t0.Add(-time.Minute))
	wantCode(t, err, apperr.NotYetValid)
	_, err = f.bundle.VerifyCode("HC1:XYZ", t0)
	wantCode(t, err, apperr.UnsupportedScheme)
	_, err = f.bundle.VerifyCode(c[:40], t0)
	wantCode(t, err, apperr.Malformed)
}

func TestCanonical(t *testing.T) {
	for in, want := range map[string]string{
		`{"b":1,"a":{"d":[true,null,"x"],"c":"é\u0001\n\"\\<"},"sig":{}}`: `{"a":{"c":"é\u0001\n\"\\<","d":[true,null,"x"]},"b":1}`,
		`{ "€":"", "\r":"", "1":"" }`:                                     `{"\r":"","1":"","€":""}`,
		`{"peers": [ ], "x" : -5}`:                                        `{"peers":[],"x":-5}`,
	} {
		got, err := Canonical([]byte(in), "sig")
		if err != nil || string(got) != want {
			t.Errorf("Canonical(%s) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{`{"a":1,"a":2}`, `{"a":1.5}`, `{"a":1e3}`, `[1]`, `{"a":1} {}`, `{"a":`, `{"a":9007199254740993}`} {
		if _, err := Canonical([]byte(bad), ""); err == nil {
			t.Errorf("Canonical(%s) accepted", bad)
		}
	}
	// UTF-16 ordering: U+FF61 sorts after U+1F600 (surrogate D83D) in UTF-16
	got, _ := Canonical([]byte(`{"｡":1,"😀":2}`), "")
	if string(got) != `{"😀":2,"｡":1}` {
		t.Errorf("UTF-16 order: %s", got)
	}
}

// TestPeerDenyListCoversOnlyItsOwnCards: a peer's deny list carries only
// the peer's say over its own cards (whose numbers start with its region
// code, as a peer's codes are checked against its deny list only). A peer
// listing the hash of a card of this city, or of a third city, must not
// make this city's terminals refuse that card; this city's own list still
// covers every number it lists.
func TestPeerDenyListCoversOnlyItsOwnCards(t *testing.T) {
	const (
		peerCard  = "3100000000000010" // CN-310000's region code
		ourCard   = "4101000000000018" // CN-410100's
		thirdCard = "3301000000000001" // CN-330100's, not in this bundle
		ourOld    = "3100000000000028" // ours, issued before region prefixes
	)
	f := newFixture(t,
		[]Revocation{{CardHash: CardHash(ourOld), At: t0}},
		[]Revocation{{CardHash: CardHash(peerCard), At: t0}, {CardHash: CardHash(ourCard), At: t0}, {CardHash: CardHash(thirdCard), At: t0}})
	nk := f.node.Public()
	b, err := Parse(f.json, &nk)
	if err != nil {
		t.Fatal(err)
	}
	at := t0.Add(time.Minute)
	if !b.CardRevoked(peerCard, at) {
		t.Fatal("the peer's own lost card is not refused")
	}
	if !b.CardRevoked(ourOld, at) {
		t.Fatal("our own list does not cover a number of ours with the peer's prefix")
	}
	if b.CardRevoked(ourCard, at) {
		t.Fatal("the peer revoked one of our cards at our terminals")
	}
	if b.CardRevoked(thirdCard, at) {
		t.Fatal("the peer revoked a third city's card")
	}
}

// TestCheckCard: a physical card is checked offline as a code is: a
// peer's card past that peer's expires_at is trust_expired (its deny list
// can no longer be vouched for), any card past the bundle's expiry too;
// a listed card is revoked; this city's cards do not depend on a peer's
// expiry.
func TestCheckCard(t *testing.T) {
	const (
		peerCard = "3100000000000010"
		lostPeer = "3100000000000028"
		ourCard  = "4101000000000018"
	)
	f := newFixture(t, nil, []Revocation{{CardHash: CardHash(lostPeer), At: t0}})
	nk := f.node.Public()
	b, err := Parse(f.json, &nk)
	if err != nil {
		t.Fatal(err)
	}
	at := t0.Add(time.Hour)
	if err := b.CheckCard(peerCard, at); err != nil {
		t.Fatalf("a peer's card within its trust data: %v", err)
	}
	wantCode(t, b.CheckCard(lostPeer, at), apperr.Revoked)
	late := t0.Add(13 * time.Hour) // past the peer's expires_at, within the bundle's
	wantCode(t, b.CheckCard(peerCard, late), apperr.TrustExpired)
	if err := b.CheckCard(ourCard, late); err != nil {
		t.Fatalf("our own card after a peer's data expired: %v", err)
	}
	wantCode(t, b.CheckCard(ourCard, t0.Add(25*time.Hour)), apperr.TrustExpired)
}

// TestScenariosSigned: the bundle states which scenarios a terminal may
// accept offline, signed with the rest: an online-only scenario turned
// "offline" in transit does not verify. CheckScenario answers each state;
// a bundle without the member (an older node's) says nothing.
func TestScenariosSigned(t *testing.T) {
	node := gen(t, ecode.AlgSM2)
	nk := node.Public()
	in := BuildInput{Issuer: "CN-410100", IssuedAt: t0, Scenarios: map[string]string{
		"transit.bus": ScenarioOffline, "medical.outpatient": ScenarioOnline, "museum.entry": ScenarioDisabled}}
	_, raw, err := Build(in, node)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Parse(raw, &nk)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.CheckScenario("transit.bus"); err != nil {
		t.Fatalf("offline scenario: %v", err)
	}
	wantCode(t, b.CheckScenario("medical.outpatient"), apperr.Forbidden)
	wantCode(t, b.CheckScenario("museum.entry"), apperr.ScenarioDisabled)
	wantCode(t, b.CheckScenario("transit.nope"), apperr.NotFound)
	if e := apperr.As(b.CheckScenario("medical.outpatient")); e.MessageZh == "" {
		t.Fatal("no Chinese text")
	}

	tampered := bytes.Replace(raw, []byte(`"medical.outpatient":"online"`), []byte(`"medical.outpatient":"offline"`), 1)
	if bytes.Equal(tampered, raw) {
		t.Fatal("tampering did not change the bundle")
	}
	_, err = Parse(tampered, &nk)
	wantCode(t, err, apperr.BadTrustBundle)

	in.Scenarios["x"] = "sometimes"
	if _, _, err := Build(in, node); apperr.CodeOf(err) != apperr.ValidationFailed {
		t.Fatalf("unknown state built: %v", err)
	}

	_, old, err := Build(BuildInput{Issuer: "CN-410100", IssuedAt: t0}, node)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(old, []byte(`"scenarios"`)) {
		t.Fatalf("a bundle without scenarios states them: %s", old)
	}
	ob, err := Parse(old, &nk)
	if err != nil {
		t.Fatal(err)
	}
	if err := ob.CheckScenario("medical.outpatient"); err != nil {
		t.Fatalf("a bundle without scenarios refused one: %v", err)
	}
}
