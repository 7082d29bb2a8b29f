package federation

import "context"

// SetHook installs a test hook called at named stages of applying a
// message ("before_ledger", "after_ledger", and "booked" when a
// booking has finished, on the single-message path).
func SetHook(s *Service, f func(ctx context.Context, stage, id string)) { s.hook = f }
