package node

import (
	"context"
	"fmt"

	"github.com/yikatong/yikatong/internal/terminal"
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

// demoTerminals creates the demo providers and terminals, or finds those
// an interrupted start created: a provider by name, a terminal by provider
// and name. A terminal's credentials go into the plan as soon as it is
// created; one found without them (the start stopped in between) gets new
// ones.
func (n *Node) demoTerminals(ctx context.Context, d *DemoFile, plan *demoPlan) error {
	if n.scans() == nil {
		return nil
	}
	ts := n.scans().Terminals
	have, err := ts.Providers(ctx)
	if err != nil {
		return err
	}
	providers := map[string]terminal.Provider{}
	for _, p := range have {
		if _, dup := providers[p.Name]; !dup {
			providers[p.Name] = p
		}
	}
	for _, dp := range demoProviders {
		p, ok := providers[dp.name]
		if !ok {
			if p, err = n.CreateProvider(ctx, dp.name, dp.kind, dp.scenarios); err != nil {
				return fmt.Errorf("demo provider %s: %w", dp.name, err)
			}
		} else if err := n.openProviderAccount(ctx, p); err != nil {
			// (CreateProvider opens it after the provider: the start may have stopped in between.)
			return fmt.Errorf("demo provider %s: %w", dp.name, err)
		}
		if err := n.demoStep("provider/%s", dp.name); err != nil {
			return err
		}
		list, err := ts.Terminals(ctx, p.ID)
		if err != nil {
			return err
		}
		terminals := map[string]terminal.Terminal{}
		for _, t := range list {
			if _, dup := terminals[t.Name]; !dup {
				terminals[t.Name] = t
			}
		}
		for i, sc := range dp.scenarios {
			name := fmt.Sprintf("%s #%d", dp.name, i+1)
			cr, kept := plan.Terminals[name]
			t, exists := terminals[name]
			switch {
			case exists && kept && cr.ID == t.ID:
			case exists:
				if cr, err = n.reissueDemoTerminal(ctx, t, sc); err != nil {
					return fmt.Errorf("demo terminal %s: %w", sc, err)
				}
				n.Log.Info("demo terminal: new credentials (an interrupted start lost them)", "terminal", t.ID)
			default:
				id, token, batchKey, err := n.CreateTerminal(ctx, p.ID, name, []string{sc})
				if err != nil {
					return fmt.Errorf("demo terminal %s: %w", sc, err)
				}
				if err := n.demoStep("terminal/%s/created", name); err != nil {
					return err
				}
				cr = DemoTerminal{ID: id, Token: token, Provider: p.ID, Scenario: sc, BatchKey: batchKey}
			}
			if !kept || cr != plan.Terminals[name] {
				plan.Terminals[name] = cr
				if err := n.saveDemoPlan(ctx, plan); err != nil {
					return err
				}
			}
			if err := n.demoStep("terminal/%s", name); err != nil {
				return err
			}
			d.Terminals = append(d.Terminals, cr)
		}
	}
	return nil
}

// reissueDemoTerminal gives a demo terminal whose credentials were lost a
// new bearer token and batch key (terminal.Reissue: any other token is
// revoked). It is done before the node serves, so no terminal has used
// the old ones.
func (n *Node) reissueDemoTerminal(ctx context.Context, t terminal.Terminal, scenario string) (DemoTerminal, error) {
	t, cr, _, err := n.scans().Terminals.Reissue(ctx, t.ID)
	if err != nil {
		return DemoTerminal{}, err
	}
	return DemoTerminal{ID: t.ID, Token: cr.Token, Provider: t.ProviderID, Scenario: scenario, BatchKey: cr.BatchKey}, nil
}
