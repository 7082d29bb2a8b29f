package federation

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ecode"
)

func mustKey(t *testing.T) ecode.Signer {
	t.Helper()
	k, err := ecode.GenerateSM2()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testList(t *testing.T, nodes ...ecode.Signer) MemberList {
	l := MemberList{Region: "yrd"}
	for i, n := range nodes {
		l.Members = append(l.Members, Member{City: []string{"CN-310000", "CN-330100", "CN-340100"}[i], BaseURL: "http://127.0.0.1:1", NodeKey: n.Public().JWK()})
	}
	return l
}

func TestMemberList(t *testing.T) {
	anchor, rogue := mustKey(t), mustKey(t)
	n1, n2 := mustKey(t), mustKey(t)
	now := time.Now()
	signed, err := SignMembers(testList(t, n1, n2), anchor)
	if err != nil {
		t.Fatal(err)
	}
	l, err := ParseMembers(signed, anchor.Public(), now)
	if err != nil {
		t.Fatal(err)
	}
	if _, k, ok := l.Member("CN-330100"); !ok || k.KidString() != n2.Public().KidString() {
		t.Fatal("member key not found")
	}
	if _, _, ok := l.Member("CN-340100"); ok {
		t.Fatal("unknown member found")
	}
	if m, _, _ := l.Member("CN-310000"); m.TrustURL() != "http://127.0.0.1:1/v1/trust" {
		t.Fatalf("trust url %q", m.TrustURL())
	}
	// Reformatting keeps the signature valid (JCS).
	var v any
	json.Unmarshal(signed, &v)
	compact, _ := json.Marshal(v)
	if _, err := ParseMembers(compact, anchor.Public(), now); err != nil {
		t.Fatalf("reformatted list: %v", err)
	}
	cases := map[string][]byte{
		"wrong key":      must(SignMembers(testList(t, n1, n2), rogue)),
		"altered":        []byte(strings.Replace(string(signed), "CN-330100", "CN-340100", 1)),
		"not json":       []byte("{"),
		"unsigned":       []byte(`{"region":"x","members":[]}`),
		"altered region": []byte(strings.Replace(string(signed), `"region": "yrd"`, `"region": "yrd2"`, 1)),
	}
	for name, data := range cases {
		if _, err := ParseMembers(data, anchor.Public(), now); apperr.CodeOf(err) != apperr.BadMemberList {
			t.Errorf("%s: %v, want bad_member_list", name, err)
		}
	}
	if _, err := ParseMembers(signed, anchor.Public(), now.Add(DefaultMembersTTL+time.Hour)); apperr.CodeOf(err) != apperr.BadMemberList {
		t.Errorf("expired list accepted: %v", err)
	}
	dup := testList(t, n1, n2)
	dup.Members[1].City = dup.Members[0].City
	if _, err := SignMembers(dup, anchor); apperr.CodeOf(err) != apperr.BadMemberList {
		t.Errorf("duplicate city: %v", err)
	}
	bad := testList(t, n1)
	bad.Members[0].City = "Shanghai"
	if _, err := SignMembers(bad, anchor); apperr.CodeOf(err) != apperr.BadMemberList {
		t.Errorf("bad city id: %v", err)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestEnvelope(t *testing.T) {
	anchor, n1, n2, stranger := mustKey(t), mustKey(t), mustKey(t), mustKey(t)
	l, err := ParseMembers(must(SignMembers(testList(t, n1, n2), anchor)), anchor.Public(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	body := Charge{ID: "CN-310000.x", Mode: ModeOnline, Subject: "tok", AmountFen: 200, CreatedAt: now}
	env := must(Seal("CN-310000", "CN-330100", KindCharge, now, body, n1))
	e, err := Open(env, "CN-330100", KindCharge, l, now)
	if err != nil {
		t.Fatal(err)
	}
	var got Charge
	if err := json.Unmarshal(e.Body, &got); err != nil || got.AmountFen != 200 {
		t.Fatalf("body %+v %v", got, err)
	}
	check := func(name string, data []byte, self, kind string, at time.Time, want apperr.Code) {
		t.Helper()
		if _, err := Open(data, self, kind, l, at); apperr.CodeOf(err) != want {
			t.Errorf("%s: %v, want %s", name, err, want)
		}
	}
	check("altered amount", []byte(strings.Replace(string(env), `"amount_fen":200`, `"amount_fen":201`, 1)), "CN-330100", KindCharge, now, apperr.BadSignature)
	check("signed by another key", must(Seal("CN-310000", "CN-330100", KindCharge, now, body, n2)), "CN-330100", KindCharge, now, apperr.BadSignature)
	check("not a member", must(Seal("CN-340100", "CN-330100", KindCharge, now, body, stranger)), "CN-330100", KindCharge, now, apperr.UnknownPeer)
	check("from self", must(Seal("CN-330100", "CN-330100", KindCharge, now, body, n2)), "CN-330100", KindCharge, now, apperr.UnknownPeer)
	check("to someone else", env, "CN-340100", KindCharge, now, apperr.ValidationFailed)
	check("wrong kind", env, "CN-330100", KindMessages, now, apperr.ValidationFailed)
	check("clock ahead", env, "CN-330100", KindCharge, now.Add(-MaxSkew-time.Second), apperr.ClockSkew)
	check("clock behind", env, "CN-330100", KindCharge, now.Add(MaxSkew+time.Second), apperr.ClockSkew)
	check("within skew", env, "CN-330100", KindCharge, now.Add(MaxSkew-time.Second), "")
	check("garbage", []byte("nope"), "CN-330100", KindCharge, now, apperr.ValidationFailed)
	if _, err := Open(env, "CN-330100", KindCharge, nil, now); apperr.CodeOf(err) != apperr.UnknownPeer {
		t.Errorf("nil member list: %v", err)
	}
}

func TestCompare(t *testing.T) {
	here := []MessageInfo{
		{ID: "1", Debtor: "A", Creditor: "B", AmountFen: 200, Booked: true},
		{ID: "2", Debtor: "A", Creditor: "B", AmountFen: 300, Booked: true},
		{ID: "3", Debtor: "A", Creditor: "B", AmountFen: 100, Booked: false},
		{ID: "5", Debtor: "A", Creditor: "B", AmountFen: 100, Booked: true},
	}
	there := []MessageInfo{
		{ID: "1", Debtor: "A", Creditor: "B", AmountFen: 200, Booked: true},
		{ID: "4", Debtor: "B", Creditor: "A", AmountFen: 50, Booked: true},
		{ID: "5", Debtor: "A", Creditor: "B", AmountFen: 101, Booked: true},
		{ID: "6", Debtor: "B", Creditor: "A", AmountFen: 50, Booked: false},
	}
	r := compare("B", here, there)
	got := map[string]string{}
	for _, d := range r.Discrepancies {
		got[d.ID] = d.Reason
	}
	want := map[string]string{"2": "only_here", "4": "only_there", "5": "differs"}
	if len(got) != len(want) {
		t.Fatalf("discrepancies %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("discrepancies %v, want %v", got, want)
		}
	}
	if r := compare("B", here[:1], there[:1]); len(r.Discrepancies) != 0 {
		t.Fatalf("identical sides: %+v", r)
	}
}

func TestMessageID(t *testing.T) {
	a, b := MessageID("CN-310000", "YK1:CN-330100:ab"), MessageID("CN-310000", "YK1:CN-330100:ab")
	if a != b || !strings.HasPrefix(a, "CN-310000.") || a == MessageID("CN-310000", "YK1:CN-330100:ac") || a == MessageID("CN-320100", "YK1:CN-330100:ab") {
		t.Fatalf("message ids: %s %s", a, b)
	}
}
