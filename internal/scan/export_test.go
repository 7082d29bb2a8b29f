package scan

import "github.com/yikatong/yikatong/internal/terminal"

// RecordHash exposes the stored request hash of an offline record (tests
// write rows as an older version of the node did).
func RecordHash(r terminal.Record) []byte { return recordHash(r) }

// UnkeyedRequestHash is a scan request's hash as versions before the keyed
// PIN stored it.
func UnkeyedRequestHash(scenario, code, card string, amount int64, pin string) []byte {
	return requestHash(Request{Scenario: scenario, Code: code, CardNumber: card, AmountFen: amount, PIN: pin})
}

// HoldDebtProbes makes c's debt probe call hold before each query it runs
// (tests gather callers deterministically); nil removes it.
func HoldDebtProbes(c *Collector, hold func()) { c.probe.hold = hold }

// SetBatchHooks makes s's offline uploads call markRead once they have
// read their terminal's mark, credit before they settle records on credit
// ("ride first, pay later"), and waiting when one waits for another upload
// of its terminal (nil: none).
func SetBatchHooks(s *Service, markRead, credit, waiting func(terminal string)) {
	s.batchHooks = batchHooks{markRead: markRead, credit: credit, waiting: waiting}
}

// ServiceOf is the scan service c collects the debt of (a node's, through
// its DebtCollector: tests set hooks on the service behind its API).
func ServiceOf(c *Collector) *Service { return c.s }
