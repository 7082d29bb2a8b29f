package scan

import (
	"testing"
	"time"
)

// TestReplayKeys: the time-ordered key sorts by issue time, and only codes
// issued before the cutover (plus the clock skew) are also probed under
// their old key.
func TestReplayKeys(t *testing.T) {
	cut := time.Unix(1_800_000_000, 0)
	s := &Service{replayCutover: cut}
	id := func(at time.Time, nonce string) Identity {
		return Identity{Scheme: SchemeYK1, Issuer: "CN-410100", CTI: "YK1:CN-410100:" + nonce, IssuedAt: at}
	}
	k1, l1 := s.replayKeys(id(cut.Add(-time.Minute), "ff00"))
	if k1 != "YK1:CN-410100:006b49d1c4:ff00" || l1 != "YK1:CN-410100:ff00" {
		t.Fatalf("before the cutover: %q %q", k1, l1)
	}
	if _, l := s.replayKeys(id(cut.Add(time.Minute), "00")); l != "" {
		t.Fatalf("after the cutover the old key is not probed: %q", l)
	}
	// Later codes sort after earlier ones whatever their nonces.
	a, _ := s.replayKeys(id(cut.Add(time.Second), "ffff"))
	b, _ := s.replayKeys(id(cut.Add(2*time.Second), "0000"))
	if !(a < b) {
		t.Fatalf("%q should sort before %q", a, b)
	}
	for _, o := range []Identity{
		{Scheme: SchemeCard, CardNumber: "4101000000000001"},
		{Scheme: SchemeTC1, Issuer: "ZZBUS", CTI: "TC1:ZZBUS:1800000000:ab", IssuedAt: cut},
		{Scheme: SchemeYK1, Issuer: "CN-410100", CTI: "YK1:CN-410100:ab"}, // no issue time: as given
		{Scheme: SchemeYK1, Issuer: "CN-330100", CTI: "YK1:CN-410100:ab", IssuedAt: cut},
	} {
		if k, l := s.replayKeys(o); k != o.CTI || l != "" {
			t.Errorf("%+v: %q %q, want the nonce as it is", o, k, l)
		}
	}
}
