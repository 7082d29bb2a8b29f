package node

import (
	"context"
	"errors"
	"testing"

	"github.com/yikatong/yikatong/internal/apperr"
)

// The node's own start-up writes retry what a client would retry (the
// same idempotency key after "unavailable"), a bounded number of times,
// and nothing else.
func TestRetryUnavailable(t *testing.T) {
	ctx := context.Background()
	unavailable := apperr.Newf(apperr.Unavailable, "statement timeout", "语句超时")
	for _, tc := range []struct {
		name      string
		fails     int // calls that fail before one succeeds
		err       error
		wantCalls int
		wantErr   bool
	}{
		{"succeeds at once", 0, unavailable, 1, false},
		{"succeeds on the third try", 2, unavailable, 3, false},
		{"gives up after five", 99, unavailable, 5, true},
		{"a refusal is not retried", 99, apperr.New(apperr.InsufficientFunds), 1, true},
		{"a plain error is not retried", 99, errors.New("disk full"), 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := retryUnavailable(ctx, func() error {
				calls++
				if calls <= tc.fails {
					return tc.err
				}
				return nil
			})
			if calls != tc.wantCalls || (err != nil) != tc.wantErr {
				t.Fatalf("%d calls, err %v; want %d calls, error %v", calls, err, tc.wantCalls, tc.wantErr)
			}
		})
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	calls := 0
	if err := retryUnavailable(cctx, func() error { calls++; return unavailable }); err == nil || calls != 1 {
		t.Fatalf("a cancelled start: %d calls, err %v", calls, err)
	}
}
