package node

import (
	"encoding/json"
	"os"
)

// DemoFile is demo.json (CONTRACT.md).
type DemoFile struct {
	BaseURL   string               `json:"base_url"`
	City      string               `json:"city"`
	Staff     map[string]DemoStaff `json:"staff"`
	Residents []DemoResident       `json:"residents"`
	Terminals []DemoTerminal       `json:"terminals"`
}

// DemoStaff is a staff login of the demo city.
type DemoStaff struct {
	User     string `json:"user"`
	Password string `json:"password"`
	Token    string `json:"token"`
}

// DemoResident is a resident of the demo city who can sign in.
type DemoResident struct {
	Name       string `json:"name"`
	IDNumber   string `json:"id_number"`
	CardNumber string `json:"card_number"`
	PIN        string `json:"pin"`
	Category   string `json:"category"`
	ResidentID string `json:"resident_id,omitempty"`
	// Flags are the resident's holder flags (a schoolchild is a student).
	Flags []string `json:"flags,omitempty"`
}

// DemoTerminal is a terminal of the demo city.
type DemoTerminal struct {
	ID       string `json:"id"`
	Token    string `json:"token"`
	Provider string `json:"provider"`
	Scenario string `json:"scenario"`
	// BatchKey signs the terminal's offline batches (keep it secret).
	BatchKey string `json:"batch_key,omitempty"`
}

// ReadDemoFile reads demo.json.
func ReadDemoFile(path string) (*DemoFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var d DemoFile
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, err
	}
	return &d, nil
}
