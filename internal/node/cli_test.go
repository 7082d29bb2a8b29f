package node_test

import (
	"bytes"
	"os/exec"
	"testing"

	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// runBinary runs the real yikatong binary and returns its combined output
// and exit code.
func runBinary(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(nodetest.Binary(t), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), 0
}
