package node

import "context"

// SetDemoHooks makes n call step at the end of each step of the demo
// city's creation (an error stops the creation there, as a crash would)
// and enrol and fund chunk residents per step (0: the default).
func SetDemoHooks(n *Node, step func(step string) error, chunk int) {
	demoHooks.Store(n, &demoTestHooks{step: step, chunk: chunk})
}

// ClearDemoHooks undoes SetDemoHooks.
func ClearDemoHooks(n *Node) { demoHooks.Delete(n) }

// DemoRecord returns the state of n's demo record ("" if none) and how
// many secrets it still keeps.
func DemoRecord(n *Node) (state string, secrets int, err error) {
	p, err := n.loadDemoPlan(context.Background())
	if err != nil || p == nil {
		return "", 0, err
	}
	return p.State, len(p.Passwords) + len(p.PINs) + len(p.Terminals), nil
}
