package main

import (
	"context"
	"database/sql"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/vault"
)

// stoppedNode returns the data directory of a node that started once and
// stopped (SQLite, no demo).
func stoppedNode(t *testing.T) string {
	t.Helper()
	tn := nodetest.Start(t, nodetest.Options{})
	tn.Stop()
	return tn.Dir
}

// backupOf backs up dir into two archives in a new directory.
func backupOf(t *testing.T, dir string) (out, secrets string) {
	t.Helper()
	bd := t.TempDir()
	out, secrets = filepath.Join(bd, "b.tar.gz"), filepath.Join(bd, "s.tar.gz")
	if code, msg := runCmd(t, "backup", "--data", dir, "--out", out, "--secrets-out", secrets); code != 0 {
		t.Fatalf("backup: %d %s", code, msg)
	}
	return out, secrets
}

// An operator who keeps backups in the data directory (--out DATA/…) gets
// a backup of the node, not one that also holds the backup's own working
// copy of the database (or the archives being written).
func TestBackupOutInsideTheDataDirectory(t *testing.T) {
	dir := stoppedNode(t)
	out := filepath.Join(dir, "backups", "b.tar.gz")
	os.MkdirAll(filepath.Dir(out), 0o700)
	secrets := filepath.Join(t.TempDir(), "s.tar.gz")
	for i := 0; i < 2; i++ { // the second run finds the first one's archive
		if code, msg := runCmd(t, "backup", "--data", dir, "--out", out, "--secrets-out", secrets); code != 0 {
			t.Fatalf("backup: %d %s", code, msg)
		}
	}
	for n := range archiveNames(t, out) {
		if strings.Contains(n, ".yikatong-backup-") || strings.HasSuffix(n, ".tar.gz") || strings.HasSuffix(n, ".part") {
			t.Errorf("the backup holds %s", n)
		}
	}
}

// restore --data creates the data directory, parents included.
func TestRestoreIntoANewNestedDirectory(t *testing.T) {
	out, secrets := backupOf(t, stoppedNode(t))
	dst := filepath.Join(t.TempDir(), "srv", "yikatong", "data")
	if code, msg := runCmd(t, "restore", "--in", out, "--secrets", secrets, "--data", dst); code != 0 {
		t.Fatalf("restore into a new nested directory: %d %s", code, msg)
	}
	if _, err := os.Stat(filepath.Join(dst, vault.KeyFile)); err != nil {
		t.Fatal(err)
	}
}

// restore --data accepts an existing empty directory (deploy.md), also
// where that directory is a volume of its own (a disk mounted for the
// node, a Kubernetes volume) or one the operator may write but whose
// parent it may not.
func TestRestoreIntoAnEmptyVolume(t *testing.T) {
	out, secrets := backupOf(t, stoppedNode(t))
	parent := t.TempDir()
	dst := filepath.Join(parent, "data")
	if err := os.Mkdir(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := syscall.Mount("tmpfs", dst, "tmpfs", 0, "size=64m,mode=0700"); err != nil {
			t.Skipf("cannot mount a tmpfs: %v", err)
		}
		t.Cleanup(func() { syscall.Unmount(dst, syscall.MNT_DETACH) })
	} else {
		os.Chmod(parent, 0o500)
		t.Cleanup(func() { os.Chmod(parent, 0o700) })
	}
	if code, msg := runCmd(t, "restore", "--in", out, "--secrets", secrets, "--data", dst); code != 0 {
		t.Fatalf("restore into an empty volume: %d %s", code, msg)
	}
	ents, _ := os.ReadDir(dst)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) == 0 || strings.Contains(strings.Join(names, " "), ".yikatong-restore") {
		t.Fatalf("restored directory holds %v", names)
	}
	if _, err := os.Stat(filepath.Join(dst, vault.KeyFile)); err != nil {
		t.Fatal(err)
	}
	// What a restore killed in it leaves (its staging directory) does not
	// make a data directory non-empty.
	dst3 := filepath.Join(t.TempDir(), "data3")
	os.MkdirAll(filepath.Join(dst3, ".yikatong-restore-123", "keys"), 0o700)
	os.WriteFile(filepath.Join(dst3, ".yikatong-restore-123", "yikatong.db"), []byte("half"), 0o600)
	if code, msg := runCmd(t, "restore", "--in", out, "--secrets", secrets, "--data", dst3); code != 0 {
		t.Fatalf("restore over a killed restore's leftovers: %d %s", code, msg)
	}
	if _, err := os.Stat(filepath.Join(dst3, ".yikatong-restore-123")); !os.IsNotExist(err) {
		t.Fatalf("the leftovers are still there: %v", err)
	}
	// What a refused restore leaves: the volume as it was (empty).
	dst2 := filepath.Join(t.TempDir(), "data2")
	os.Mkdir(dst2, 0o700)
	if code, _ := runCmd(t, "restore", "--in", out, "--secrets", out, "--data", dst2); code != 1 {
		t.Fatalf("restore with a bad secrets archive: exit %d", code)
	}
	if ents, _ := os.ReadDir(dst2); len(ents) != 0 {
		t.Fatalf("a refused restore left %v", ents)
	}
}

// pg_dump and pg_restore get the database password through their
// environment, never on their command line, which every user of the host
// can read (ps, /proc/PID/cmdline) while a dump runs.
func TestBackupKeepsThePostgresPasswordOffCommandLines(t *testing.T) {
	bin := t.TempDir()
	log := filepath.Join(t.TempDir(), "calls")
	script := `#!/bin/sh
echo "$0 $* PGPASSWORD=$PGPASSWORD" >> ` + log + `
for a in "$@"; do case "$a" in --file=*) printf 'PGDMP fake' > "${a#--file=}";; esac; done
`
	for _, name := range []string{"pg_dump", "pg_restore"} {
		if err := os.WriteFile(filepath.Join(bin, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	if p, err := exec.LookPath("pg_dump"); err != nil || filepath.Dir(p) != bin {
		t.Fatalf("fake pg_dump not found first: %v %v", p, err)
	}
	dir := stoppedNode(t)
	const pw = "s3kret-Pw"
	dsn := "postgres://bob:" + pw + "@127.0.0.1:5432/city?sslmode=disable"
	bd := t.TempDir()
	out, secrets := filepath.Join(bd, "b.tar.gz"), filepath.Join(bd, "s.tar.gz")
	if code, msg := runCmd(t, "backup", "--data", dir, "--db", dsn, "--out", out, "--secrets-out", secrets); code != 0 {
		t.Fatalf("backup: %d %s", code, msg)
	}
	// restore first checks that the database is empty (over pgx, not a
	// command line); there is no server here: refused, without the
	// password in what it says.
	to := filepath.Join(t.TempDir(), "r")
	if code, msg := runCmd(t, "restore", "--in", out, "--secrets", secrets, "--data", to, "--db", dsn); code != 1 ||
		!strings.Contains(msg, "bob@127.0.0.1:5432/city") || strings.Contains(msg, pw) {
		t.Fatalf("restore without a server: %d %s", code, msg)
	}
	if _, err := os.Stat(to); !os.IsNotExist(err) {
		t.Fatalf("a refused restore left %s", to)
	}
	checkPGEmpty = func(context.Context, string) error { return nil }
	t.Cleanup(func() { checkPGEmpty = pgCheckEmpty })
	if code, msg := runCmd(t, "restore", "--in", out, "--secrets", secrets, "--data", to, "--db", dsn); code != 0 {
		t.Fatalf("restore: %d %s", code, msg)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		args, env, _ := strings.Cut(line, " PGPASSWORD=")
		if strings.Contains(args, pw) {
			t.Errorf("the password is on the command line: %s", args)
		}
		if env != pw {
			t.Errorf("the tool did not get the password in its environment: %q", line)
		}
		if !strings.Contains(args, "bob@127.0.0.1:5432/city") || !strings.Contains(args, "sslmode=disable") {
			t.Errorf("the tool did not get the rest of the URL: %s", args)
		}
	}
}

// restore streams the database to disk: a city's database of gigabytes
// must not need as much memory (or twice as much) on the restore host.
func TestRestoreDoesNotHoldTheDatabaseInMemory(t *testing.T) {
	dir := stoppedNode(t)
	const size = 128 << 20
	db, err := sql.Open("sqlite", filepath.Join(dir, "yikatong.db"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = db.Exec(`CREATE TABLE ops_big(b BLOB);
		WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 128)
		INSERT INTO ops_big SELECT zeroblob(1048576) FROM n`)
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	out, secrets := backupOf(t, dir)
	dst := filepath.Join(t.TempDir(), "r")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	code, msg := runCmd(t, "restore", "--in", out, "--secrets", secrets, "--data", dst)
	runtime.ReadMemStats(&after)
	if code != 0 {
		t.Fatalf("restore: %d %s", code, msg)
	}
	if st, err := os.Stat(filepath.Join(dst, "yikatong.db")); err != nil || st.Size() < size {
		t.Fatalf("restored database: %v %v", st, err)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("restore of a %d MiB database allocated %d MiB", size>>20, alloc>>20)
	if alloc > size/4 {
		t.Fatalf("restore of a %d MiB database allocated %d MiB: it holds the archive in memory", size>>20, alloc>>20)
	}
}

// bigNode returns the data directory of a stopped node whose database
// holds mib MiB more.
func bigNode(t *testing.T, mib int) string {
	t.Helper()
	dir := stoppedNode(t)
	db, err := sql.Open("sqlite", filepath.Join(dir, "yikatong.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE ops_big(b BLOB)`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < $1)
		INSERT INTO ops_big SELECT randomblob(1048576) FROM n`, mib); err != nil {
		t.Fatal(err)
	}
	return dir
}

// A backup stopped by SIGTERM or Ctrl-C (a cron job's timeout, systemd
// stopping it) leaves no copy of the database and no half archive behind:
// night after night they would fill the backup disk, and the copy holds
// the city's data outside any archive's custody.
func TestBackupStoppedLeavesNothingBehind(t *testing.T) {
	dir := bigNode(t, 64)
	outDir := t.TempDir()
	for _, after := range []time.Duration{100 * time.Millisecond, 600 * time.Millisecond} {
		cmd := exec.Command(nodetest.Binary(t), "backup", "--data", dir, "--out", filepath.Join(outDir, "b.tar.gz"), "--secrets-out", filepath.Join(outDir, "s.tar.gz"))
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(after)
		cmd.Process.Signal(syscall.SIGTERM)
		err := cmd.Wait()
		ents, _ := os.ReadDir(outDir)
		var left []string
		for _, e := range ents {
			left = append(left, e.Name())
		}
		if err == nil {
			t.Logf("the backup finished within %v; left %v", after, left)
			continue
		}
		for _, n := range left {
			if strings.HasPrefix(n, ".yikatong-backup-") || strings.HasSuffix(n, ".part") || n == "b.tar.gz" {
				t.Errorf("a backup stopped after %v (%v: %s) left %v", after, err, strings.TrimSpace(out.String()), left)
				break
			}
		}
	}
}
