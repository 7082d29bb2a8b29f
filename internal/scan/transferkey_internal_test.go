package scan

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/ledger"
)

// A scan's ledger keys sort by the scan's time whatever its terminal and
// idempotency key, so that they append to the journal's index of keys;
// rows an older version left keep that version's keys; a key too long for
// the ledger is shortened and stays one per scan.
func TestTransferKeys(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	type k struct {
		at  int64
		key string
	}
	var all []k
	at := int64(1_795_000_000_000)
	for i := 0; i < 2000; i++ {
		at += rng.Int64N(3) + 1 // strictly later
		term := fmt.Sprintf("trm_%020x", rng.Uint64())
		all = append(all, k{at, transferKey(term, fmt.Sprintf("k%d", rng.IntN(1e6)), at, "0", false)})
	}
	if !sort.SliceIsSorted(all, func(i, j int) bool { return all[i].key < all[j].key }) {
		t.Fatal("keys of later scans do not sort after earlier ones")
	}
	if got, want := transferKey("trm_a", "k1", 0x18b2c3d4e5f, "debt1", false), "scan:18b2c3d4e5f:trm_a:k1:debt1"; got != want {
		t.Fatalf("key %q, want %q", got, want)
	}
	if got, want := transferKey("trm_a", "k1", 1_000, "3", false), "scan:000000003e8:trm_a:k1:3"; got != want {
		t.Fatalf("key %q, want %q (fixed width)", got, want)
	}
	if got, want := transferKey("trm_a", "off:r1", 1_795_000_000_000, "debt0", true), "scan:trm_a:off:r1:debt0"; got != want {
		t.Fatalf("legacy key %q, want %q", got, want)
	}
	term := "trm_" + strings.Repeat("x", 60)
	a := transferKey(term, strings.Repeat("a", MaxKeyLen), 1_795_000_000_000, "collect12", false)
	b := transferKey(term, strings.Repeat("a", MaxKeyLen-1)+"b", 1_795_000_000_000, "collect12", false)
	if len(a) > ledger.MaxKeyLen || len(b) > ledger.MaxKeyLen || a == b || !strings.HasPrefix(a, "scan:1a1e") {
		t.Fatalf("long keys %q (%d) and %q (%d)", a, len(a), b, len(b))
	}
}
