package node

import (
	"context"
	"log/slog"
	"path/filepath"

	"github.com/yikatong/yikatong/internal/federation"
)

// OpenSimNode opens a demo city node for federation.Simulate (`yikatong
// region simulate` and the federation tests): its data in c.Dir, its demo
// residents, providers, terminals and staff created as on `serve --demo`,
// served by whoever calls the returned Handler. log nil discards the
// node's log.
func OpenSimNode(ctx context.Context, c federation.SimNodeConfig, log *slog.Logger) (*federation.SimNode, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n, err := Open(ctx, Config{DataDir: c.Dir, City: c.City, Logger: log, Federation: c.Federation})
	if err != nil {
		return nil, err
	}
	n.DemoResidents = c.Residents
	path := filepath.Join(c.Dir, "demo.json")
	d, err := func() (*DemoFile, error) {
		if err := n.EnsureDemo(ctx, c.BaseURL, path); err != nil {
			return nil, err
		}
		return ReadDemoFile(path)
	}()
	if err != nil {
		n.Close()
		return nil, err
	}
	sn := &federation.SimNode{Handler: n.Handler(), Fed: n.Fed, OperatorToken: d.Staff["operator"].Token, Terminals: map[string]string{}, Close: n.Close,
		IssueCode: func(ctx context.Context, card string) (string, error) {
			code, _, err := n.IssueCode(ctx, card)
			return code, err
		}}
	for _, t := range d.Terminals {
		sn.Terminals[t.Scenario] = t.Token
	}
	for _, r := range d.Residents {
		sn.Residents = append(sn.Residents, federation.SimResident{Card: r.CardNumber, PIN: r.PIN})
	}
	return sn, nil
}
