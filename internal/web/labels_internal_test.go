package web

import (
	"strings"
	"testing"
)

func TestMoneyFormats(t *testing.T) {
	for fen, want := range map[int64][3]string{
		0:          {"0.00", "¥0.00", "+¥0.00"},
		5:          {"0.05", "¥0.05", "+¥0.05"},
		-200:       {"-2.00", "−¥2.00", "−¥2.00"},
		15000:      {"150.00", "¥150.00", "+¥150.00"},
		10000000:   {"100,000.00", "¥100,000.00", "+¥100,000.00"},
		-123456789: {"-1,234,567.89", "−¥1,234,567.89", "−¥1,234,567.89"},
	} {
		if g := [3]string{yuanGrouped(fen), money(fen), signedMoney(fen)}; g != want {
			t.Errorf("%d: %q, want %q", fen, g, want)
		}
	}
}

// Every transfer kind written in internal/ (grep "Kind:") has a label in
// both languages.
func TestEveryTransferKindHasALabel(t *testing.T) {
	for _, k := range []string{"topup", "medical_contribution", "reversal", "scan_charge", "scan_payout", "scan_medical", "scan_credit",
		"debt_collection", "subsidy", "subsidy_funding", "fed_charge", "fed_medical", "fed_credit", "fed_adjust", "fed_loss"} {
		m, ok := messages["kind."+k]
		if !ok || m[0] == "" || m[1] == "" || strings.Contains(m[0], "_") {
			t.Errorf("kind %s: %q", k, m)
		}
	}
}

func TestMemoText(t *testing.T) {
	m := "cross-city fare corrected / 异地消费调整"
	if memoText("zh", m) != "异地消费调整" || memoText("en", m) != "cross-city fare corrected" || memoText("zh", "plain") != "plain" {
		t.Fatal(memoText("zh", m), memoText("en", m))
	}
}
