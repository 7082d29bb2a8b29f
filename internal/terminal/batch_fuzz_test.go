package terminal

import (
	"crypto/ed25519"
	"encoding/base64"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
)

// FuzzOpenBatch: any payload a terminal's key signs — and any tampering
// with payload or signature — is opened into a batch that keeps
// OpenBatch's promises (an id of 1–64 characters, at most MaxBatchRecords
// records, the exact signed bytes) or refused with a precise code, never a
// panic.
func FuzzOpenBatch(f *testing.F) {
	seed := make([]byte, ed25519.SeedSize)
	key := ed25519.NewKeyFromSeed(seed)
	pub := key.Public().(ed25519.PublicKey)
	good, err := SignBatch(Batch{Terminal: "trm_1", ID: "b-1", CreatedAt: time.Unix(1_700_000_000, 0).UTC(), Records: []Record{
		{ID: "r1", Seq: 1, At: time.Unix(1_700_000_000, 0).UTC(), Scenario: "transit.bus", CardNumber: "4111111111111111"},
	}}, key)
	if err != nil {
		f.Fatal(err)
	}
	payload, _ := base64.RawURLEncoding.DecodeString(good.Payload)
	f.Add(payload, true, "")
	f.Add(payload, false, good.Signature)
	f.Add([]byte(`{"batch_id":"","records":[]}`), true, "")
	f.Add([]byte(`{"batch_id":"x","records":[{"id":"r","seq":-1,"at":"0001-01-01T00:00:00Z"}]}`), true, "")
	f.Add([]byte(`[1,2,3]`), true, "")
	f.Fuzz(func(t *testing.T, payload []byte, sign bool, sig string) {
		sb := SignedBatch{Payload: base64.RawURLEncoding.EncodeToString(payload), Signature: sig}
		if sign {
			sb.Signature = base64.RawURLEncoding.EncodeToString(ed25519.Sign(key, append([]byte(batchContext), payload...)))
		}
		b, raw, err := OpenBatch(sb, pub)
		if err != nil {
			switch apperr.CodeOf(err) {
			case apperr.BatchTampered, apperr.Malformed, apperr.ValidationFailed:
			default:
				t.Fatalf("error %v, want batch_tampered, malformed or validation_failed", err)
			}
			return
		}
		if !sign && sig != good.Signature {
			t.Fatal("a batch with a forged signature was opened")
		}
		if string(raw) != string(payload) || b.ID == "" || len(b.ID) > 64 || len(b.Records) > MaxBatchRecords {
			t.Fatalf("opened %q: id %q, %d records", raw, b.ID, len(b.Records))
		}
	})
}
