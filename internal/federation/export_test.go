package federation

import "context"

// SetHook installs a test hook called at named stages of applying a
// message ("before_ledger", "after_ledger", and "booked" when a
// booking has finished, on the single-message path; "void_checked" when a
// void of a booked charge found its day not settled, before marking it),
// and of countersigning a statement ("statement_computed", with the day,
// before it is compared, signed and saved).
func SetHook(s *Service, f func(ctx context.Context, stage, id string)) { s.hook = f }
