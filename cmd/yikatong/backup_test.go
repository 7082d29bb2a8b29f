package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/vault"
)

// TestMain stops the shared PostgreSQL test cluster at the end. It is the
// only TestMain of this package.
func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

func runCmd(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(""), &out, &errb)
	return code, out.String() + errb.String()
}

type ledgerCheckAnswer struct {
	Transfers int64    `json:"transfers"`
	JournalOK bool     `json:"journal_ok"`
	SumFen    int64    `json:"sum_fen"`
	Problems  []string `json:"problems"`
}

// checkRestored starts a node on a restored data directory (and database)
// and checks it: the books balance, the transfers acknowledged before the
// backup are there, and a resident can sign in with their card and PIN.
func checkRestored(t *testing.T, dir, dsn string, demo *node.DemoFile, minTransfers int64, acked []string) {
	t.Helper()
	tn := nodetest.Start(t, nodetest.Options{Dir: dir, DB: dsn})
	fin := tn.Client(demo.Staff["finance"].Token)
	var chk ledgerCheckAnswer
	fin.JSON(t, "GET", "/v1/ledger/check", nil, 200, &chk)
	if !chk.JournalOK || chk.SumFen != 0 || len(chk.Problems) > 0 || chk.Transfers < minTransfers {
		t.Fatalf("ledger check on the restored node: %+v (want at least %d transfers)", chk, minTransfers)
	}
	// Every top-up acknowledged before the backup started is in it.
	var page struct {
		Entries []struct {
			ID string `json:"id"`
		} `json:"entries"`
	}
	fin.JSON(t, "GET", "/v1/accounts/"+ledger.WalletID(demo.Residents[0].ResidentID)+"/statement?limit=1000", nil, 200, &page)
	have := map[string]bool{}
	for _, e := range page.Entries {
		have[e.ID] = true
	}
	for _, id := range acked {
		if !have[id] {
			t.Fatalf("transfer %s, acknowledged before the backup, is missing after restore", id)
		}
	}
	r := demo.Residents[0]
	var tok struct {
		Token string `json:"token"`
	}
	tn.Client("").JSON(t, "POST", "/v1/auth/resident", map[string]string{"card_number": r.CardNumber, "pin": r.PIN}, 200, &tok)
	var me struct {
		Name string `json:"name"`
	}
	tn.Client(tok.Token).JSON(t, "GET", "/v1/me", nil, 200, &me)
	if me.Name != r.Name {
		t.Fatalf("restored resident is %q, want %q", me.Name, r.Name)
	}
}

// topUpWhile tops up the first demo resident's wallet until stop is closed,
// returning the ids of acknowledged transfers.
func topUpWhile(t *testing.T, tn *nodetest.Node, stop <-chan struct{}) func() []string {
	var (
		mu  sync.Mutex
		ids []string
		wg  sync.WaitGroup
		n   atomic.Int64
	)
	c := tn.Client(tn.Demo.Staff["finance"].Token)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := c.Try("POST", "/v1/topups", map[string]any{"idempotency_key": fmt.Sprintf("bk-%d", n.Add(1)), "card_number": tn.Demo.Residents[0].CardNumber, "amount_fen": 100})
			if err != nil || resp.Status != 200 {
				t.Errorf("top-up during backup: %v %d %s", err, resp.Status, resp.Body)
				return
			}
			var tr struct {
				ID string `json:"id"`
			}
			resp.Decode(t, &tr)
			mu.Lock()
			ids = append(ids, tr.ID)
			mu.Unlock()
		}
	}()
	return func() []string {
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), ids...)
	}
}

// TestBackupRestoreSQLite backs up a running demo node while it takes
// top-ups, restores into a fresh directory and starts a node there.
func TestBackupRestoreSQLite(t *testing.T) {
	src := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 20})
	// Some top-ups acknowledged before the backup starts, more during it.
	stop := make(chan struct{})
	wait := topUpWhile(t, src, stop)
	for len(src.Demo.Residents) > 0 {
		var chk ledgerCheckAnswer
		src.Client(src.Demo.Staff["finance"].Token).JSON(t, "GET", "/v1/ledger/check", nil, 200, &chk)
		if chk.Transfers > 60 {
			break
		}
	}
	stop2 := make(chan struct{})
	before := func() []string { close(stop); return wait() }()
	wait2 := topUpWhile(t, src, stop2)
	// Copies of keys a crash of an earlier version left under temporary
	// names go into neither archive.
	for _, p := range []string{".master.key.tmp-123456", "keys/node.key.tmp-0011223344556677", "keys/.issuer-x.key.0011.tmp"} {
		if err := os.WriteFile(filepath.Join(src.Dir, p), []byte("a key"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "node.tar.gz")
	secrets := filepath.Join(t.TempDir(), "node-secrets.tar.gz")
	code, msg := runCmd(t, "backup", "--data", src.Dir, "--out", out, "--secrets-out", secrets)
	close(stop2)
	wait2()
	if code != 0 {
		t.Fatalf("backup: %d %s", code, msg)
	}
	src.Stop()

	// The backup holds the database and the data files; the secrets (the
	// master key the personal data is sealed under, the signing keys) are
	// in the other archive only.
	names := archiveNames(t, out)
	for _, want := range []string{"manifest.json", "yikatong.db", "data/demo.json"} {
		if !names[want] {
			t.Fatalf("the archive lacks %s: %v", want, names)
		}
	}
	for n := range names {
		if strings.HasSuffix(n, "-wal") || strings.HasSuffix(n, "-shm") || n == "data/yikatong.db" {
			t.Fatalf("the archive holds the live database file %s", n)
		}
		if strings.HasSuffix(n, ".key") || strings.Contains(n, ".key.tmp") || strings.Contains(n, ".key.0011.tmp") {
			t.Fatalf("the backup holds the secret %s beside the database", n)
		}
	}
	snames := archiveNames(t, secrets)
	for _, want := range []string{"manifest.json", "data/" + vault.KeyFile, "data/keys/node.key"} {
		if !snames[want] {
			t.Fatalf("the secrets archive lacks %s: %v", want, snames)
		}
	}
	if len(snames) < 4 { // manifest, master key, node key, an issuer key
		t.Fatalf("the secrets archive holds %v", snames)
	}
	for n := range snames {
		if n != "manifest.json" && !strings.HasSuffix(n, ".key") {
			t.Fatalf("the secrets archive holds %s", n)
		}
	}

	dst := filepath.Join(t.TempDir(), "restored")
	// Without its secrets, or with another node's, a backup is refused
	// before anything is written.
	if code, msg := runCmd(t, "restore", "--in", out, "--data", dst); code != 1 || !strings.Contains(msg, "--secrets") {
		t.Fatalf("restore without the secrets: %d %s", code, msg)
	}
	other := nodetest.Start(t, nodetest.Options{})
	otherOut, otherSecrets := filepath.Join(t.TempDir(), "o.tar.gz"), filepath.Join(t.TempDir(), "o-secrets.tar.gz")
	if code, msg := runCmd(t, "backup", "--data", other.Dir, "--out", otherOut, "--secrets-out", otherSecrets); code != 0 {
		t.Fatalf("backup of another node: %d %s", code, msg)
	}
	if code, msg := runCmd(t, "restore", "--in", out, "--secrets", otherSecrets, "--data", dst); code != 1 || !strings.Contains(msg, "does not hold the secrets") {
		t.Fatalf("restore with another node's secrets: %d %s", code, msg)
	}
	if code, msg := runCmd(t, "restore", "--in", out, "--secrets", out, "--data", dst); code != 1 || !strings.Contains(msg, "secrets archive manifest") {
		t.Fatalf("restore with the backup given as its secrets: %d %s", code, msg)
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Fatalf("a refused restore left %s behind", dst)
	}
	if code, msg := runCmd(t, "restore", "--in", out, "--secrets", secrets, "--data", dst); code != 0 {
		t.Fatalf("restore: %d %s", code, msg)
	}
	if st, err := os.Stat(filepath.Join(dst, vault.KeyFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("restored master key: %v %v", st, err)
	}
	// Restoring over an existing node is refused.
	if code, msg := runCmd(t, "restore", "--in", out, "--secrets", secrets, "--data", dst); code != 1 || !strings.Contains(msg, "not empty") || !strings.Contains(msg, "不是空的") {
		t.Fatalf("restore over a node: %d %s", code, msg)
	}
	checkRestored(t, dst, "", src.Demo, int64(len(before)), before)

	t.Run("a backup of an older version, secrets inside, still restores", func(t *testing.T) {
		old := filepath.Join(t.TempDir(), "old.tar.gz")
		oneArchive(t, out, secrets, old)
		to := filepath.Join(t.TempDir(), "old")
		if code, msg := runCmd(t, "restore", "--in", old, "--secrets", secrets, "--data", to); code != 1 || !strings.Contains(msg, "leave out --secrets") {
			t.Fatalf("old archive with --secrets: %d %s", code, msg)
		}
		if code, msg := runCmd(t, "restore", "--in", old, "--data", to); code != 0 {
			t.Fatalf("restore of an old archive: %d %s", code, msg)
		}
		if _, err := os.Stat(filepath.Join(to, vault.KeyFile)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a damaged archive is refused before anything is written", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad.tar.gz")
		rewriteArchive(t, secrets, bad, func(name string, b []byte) []byte {
			if name == "data/"+vault.KeyFile {
				b = append([]byte(nil), b...)
				b[0] ^= 1
			}
			return b
		})
		to := filepath.Join(t.TempDir(), "x")
		if code, msg := runCmd(t, "restore", "--in", out, "--secrets", bad, "--data", to); code != 1 || !strings.Contains(msg, "checksum") {
			t.Fatalf("damaged secrets archive: %d %s", code, msg)
		}
		badDB := filepath.Join(t.TempDir(), "bad-db.tar.gz")
		rewriteArchive(t, out, badDB, func(name string, b []byte) []byte {
			if name == "yikatong.db" {
				b = append([]byte(nil), b...)
				b[len(b)/2] ^= 1
			}
			return b
		})
		if code, msg := runCmd(t, "restore", "--in", badDB, "--secrets", secrets, "--data", to); code != 1 || !strings.Contains(msg, "checksum") {
			t.Fatalf("damaged archive: %d %s", code, msg)
		}
		if _, err := os.Stat(to); !os.IsNotExist(err) {
			t.Fatalf("a refused restore left %s behind", to)
		}
		evil := filepath.Join(t.TempDir(), "evil.tar.gz")
		rewriteArchive(t, out, evil, nil, "data/../../escape")
		if code, msg := runCmd(t, "restore", "--in", evil, "--secrets", secrets, "--data", to); code != 1 || !strings.Contains(msg, "unsafe") {
			t.Fatalf("path traversal: %d %s", code, msg)
		}
	})
	t.Run("usage errors", func(t *testing.T) {
		if code, _ := runCmd(t, "backup", "--data", src.Dir); code != 2 {
			t.Fatalf("backup without --out: %d", code)
		}
		if code, msg := runCmd(t, "backup", "--data", src.Dir, "--out", filepath.Join(t.TempDir(), "x.tar.gz")); code != 2 || !strings.Contains(msg, "--secrets-out") {
			t.Fatalf("backup without --secrets-out: %d %s", code, msg)
		}
		same := filepath.Join(t.TempDir(), "x.tar.gz")
		if code, msg := runCmd(t, "backup", "--data", src.Dir, "--out", same, "--secrets-out", same); code != 2 || !strings.Contains(msg, "two files") {
			t.Fatalf("backup with one file for both: %d %s", code, msg)
		}
		if code, msg := runCmd(t, "backup", "--data", t.TempDir(), "--out", filepath.Join(t.TempDir(), "x.tar.gz"), "--secrets-out", filepath.Join(t.TempDir(), "s.tar.gz")); code != 1 || !strings.Contains(msg, vault.KeyFile) {
			t.Fatalf("backup of a non-node dir: %d %s", code, msg)
		}
		if code, msg := runCmd(t, "backup", "--data", src.Dir, "--db", filepath.Join(t.TempDir(), "none.db"), "--out", filepath.Join(t.TempDir(), "x.tar.gz"), "--secrets-out", filepath.Join(t.TempDir(), "s.tar.gz")); code != 1 || !strings.Contains(msg, "give its --db") {
			t.Fatalf("backup of a missing SQLite file: %d %s", code, msg)
		}
		if code, msg := runCmd(t, "backup", "--data", src.Dir, "--db", "mysql://bob:sekret@db/city", "--out", filepath.Join(t.TempDir(), "x.tar.gz"), "--secrets-out", filepath.Join(t.TempDir(), "s.tar.gz")); code != 1 ||
			!strings.Contains(msg, `unsupported database URL scheme "mysql"`) || strings.Contains(msg, "sekret") {
			t.Fatalf("backup of a MySQL URL: %d %s", code, msg)
		}
	})
}

// TestBackupRestorePostgres backs up a node on PostgreSQL with pg_dump and
// restores it into a fresh database and data directory.
func TestBackupRestorePostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("PostgreSQL")
	}
	dsn := storetest.Postgres(t)
	src := nodetest.Start(t, nodetest.Options{DB: dsn, Demo: true, DemoResidents: 20})
	stop := make(chan struct{})
	wait := topUpWhile(t, src, stop)
	for i := 0; i < 30; i++ {
		src.Client(src.Demo.Staff["finance"].Token).JSON(t, "GET", "/v1/ledger/check", nil, 200, nil)
	}
	before := func() []string { close(stop); return wait() }()
	out := filepath.Join(t.TempDir(), "node.tar.gz")
	secrets := filepath.Join(t.TempDir(), "node-secrets.tar.gz")
	if code, msg := runCmd(t, "backup", "--data", src.Dir, "--db", dsn, "--out", out, "--secrets-out", secrets); code != 0 {
		t.Fatalf("backup: %d %s", code, msg)
	}
	src.Stop()
	if names := archiveNames(t, out); !names["yikatong.pgdump"] || names["data/"+vault.KeyFile] {
		t.Fatalf("archive: %v", names)
	}
	if names := archiveNames(t, secrets); !names["data/"+vault.KeyFile] {
		t.Fatalf("secrets archive: %v", names)
	}
	dst := filepath.Join(t.TempDir(), "restored")
	if code, msg := runCmd(t, "restore", "--in", out, "--secrets", secrets, "--data", dst); code != 1 || !strings.Contains(msg, "--db") {
		t.Fatalf("PostgreSQL restore without --db: %d %s", code, msg)
	}
	// A database that is not empty is refused before anything is
	// unpacked or pg_restore runs, as a data directory is: the node's own
	// (its schema), or one holding any table.
	other := storetest.Postgres(t)
	odb, err := sql.Open("pgx", other)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := odb.Exec(`CREATE TABLE notes (id int)`); err != nil {
		t.Fatal(err)
	}
	odb.Close()
	for _, c := range []struct{ db, want string }{{dsn, "a node's schema"}, {other, "(it holds public.notes)"}} {
		code, msg := runCmd(t, "restore", "--in", out, "--secrets", secrets, "--data", dst, "--db", c.db)
		if code != 1 || !strings.Contains(msg, "is not empty") || !strings.Contains(msg, c.want) || !strings.Contains(msg, "不是空的") || strings.Contains(msg, "pg_restore") {
			t.Fatalf("restore into a database that is not empty: %d %s", code, msg)
		}
		if _, err := os.Stat(dst); !os.IsNotExist(err) {
			t.Fatalf("a refused restore left %s behind", dst)
		}
	}
	dsn2 := storetest.Postgres(t)
	if code, msg := runCmd(t, "restore", "--in", out, "--secrets", secrets, "--data", dst, "--db", dsn2); code != 0 {
		t.Fatalf("restore: %d %s", code, msg)
	}
	checkRestored(t, dst, dsn2, src.Demo, int64(len(before)), before)
}

// oneArchive writes dst as an older version wrote a backup: one archive,
// the secrets among its files.
func oneArchive(t *testing.T, backup, secrets, dst string) {
	t.Helper()
	sfiles := map[string][]byte{}
	rewriteArchive(t, secrets, "", func(name string, b []byte) []byte { sfiles[name] = b; return b })
	delete(sfiles, "manifest.json")
	var extra []string
	for n := range sfiles {
		extra = append(extra, n)
	}
	rewriteArchiveWith(t, backup, dst, func(name string, b []byte) []byte {
		if name != "manifest.json" {
			return b
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		m["files"] = append(m["files"].([]any), m["secrets"].([]any)...)
		delete(m, "secrets")
		out, _ := json.Marshal(m)
		return out
	}, sfiles, extra...)
}

func archiveNames(t *testing.T, p string) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	rewriteArchive(t, p, "", func(name string, b []byte) []byte { names[name] = true; return b })
	return names
}

// rewriteArchive copies archive src to dst ("" = only read), passing each
// file through edit, and appends empty files named extra.
func rewriteArchive(t *testing.T, src, dst string, edit func(string, []byte) []byte, extra ...string) {
	t.Helper()
	rewriteArchiveWith(t, src, dst, edit, nil, extra...)
}

// rewriteArchiveWith is rewriteArchive appending files named extra with
// their contents from add (empty if absent).
func rewriteArchiveWith(t *testing.T, src, dst string, edit func(string, []byte) []byte, add map[string][]byte, extra ...string) {
	t.Helper()
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		if edit != nil {
			b = edit(h.Name, b)
		}
		h.Size = int64(len(b))
		tw.WriteHeader(h)
		tw.Write(b)
	}
	for _, n := range extra {
		tw.WriteHeader(&tar.Header{Name: n, Mode: 0o600, Size: int64(len(add[n])), Typeflag: tar.TypeReg})
		tw.Write(add[n])
	}
	tw.Close()
	zw.Close()
	if dst != "" {
		if err := os.WriteFile(dst, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
