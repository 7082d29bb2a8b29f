package main

// yikatong backup / restore: two tar.gz archives holding everything a node
// needs to come back, each with a manifest of SHA-256 sums that restore
// checks before writing anything:
//
//   - the backup (--out): the database (a consistent online copy) and the
//     data directory's other files;
//   - the secrets (--secrets-out): the vault master key and the signing key
//     files (*.key).
//
// They are two files because they belong in two custodies (docs/deploy.md,
// "Key custody"): the database's personal data is sealed under the master
// key, and the issuer keys sign residents' codes, so one archive holding
// both would give whoever copies it every resident's data and the power to
// forge codes. The backup's manifest lists the secrets it needs by name and
// SHA-256 (which reveals nothing of a random key), so restore refuses
// secrets of another node or another time. Restore still reads the
// single-archive backups older versions wrote.
//
// SQLite: `VACUUM INTO` writes a consistent, compacted copy while the node
// keeps serving (WAL readers do not block the writer). PostgreSQL: pg_dump
// in its custom format (a consistent snapshot of one database); restore
// feeds it to pg_restore into an empty database. Continuous archiving
// (pg_basebackup + WAL) is the production answer for PostgreSQL and is
// described in docs/deploy.md; the dump here is for moving and for
// small cities.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/vault"
	_ "modernc.org/sqlite"
)

func init() {
	register("backup", "back up a node: database copy and data files into one tar.gz, master key and key files into another", cmdBackup)
	register("restore", "restore a backup made by 'yikatong backup' (and its secrets) into an empty data directory", cmdRestore)
}

// Names inside the archive.
const (
	backupManifest = "manifest.json"
	backupSQLite   = "yikatong.db"
	backupPGDump   = "yikatong.pgdump"
	backupDataDir  = "data/"

	backupFormat  = "yikatong-backup/1"
	secretsFormat = "yikatong-secrets/1"
)

type backupFile struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

type backupManifestV1 struct {
	Format   string       `json:"format"` // backupFormat, or secretsFormat for the secrets
	Created  time.Time    `json:"created"`
	Database string       `json:"database,omitempty"` // sqlite | postgres
	Files    []backupFile `json:"files"`
	// Secrets are the files of the secrets archive this backup needs (none
	// in a backup of an older version, whose Files hold them).
	Secrets []backupFile `json:"secrets,omitempty"`
}

// isLeftover: a temporary file a crash left in the data directory, never
// backed up: "*.tmp", and the key files' temporary names of earlier
// versions (".master.key.tmp-*", "*.key.tmp-*"), each a whole copy of a
// private key that must not land in the ordinary archive.
func isLeftover(name string) bool {
	return strings.HasSuffix(name, ".tmp") || strings.Contains(name, ".key.tmp-")
}

// isSecret: a data directory file that goes into the secrets archive (the
// master key, signing key files).
func isSecret(rel string) bool {
	return rel == vault.KeyFile || strings.HasSuffix(rel, ".key")
}

// postgresURL returns s as the PostgreSQL URL it names (its scheme
// lower-cased), or false if s names no PostgreSQL database.
func postgresURL(s string) (string, bool) {
	kind, u, err := store.ParseDSN(s)
	return u, err == nil && kind == store.Postgres
}

func cmdBackup(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("backup", flag.ContinueOnError)
	data := fs.String("data", "./yikatong-data", "the node's data directory")
	db := fs.String("db", "", "database URL (default: SQLite in the data directory); postgres://… runs pg_dump")
	out := fs.String("out", "", "the archive to write (.tar.gz): the database and the data directory's other files")
	secretsOut := fs.String("secrets-out", "", "the second archive to write (.tar.gz): the master key and signing keys, for a custody apart from the backup")
	if exit, ok := parseFlags(fs, "yikatong backup --data DIR [--db URL] --out FILE.tar.gz --secrets-out SECRETS.tar.gz", args, stdout, stderr); !ok {
		return exit
	}
	if *out == "" || *secretsOut == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: yikatong backup --data DIR [--db URL] --out FILE.tar.gz --secrets-out SECRETS.tar.gz")
		fmt.Fprintln(stderr, "  the secrets (master key, signing keys) go into their own archive: keep it apart from the backup")
		return 2
	}
	if a, b := filepath.Clean(*out), filepath.Clean(*secretsOut); a == b {
		fmt.Fprintln(stderr, "backup: --out and --secrets-out must be two files")
		return 2
	}
	// SIGINT/SIGTERM (Ctrl-C, a cron job's timeout, systemd) stop the
	// backup through its context, so that its copy of the database and its
	// half-written archive are removed on the way out.
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if err := backup(ctx, *data, *db, *out, *secretsOut); err != nil {
		fmt.Fprintf(stderr, "backup: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "backup written to %s\n", *out)
	fmt.Fprintf(stdout, "secrets (master key, signing keys) written to %s: keep them apart from the backup, with the key custodians; restore needs both\n", *secretsOut)
	return 0
}

func backup(ctx context.Context, dataDir, dsn, out, secretsOut string) error {
	if _, err := os.Stat(filepath.Join(dataDir, vault.KeyFile)); err != nil {
		return fmt.Errorf("%s has no %s: is it a node's data directory? (%v)", dataDir, vault.KeyFile, err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(out), ".yikatong-backup-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	// 1. The database.
	var dbName, dbFile, dialect string
	kind, target := store.SQLite, filepath.Join(dataDir, "yikatong.db")
	if dsn != "" {
		if kind, target, err = store.ParseDSN(dsn); err != nil {
			return err
		}
	}
	sqlitePath := ""
	if kind == store.Postgres {
		dialect, dbName, dbFile = "postgres", backupPGDump, filepath.Join(tmp, backupPGDump)
		if err := pgDump(ctx, target, dbFile); err != nil {
			return err
		}
	} else {
		sqlitePath = target
		dialect, dbName, dbFile = "sqlite", backupSQLite, filepath.Join(tmp, backupSQLite)
		if err := sqliteCopy(ctx, sqlitePath, dbFile); err != nil {
			return err
		}
	}

	// 2. The data directory's files, less the live SQLite database; the
	// secrets apart.
	files := []archiveEntry{{dbName, dbFile}}
	var secrets []archiveEntry
	skip := map[string]bool{}
	if sqlitePath != "" {
		abs, _ := filepath.Abs(sqlitePath)
		for _, s := range []string{"", "-wal", "-shm", "-journal"} {
			skip[abs+s] = true
		}
	}
	// Nor this backup's own work: its copy of the database and the
	// archives it writes, when the operator keeps backups in the data
	// directory (and what a backup or restore that was killed left there).
	for _, p := range []string{out, out + ".part", secretsOut, secretsOut + ".part"} {
		abs, _ := filepath.Abs(p)
		skip[abs] = true
	}
	err = filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != dataDir && (strings.HasPrefix(d.Name(), ".yikatong-backup-") || strings.HasPrefix(d.Name(), ".yikatong-restore-")) {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if abs, _ := filepath.Abs(p); skip[abs] || isLeftover(d.Name()) {
			return nil
		}
		rel, err := filepath.Rel(dataDir, p)
		if err != nil {
			return err
		}
		e := archiveEntry{backupDataDir + filepath.ToSlash(rel), p}
		if isSecret(filepath.ToSlash(rel)) {
			secrets = append(secrets, e)
		} else {
			files = append(files, e)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("reading %s: %w", dataDir, err)
	}

	// 3. Manifests, then the archives (each written beside its final name
	// and renamed, so a failed backup never leaves a half archive under
	// it; the secrets first: a backup whose secrets are missing is none).
	now := time.Now().UTC()
	man := backupManifestV1{Format: backupFormat, Created: now, Database: dialect}
	sman := backupManifestV1{Format: secretsFormat, Created: now}
	if man.Files, err = listFiles(files); err != nil {
		return err
	}
	if sman.Files, err = listFiles(secrets); err != nil {
		return err
	}
	man.Secrets = sman.Files
	if err := writeArchive(ctx, secretsOut, sman, secrets); err != nil {
		return err
	}
	return writeArchive(ctx, out, man, files)
}

type archiveEntry struct{ name, src string }

// listFiles sums the files for a manifest.
func listFiles(files []archiveEntry) ([]backupFile, error) {
	var out []backupFile
	for _, f := range files {
		sum, size, err := fileSHA256(f.src)
		if err != nil {
			return nil, err
		}
		out = append(out, backupFile{Name: f.name, Size: size, SHA256: sum})
	}
	return out, nil
}

// writeArchive writes man and files as a tar.gz at out (via out.part).
func writeArchive(ctx context.Context, out string, man backupManifestV1, files []archiveEntry) error {
	mb, _ := json.MarshalIndent(man, "", "  ")
	part := out + ".part"
	w, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(part)
	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	if err := tarBytes(tw, backupManifest, mb); err != nil {
		w.Close()
		return err
	}
	for _, f := range files {
		if err := tarFile(ctx, tw, f.name, f.src); err != nil {
			w.Close()
			return err
		}
	}
	if err := tw.Close(); err != nil {
		w.Close()
		return err
	}
	if err := gz.Close(); err != nil {
		w.Close()
		return err
	}
	if err := w.Sync(); err != nil {
		w.Close()
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return os.Rename(part, out)
}

// sqliteCopy writes a consistent copy of the live database at src to dst.
func sqliteCopy(ctx context.Context, src, dst string) error {
	if _, err := os.Stat(src); err != nil {
		return fmt.Errorf("no SQLite database at %s (%v): for a node on PostgreSQL, or with its SQLite file elsewhere, give its --db", src, err)
	}
	db, err := sql.Open("sqlite", "file:"+src+"?_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `VACUUM INTO $1`, dst); err != nil {
		return fmt.Errorf("copying the SQLite database: %w", err)
	}
	return nil
}

func pgDump(ctx context.Context, dsn, dst string) error {
	bin, err := exec.LookPath("pg_dump")
	if err != nil {
		return errors.New("pg_dump is not installed: install the PostgreSQL client (Debian: postgresql-client), or back up the database with pg_basebackup and WAL archiving (docs/deploy.md)")
	}
	var stderr bytes.Buffer
	target, env := pgToolTarget(dsn)
	cmd := exec.CommandContext(ctx, bin, "--format=custom", "--no-owner", "--no-privileges", "--file="+dst, "--dbname="+target)
	cmd.Env = env
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pg_dump failed: %v: %s", err, redactURL(strings.TrimSpace(stderr.String()), dsn))
	}
	return nil
}

// pgToolTarget returns what pg_dump and pg_restore get: the URL without
// its password, and their environment with the password as PGPASSWORD.
// A command line is readable by every user of the host (ps,
// /proc/PID/cmdline) as long as the tool runs; the environment only by
// its own user.
func pgToolTarget(dsn string) (string, []string) {
	env := os.Environ()
	u, err := url.Parse(dsn)
	if err != nil || u.User == nil {
		return dsn, env
	}
	pw, ok := u.User.Password()
	if !ok {
		return dsn, env
	}
	u.User = url.User(u.User.Username())
	return u.String(), append(env, "PGPASSWORD="+pw)
}

// redactURL removes the password of dsn from msg.
func redactURL(msg, dsn string) string {
	if i := strings.Index(dsn, "://"); i >= 0 {
		rest := dsn[i+3:]
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			if c := strings.Index(rest[:at], ":"); c >= 0 && c+1 < at {
				msg = strings.ReplaceAll(msg, rest[c+1:at], "***")
			}
		}
	}
	return msg
}

func fileSHA256(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil)), n, err
}

func tarBytes(tw *tar.Writer, name string, b []byte) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(b)), ModTime: time.Now(), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	_, err := tw.Write(b)
	return err
}

func tarFile(ctx context.Context, tw *tar.Writer, name, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: st.Size(), ModTime: st.ModTime(), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	// Copy exactly the size in the header: a key file cannot change under
	// us, and the database copy is ours.
	_, err = io.CopyN(tw, ctxReader{ctx, f}, st.Size())
	return err
}

// ctxReader stops reading once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func cmdRestore(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	in := fs.String("in", "", "the archive written by 'yikatong backup' (--out)")
	secrets := fs.String("secrets", "", "the secrets archive written with it (--secrets-out): master key and signing keys")
	data := fs.String("data", "", "the data directory to create (must not exist or be empty)")
	db := fs.String("db", "", "for a PostgreSQL backup: the URL of an empty database to restore into (runs pg_restore)")
	if exit, ok := parseFlags(fs, "yikatong restore --in FILE.tar.gz --secrets SECRETS.tar.gz --data DIR [--db postgres://…]", args, stdout, stderr); !ok {
		return exit
	}
	if *in == "" || *data == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: yikatong restore --in FILE.tar.gz --secrets SECRETS.tar.gz --data DIR [--db postgres://…]")
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	man, err := restore(ctx, *in, *secrets, *data, *db)
	if err != nil {
		fmt.Fprintf(stderr, "restore: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "restored a %s backup of %s into %s\n", man.Database, man.Created.Format(time.RFC3339), *data)
	if man.Database == "postgres" {
		fmt.Fprintf(stdout, "start it with: yikatong serve --data %s --db URL\n", *data)
	} else {
		fmt.Fprintf(stdout, "start it with: yikatong serve --data %s\n", *data)
	}
	return 0
}

// restore checks both archives against their manifests (and the secrets
// against the backup's list of them) first, then writes the data
// directory (and, for PostgreSQL, runs pg_restore). The backup is streamed
// to a staging directory as it is checked, never held in memory (a city's
// database may be larger than the restore host's memory). A data
// directory that does not exist is created whole by one rename of the
// staging directory beside it; an existing empty one (a volume mounted for
// the node, a directory its operator may write but not its parent) gets
// the staging directory inside it, whose files then move up. A refused or
// failed restore leaves the data directory as it found it.
func restore(ctx context.Context, in, secretsIn, dataDir, dsn string) (*backupManifestV1, error) {
	dataDir = filepath.Clean(dataDir)
	exists := false
	if ents, err := os.ReadDir(dataDir); err == nil {
		// What a restore killed here left (its staging directory) does
		// not count, and goes.
		var left []string
		for _, e := range ents {
			if !e.IsDir() || !strings.HasPrefix(e.Name(), ".yikatong-restore-") {
				return nil, notEmptyTarget(dataDir, "")
			}
			left = append(left, filepath.Join(dataDir, e.Name()))
		}
		for _, p := range left {
			if err := os.RemoveAll(p); err != nil {
				return nil, err
			}
		}
		exists = true
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", dataDir, err)
	}
	// Both archives must be readable before anything is created.
	for _, f := range []string{in, secretsIn} {
		if f != "" {
			if _, err := os.Stat(f); err != nil {
				return nil, err
			}
		}
	}
	// So must an empty database be, for a PostgreSQL backup: pg_restore
	// into one that holds tables fails part way ("relation … already
	// exists"), after the backup was unpacked.
	if u, ok := postgresURL(dsn); ok {
		if err := checkPGEmpty(ctx, u); err != nil {
			return nil, err
		}
	}
	stageIn := dataDir
	if !exists {
		stageIn = filepath.Dir(dataDir)
		if err := os.MkdirAll(stageIn, 0o700); err != nil {
			return nil, err
		}
	}
	stage, err := os.MkdirTemp(stageIn, ".yikatong-restore-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage)
	if err := os.Chmod(stage, 0o700); err != nil {
		return nil, err
	}
	incoming := filepath.Join(stage, ".incoming")
	if err := os.Mkdir(incoming, 0o700); err != nil {
		return nil, err
	}
	files, man, err := extractBackup(ctx, in, incoming)
	if err != nil {
		return nil, err
	}
	var secrets map[string][]byte
	switch {
	case len(man.Secrets) == 0 && secretsIn != "":
		return nil, fmt.Errorf("%s holds its secrets itself (a backup of an older version): leave out --secrets", in)
	case len(man.Secrets) > 0 && secretsIn == "":
		return nil, fmt.Errorf("%s keeps its secrets (master key, signing keys) in a separate archive: give it with --secrets FILE (written by backup --secrets-out, kept by the key custodians)", in)
	case len(man.Secrets) > 0:
		sfiles, err := readSecrets(secretsIn)
		if err != nil {
			return nil, err
		}
		secrets = map[string][]byte{}
		for _, want := range man.Secrets {
			b, ok := sfiles[want.Name]
			sum := sha256.Sum256(b)
			if !ok || int64(len(b)) != want.Size || hex.EncodeToString(sum[:]) != want.SHA256 {
				return nil, fmt.Errorf("%s does not hold the secrets of %s: its %s is missing or another one (secrets of another node, or of a time before a key was made?)", secretsIn, in, want.Name)
			}
			if _, dup := files[want.Name]; dup {
				return nil, fmt.Errorf("%s holds %s, which its secrets archive holds too", in, want.Name)
			}
			secrets[want.Name] = b
		}
	}
	if man.Database == "postgres" {
		u, ok := postgresURL(dsn)
		if !ok {
			return nil, errors.New("this is a PostgreSQL backup: give --db postgres://… (an empty database) to restore it into")
		}
		dsn = u
	}
	if man.Database == "sqlite" && dsn != "" {
		return nil, errors.New("this is a SQLite backup: it restores into DATA/yikatong.db; leave out --db")
	}
	// Every file in place in the staging directory.
	dump := ""
	target := func(name string) string {
		switch name {
		case backupSQLite:
			return filepath.Join(stage, "yikatong.db")
		case backupPGDump:
			dump = filepath.Join(stage, ".yikatong.pgdump")
			return dump
		}
		return filepath.Join(stage, filepath.FromSlash(strings.TrimPrefix(name, backupDataDir)))
	}
	for _, f := range man.Files {
		dst := target(f.Name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return nil, err
		}
		if _, err := os.Lstat(dst); err == nil {
			return nil, fmt.Errorf("%s holds two files for %s", in, dst)
		}
		if err := os.Rename(files[f.Name], dst); err != nil {
			return nil, err
		}
	}
	for _, f := range man.Secrets {
		dst := target(f.Name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return nil, err
		}
		if err := writeFileSync(dst, secrets[f.Name]); err != nil {
			return nil, err
		}
	}
	if man.Database == "sqlite" {
		if err := sqliteIntegrity(ctx, filepath.Join(stage, "yikatong.db")); err != nil {
			return nil, err
		}
	}
	if err := os.RemoveAll(incoming); err != nil {
		return nil, err
	}
	if dump != "" {
		if err := pgRestore(ctx, dsn, dump); err != nil {
			return nil, err
		}
		if err := os.Remove(dump); err != nil {
			return nil, err
		}
	}
	if !exists {
		if err := os.Rename(stage, dataDir); err != nil {
			return nil, err
		}
		return man, nil
	}
	ents, err := os.ReadDir(stage)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if err := os.Rename(filepath.Join(stage, e.Name()), filepath.Join(dataDir, e.Name())); err != nil {
			return nil, err
		}
	}
	return man, nil
}

func writeFileSync(p string, b []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readBackup reads a backup into memory and checks every file against the
// manifest (names, sizes, SHA-256) and every name for safety.
func readBackup(in string) (map[string][]byte, *backupManifestV1, error) {
	files, man, err := readArchive(in, backupFormat, "yikatong backup")
	if err != nil {
		return nil, nil, err
	}
	if err := checkBackupManifest(in, man); err != nil {
		return nil, nil, err
	}
	return files, man, nil
}

// extractBackup is readBackup writing each file to its own file in dir
// instead of memory: it returns the path of each.
func extractBackup(ctx context.Context, in, dir string) (map[string]string, *backupManifestV1, error) {
	paths := map[string]string{}
	man, _, err := scanArchive(in, backupFormat, "yikatong backup", func(name string, r io.Reader) (int64, string, error) {
		p := filepath.Join(dir, fmt.Sprint(len(paths)))
		paths[name] = p
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return 0, "", err
		}
		h := sha256.New()
		n, err := io.Copy(io.MultiWriter(f, h), ctxReader{ctx, r})
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return n, hex.EncodeToString(h.Sum(nil)), err
	})
	if err != nil {
		return nil, nil, err
	}
	if err := checkBackupManifest(in, man); err != nil {
		return nil, nil, err
	}
	return paths, man, nil
}

// checkBackupManifest: a backup names the master key and its database,
// and its secrets under safe names.
func checkBackupManifest(in string, man *backupManifestV1) error {
	hasKey, hasDB := false, false
	for _, mf := range man.Files {
		hasKey = hasKey || mf.Name == backupDataDir+vault.KeyFile
		hasDB = hasDB || mf.Name == backupSQLite && man.Database == "sqlite" || mf.Name == backupPGDump && man.Database == "postgres"
	}
	for _, mf := range man.Secrets {
		if !safeArchiveName(mf.Name) || !strings.HasPrefix(mf.Name, backupDataDir) {
			return fmt.Errorf("%s lists an unsafe secret name %q", in, mf.Name)
		}
		hasKey = hasKey || mf.Name == backupDataDir+vault.KeyFile
	}
	if !hasKey || !hasDB {
		return fmt.Errorf("%s lacks the master key or the database", in)
	}
	return nil
}

// readSecrets reads a secrets archive as readBackup reads a backup.
func readSecrets(in string) (map[string][]byte, error) {
	files, man, err := readArchive(in, secretsFormat, "yikatong secrets archive")
	if err != nil {
		return nil, err
	}
	for _, mf := range man.Files {
		if !strings.HasPrefix(mf.Name, backupDataDir) {
			return nil, fmt.Errorf("%s holds %q, which is no data directory file", in, mf.Name)
		}
	}
	return files, nil
}

// readArchive reads a tar.gz written by writeArchive whose manifest has
// the given format into memory, checking every file against the manifest.
func readArchive(in, format, what string) (map[string][]byte, *backupManifestV1, error) {
	files := map[string][]byte{}
	man, manifest, err := scanArchive(in, format, what, func(name string, r io.Reader) (int64, string, error) {
		b, err := io.ReadAll(r)
		files[name] = b
		sum := sha256.Sum256(b)
		return int64(len(b)), hex.EncodeToString(sum[:]), err
	})
	if err != nil {
		return nil, nil, err
	}
	files[backupManifest] = manifest
	return files, man, nil
}

// maxManifest bounds the manifest read into memory.
const maxManifest = 16 << 20

// scanArchive reads the tar.gz at in, giving each file but the manifest
// to keep (which returns its size and SHA-256), and checks the files
// against the manifest, whose format must be format: every file listed,
// none more, each of its size and sum, every name safe and once.
func scanArchive(in, format, what string, keep func(name string, r io.Reader) (int64, string, error)) (*backupManifestV1, []byte, error) {
	f, err := os.Open(in)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		return nil, nil, fmt.Errorf("%s is not a %s (not gzip): %w", in, what, err)
	}
	tr := tar.NewReader(gz)
	type got struct {
		size int64
		sum  string
	}
	files := map[string]got{}
	var manifest []byte
	seen := map[string]bool{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s is damaged: %w", in, err)
		}
		if h.Typeflag != tar.TypeReg {
			return nil, nil, fmt.Errorf("%s holds %q, which is not a regular file", in, h.Name)
		}
		if !safeArchiveName(h.Name) {
			return nil, nil, fmt.Errorf("%s holds an unsafe name %q", in, h.Name)
		}
		if seen[h.Name] {
			return nil, nil, fmt.Errorf("%s holds %q twice", in, h.Name)
		}
		seen[h.Name] = true
		if h.Name == backupManifest {
			manifest, err = io.ReadAll(io.LimitReader(tr, maxManifest+1))
			if err == nil && len(manifest) > maxManifest {
				err = errors.New("the manifest is too large")
			}
			if err != nil {
				return nil, nil, fmt.Errorf("%s is damaged: %w", in, err)
			}
			continue
		}
		size, sum, err := keep(h.Name, tr)
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, gzip.ErrChecksum) || errors.Is(err, gzip.ErrHeader) || errors.Is(err, tar.ErrHeader) {
				return nil, nil, fmt.Errorf("%s is damaged: %w", in, err)
			}
			return nil, nil, fmt.Errorf("%s: %w", in, err)
		}
		files[h.Name] = got{size, sum}
	}
	var man backupManifestV1
	if err := json.Unmarshal(manifest, &man); err != nil || man.Format != format {
		return nil, nil, fmt.Errorf("%s has no valid %s manifest", in, what)
	}
	if len(files) != len(man.Files) {
		return nil, nil, fmt.Errorf("%s holds %d files but its manifest lists %d", in, len(files), len(man.Files))
	}
	for _, mf := range man.Files {
		g, ok := files[mf.Name]
		if !ok {
			return nil, nil, fmt.Errorf("%s lacks %s", in, mf.Name)
		}
		if g.size != mf.Size || g.sum != mf.SHA256 {
			return nil, nil, fmt.Errorf("%s: %s does not match its checksum; the archive is damaged", in, mf.Name)
		}
	}
	return &man, manifest, nil
}

func safeArchiveName(n string) bool {
	if n == backupManifest || n == backupSQLite || n == backupPGDump {
		return true
	}
	rel, ok := strings.CutPrefix(n, backupDataDir)
	return ok && rel != "" && !strings.HasPrefix(rel, "/") && path.Clean(rel) == rel && rel != ".." && !strings.HasPrefix(rel, "../") && !strings.Contains(rel, "\\")
}

func sqliteIntegrity(ctx context.Context, p string) error {
	db, err := sql.Open("sqlite", "file:"+p)
	if err != nil {
		return err
	}
	defer db.Close()
	var res string
	if err := db.QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&res); err != nil {
		return fmt.Errorf("checking the restored database: %w", err)
	}
	if res != "ok" {
		return fmt.Errorf("the restored database fails its integrity check: %s", res)
	}
	return nil
}

// checkPGEmpty is pgCheckEmpty (a test with fake PostgreSQL tools and no
// server replaces it).
var checkPGEmpty = pgCheckEmpty

// pgCheckEmpty refuses a PostgreSQL database that holds any relation
// (table, view, sequence …) outside PostgreSQL's own schemas: a node's
// schema (schema_migrations, audit_log …) or anything else.
func pgCheckEmpty(ctx context.Context, dsn string) error {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return fmt.Errorf("the PostgreSQL URL is not valid: %s", redactURL(err.Error(), dsn))
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	where := fmt.Sprintf("the PostgreSQL database %s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	var n int
	var first sql.NullString
	var migrations bool
	err = db.QueryRowContext(ctx, `
		SELECT count(*), min(quote_ident(n.nspname) || '.' || quote_ident(c.relname)),
		       coalesce(bool_or(c.relname = 'schema_migrations'), false)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
		  AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'`).Scan(&n, &first, &migrations)
	if err != nil {
		return fmt.Errorf("checking that %s is empty: %s", where, redactURL(err.Error(), dsn))
	}
	if n == 0 {
		return nil
	}
	what := fmt.Sprintf(" (it holds %d tables, views or sequences, %s among them)", n, first.String)
	if n == 1 {
		what = fmt.Sprintf(" (it holds %s)", first.String)
	}
	if migrations {
		what = fmt.Sprintf(" (it holds a node's schema: %d tables, views or sequences)", n)
	}
	return notEmptyTarget(where, what)
}

func pgRestore(ctx context.Context, dsn, dump string) error {
	bin, err := exec.LookPath("pg_restore")
	if err != nil {
		return errors.New("pg_restore is not installed: install the PostgreSQL client (Debian: postgresql-client)")
	}
	var stderr bytes.Buffer
	target, env := pgToolTarget(dsn)
	cmd := exec.CommandContext(ctx, bin, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction", "--dbname="+target, dump)
	cmd.Env = env
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pg_restore failed (restore into an empty database): %v: %s", err, redactURL(strings.TrimSpace(stderr.String()), dsn))
	}
	return nil
}
