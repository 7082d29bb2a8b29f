package node_test

import (
	"testing"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// auditRows returns the audit rows of action about subject ("": any),
// read over the API as the demo's hr_admin (the newest 500).
func auditRows(t *testing.T, tn *nodetest.Node, action, subject string) []auth.AuditEntry {
	t.Helper()
	var log []auth.AuditEntry
	tn.Client(tn.Demo.Staff["hr_admin"].Token).JSON(t, "GET", "/v1/audit?limit=500&subject="+subject, nil, 200, &log)
	var out []auth.AuditEntry
	for _, e := range log {
		if e.Action == action {
			out = append(out, e)
		}
	}
	return out
}

// providerStaff has the operator create a staff user of provider over
// the API and signs them in; it returns their password and token.
func providerStaff(t *testing.T, tn *nodetest.Node, provider, username string) (password, token string) {
	t.Helper()
	var made struct {
		Password string `json:"password"`
	}
	tn.Client(tn.Demo.Staff["operator"].Token).JSON(t, "POST", "/v1/providers/"+provider+"/staff", map[string]string{"username": username}, 201, &made)
	var signed struct {
		Token string `json:"token"`
	}
	nodetest.NewClient(tn.URL, "").JSON(t, "POST", "/v1/auth/staff", map[string]string{"user": username, "password": made.Password}, 200, &signed)
	return made.Password, signed.Token
}
