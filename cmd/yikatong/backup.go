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
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

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
	fs.SetOutput(stderr)
	data := fs.String("data", "./yikatong-data", "the node's data directory")
	db := fs.String("db", "", "database URL (default: SQLite in the data directory); postgres://… runs pg_dump")
	out := fs.String("out", "", "the archive to write (.tar.gz): the database and the data directory's other files")
	secretsOut := fs.String("secrets-out", "", "the second archive to write (.tar.gz): the master key and signing keys, for a custody apart from the backup")
	if err := fs.Parse(args); err != nil {
		return 2
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
	ctx := context.Background()
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
	err = filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if abs, _ := filepath.Abs(p); skip[abs] || strings.HasSuffix(p, ".tmp") {
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
	if err := writeArchive(secretsOut, sman, secrets); err != nil {
		return err
	}
	return writeArchive(out, man, files)
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
func writeArchive(out string, man backupManifestV1, files []archiveEntry) error {
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
		if err := tarFile(tw, f.name, f.src); err != nil {
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
	cmd := exec.CommandContext(ctx, bin, "--format=custom", "--no-owner", "--no-privileges", "--file="+dst, "--dbname="+dsn)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pg_dump failed: %v: %s", err, redactURL(strings.TrimSpace(stderr.String()), dsn))
	}
	return nil
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

func tarFile(tw *tar.Writer, name, src string) error {
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
	_, err = io.CopyN(tw, f, st.Size())
	return err
}

func cmdRestore(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	in := fs.String("in", "", "the archive written by 'yikatong backup' (--out)")
	secrets := fs.String("secrets", "", "the secrets archive written with it (--secrets-out): master key and signing keys")
	data := fs.String("data", "", "the data directory to create (must not exist or be empty)")
	db := fs.String("db", "", "for a PostgreSQL backup: the URL of an empty database to restore into (runs pg_restore)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *in == "" || *data == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: yikatong restore --in FILE.tar.gz --secrets SECRETS.tar.gz --data DIR [--db postgres://…]")
		return 2
	}
	man, err := restore(context.Background(), *in, *secrets, *data, *db)
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
// directory (and, for PostgreSQL, runs pg_restore).
func restore(ctx context.Context, in, secretsIn, dataDir, dsn string) (*backupManifestV1, error) {
	if ents, err := os.ReadDir(dataDir); err == nil && len(ents) > 0 {
		return nil, fmt.Errorf("%s is not empty: restore only into a new data directory", dataDir)
	}
	files, man, err := readBackup(in)
	if err != nil {
		return nil, err
	}
	toWrite := man.Files
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
		for _, want := range man.Secrets {
			b, ok := sfiles[want.Name]
			sum := sha256.Sum256(b)
			if !ok || int64(len(b)) != want.Size || hex.EncodeToString(sum[:]) != want.SHA256 {
				return nil, fmt.Errorf("%s does not hold the secrets of %s: its %s is missing or another one (secrets of another node, or of a time before a key was made?)", secretsIn, in, want.Name)
			}
			files[want.Name] = b
		}
		toWrite = append(append([]backupFile(nil), man.Files...), man.Secrets...)
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
	stage, err := os.MkdirTemp(filepath.Dir(filepath.Clean(dataDir)), ".yikatong-restore-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage)
	if err := os.Chmod(stage, 0o700); err != nil {
		return nil, err
	}
	var dump string
	for _, f := range toWrite {
		var dst string
		switch {
		case f.Name == backupSQLite:
			dst = filepath.Join(stage, "yikatong.db")
		case f.Name == backupPGDump:
			tf, err := os.CreateTemp("", "yikatong-restore-*.pgdump")
			if err != nil {
				return nil, err
			}
			tf.Close()
			dst, dump = tf.Name(), tf.Name()
			defer os.Remove(dump)
		default:
			dst = filepath.Join(stage, filepath.FromSlash(strings.TrimPrefix(f.Name, backupDataDir)))
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(dst, files[f.Name], 0o600); err != nil {
			return nil, err
		}
	}
	if man.Database == "sqlite" {
		if err := sqliteIntegrity(ctx, filepath.Join(stage, "yikatong.db")); err != nil {
			return nil, err
		}
	}
	if dump != "" {
		if err := pgRestore(ctx, dsn, dump); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Dir(filepath.Clean(dataDir)), 0o700); err != nil {
		return nil, err
	}
	os.Remove(dataDir) // an empty directory may be in the way
	if err := os.Rename(stage, dataDir); err != nil {
		return nil, err
	}
	return man, nil
}

// readBackup reads a backup into memory and checks every file against the
// manifest (names, sizes, SHA-256) and every name for safety.
func readBackup(in string) (map[string][]byte, *backupManifestV1, error) {
	files, man, err := readArchive(in, backupFormat, "yikatong backup")
	if err != nil {
		return nil, nil, err
	}
	hasKey, hasDB := false, false
	for _, mf := range man.Files {
		hasKey = hasKey || mf.Name == backupDataDir+vault.KeyFile
		hasDB = hasDB || mf.Name == backupSQLite && man.Database == "sqlite" || mf.Name == backupPGDump && man.Database == "postgres"
	}
	for _, mf := range man.Secrets {
		if !safeArchiveName(mf.Name) || !strings.HasPrefix(mf.Name, backupDataDir) {
			return nil, nil, fmt.Errorf("%s lists an unsafe secret name %q", in, mf.Name)
		}
		hasKey = hasKey || mf.Name == backupDataDir+vault.KeyFile
	}
	if !hasKey || !hasDB {
		return nil, nil, fmt.Errorf("%s lacks the master key or the database", in)
	}
	return files, man, nil
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
// the given format, checking every file against the manifest.
func readArchive(in, format, what string) (map[string][]byte, *backupManifestV1, error) {
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
	files := map[string][]byte{}
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
		if _, dup := files[h.Name]; dup {
			return nil, nil, fmt.Errorf("%s holds %q twice", in, h.Name)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, nil, fmt.Errorf("%s is damaged: %w", in, err)
		}
		files[h.Name] = b
	}
	var man backupManifestV1
	if err := json.Unmarshal(files[backupManifest], &man); err != nil || man.Format != format {
		return nil, nil, fmt.Errorf("%s has no valid %s manifest", in, what)
	}
	if len(files) != len(man.Files)+1 {
		return nil, nil, fmt.Errorf("%s holds %d files but its manifest lists %d", in, len(files)-1, len(man.Files))
	}
	for _, mf := range man.Files {
		b, ok := files[mf.Name]
		if !ok {
			return nil, nil, fmt.Errorf("%s lacks %s", in, mf.Name)
		}
		sum := sha256.Sum256(b)
		if int64(len(b)) != mf.Size || hex.EncodeToString(sum[:]) != mf.SHA256 {
			return nil, nil, fmt.Errorf("%s: %s does not match its checksum; the archive is damaged", in, mf.Name)
		}
	}
	return files, &man, nil
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

func pgRestore(ctx context.Context, dsn, dump string) error {
	bin, err := exec.LookPath("pg_restore")
	if err != nil {
		return errors.New("pg_restore is not installed: install the PostgreSQL client (Debian: postgresql-client)")
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction", "--dbname="+dsn, dump)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pg_restore failed (restore into an empty database): %v: %s", err, redactURL(strings.TrimSpace(stderr.String()), dsn))
	}
	return nil
}
