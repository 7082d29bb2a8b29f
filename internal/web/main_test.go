package web_test

import (
	"os"
	"testing"

	"github.com/yikatong/yikatong/internal/store/storetest"
)

// The tests that touch storage run on SQLite and on a throwaway PostgreSQL.
func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }
