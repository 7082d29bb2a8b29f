package resident

import (
	"testing"
	"time"
)

// TestStatusAt reads a card's status at a moment from its history: lost,
// found, lost again, with a PIN lock (no status change) in between.
func TestStatusAt(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 8, 0, 0, 0, time.UTC)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	evs := []CardEvent{
		{Event: EventIssued, From: "", To: StatusActive, At: at(0)},
		{Event: EventStatus, From: StatusActive, To: StatusLost, At: at(10)},
		{Event: EventPINLocked, At: at(15)},
		{Event: EventStatus, From: StatusLost, To: StatusActive, At: at(20)},
		{Event: EventStatus, From: StatusActive, To: StatusLost, At: at(30)},
		{Event: EventStatus, From: StatusLost, To: StatusReplaced, At: at(40)},
	}
	for _, tc := range []struct {
		m    int
		want string
	}{
		{-5, ""}, // before it was issued
		{0, StatusActive}, {5, StatusActive},
		{10, StatusLost}, {15, StatusLost}, {19, StatusLost},
		{20, StatusActive}, {29, StatusActive},
		{30, StatusLost}, {39, StatusLost},
		{40, StatusReplaced}, {1000, StatusReplaced},
	} {
		if got, ok := statusAt(evs, at(tc.m)); !ok || got != tc.want {
			t.Errorf("at +%d min: %q %v, want %q", tc.m, got, ok, tc.want)
		}
	}
	// A history without status changes tells nothing.
	if got, ok := statusAt([]CardEvent{{Event: EventPINLocked, At: at(1)}}, at(5)); ok {
		t.Errorf("no status changes: %q, want not ok", got)
	}
	if _, ok := statusAt(nil, at(5)); ok {
		t.Error("no history: want not ok")
	}
}
