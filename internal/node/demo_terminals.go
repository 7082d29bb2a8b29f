package node

import (
	"context"
	"fmt"
)

// demoProviders are the demo city's service providers and, per provider,
// the scenarios of its terminals (one terminal per scenario, so demo.json
// can name a terminal for each).
var demoProviders = []struct {
	name, kind string
	scenarios  []string
}{
	{"郑州公交集团 Zhengzhou Bus", "transit", []string{"transit.bus"}},
	{"郑州地铁 Zhengzhou Metro", "transit", []string{"transit.metro_entry", "transit.metro_exit"}},
	{"郑州图书馆 Zhengzhou Library", "library", []string{"library.loan"}},
	{"河南博物院 Henan Museum", "museum", []string{"museum.entry"}},
	{"郑州大学第一附属医院 First Affiliated Hospital", "hospital", []string{"medical.outpatient", "medical.registration"}},
	{"郑州大学 Zhengzhou University", "school", []string{"campus.canteen", "campus.gate"}},
	{"如家酒店二七店 Home Inn Erqi", "hotel", []string{"identity.hotel_checkin"}},
	{"郑州自来水 Zhengzhou Water", "utility", []string{"bills.water"}},
}

// demoTerminals creates the demo providers and terminals.
func (n *Node) demoTerminals(ctx context.Context, d *DemoFile) error {
	if n.scans() == nil {
		return nil
	}
	for _, dp := range demoProviders {
		p, err := n.CreateProvider(ctx, dp.name, dp.kind, dp.scenarios)
		if err != nil {
			return fmt.Errorf("demo provider %s: %w", dp.name, err)
		}
		for i, sc := range dp.scenarios {
			id, token, batchKey, err := n.CreateTerminal(ctx, p.ID, fmt.Sprintf("%s #%d", dp.name, i+1), []string{sc})
			if err != nil {
				return fmt.Errorf("demo terminal %s: %w", sc, err)
			}
			d.Terminals = append(d.Terminals, DemoTerminal{ID: id, Token: token, Provider: p.ID, Scenario: sc, BatchKey: batchKey})
		}
	}
	return nil
}
