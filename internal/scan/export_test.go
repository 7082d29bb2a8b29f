package scan

import "github.com/yikatong/yikatong/internal/terminal"

// RecordHash exposes the stored request hash of an offline record (tests
// write rows as an older version of the node did).
func RecordHash(r terminal.Record) []byte { return recordHash(r) }
