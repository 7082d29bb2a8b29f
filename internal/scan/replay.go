package scan

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/yikatong/yikatong/internal/ecode"
)

// replayKeysMigration is the migration from which YK1 nonces are stored
// time-ordered; its applied_at is the cutover.
const replayKeysMigration = "0046_replay_keys_by_time"

// replayKeys returns the key a code's one-use nonce is stored under in
// scans.cti (unique: the database refuses a second use, across every
// process), and the key an older version may have stored it under ("" if
// none could have).
//
// A YK1 nonce is 16 random bytes. Stored as they come, every new row put
// its cti index entry on a random page of an index as large as the scans
// table: once the index outgrows the page cache (a city's scans table
// holds hundreds of millions of rows), each scan would read a page from
// disk before it could write it. Prefixed with the code's issue time, the
// entries of codes still in use (valid one minute) sit in the last minute
// of the index, a few megabytes that stay cached however large the table
// grows. (Within that minute they are still spread out, so a batch still
// writes about one index page per code: BenchmarkReplayKeyOrder measures
// 53–56 µs per row with random keys and 48–50 µs time-ordered on a table
// of 200,000 rows that still fits the cache.)
//
// The key stays one per code: the issue time is signed into the code, so
// every presentation of one code yields the same key. TC1 nonces carry
// their issue time already; card scans have none.
func (s *Service) replayKeys(id Identity) (key, legacy string) {
	prefix := SchemeYK1 + ":" + id.Issuer + ":"
	if id.Scheme != SchemeYK1 || id.IssuedAt.IsZero() || !strings.HasPrefix(id.CTI, prefix) {
		return id.CTI, ""
	}
	key = fmt.Sprintf("%s%010x:%s", prefix, id.IssuedAt.Unix(), id.CTI[len(prefix):])
	// A code issued before the cutover may have been used under its old
	// key by the version before (codes live a minute; ClockSkew covers a
	// code issued by a clock a little ahead of this node's).
	if id.IssuedAt.Before(s.replayCutover.Add(ecode.ClockSkew)) {
		legacy = id.CTI
	}
	return key, legacy
}

// loadReplayCutover reads when the time-ordered keys began. Without the
// record (it cannot be missing after migrating; a read error) it assumes
// now, which only costs a second index probe for codes issued until then.
func (s *Service) loadReplayCutover(ctx context.Context) {
	s.replayCutover = s.Now()
	var ms int64
	if s.DB == nil {
		return
	}
	if err := s.DB.R.QueryRowContext(ctx, `SELECT applied_at FROM schema_migrations WHERE name = $1`, replayKeysMigration).Scan(&ms); err == nil {
		s.replayCutover = time.UnixMilli(ms)
	}
}
