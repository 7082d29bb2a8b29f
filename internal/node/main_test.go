package node_test

import (
	"os"
	"testing"

	"github.com/yikatong/yikatong/internal/store/storetest"
)

// TestMain stops the shared PostgreSQL test cluster at the end. It is the
// only TestMain of this package: add tests, not another TestMain.
func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }
