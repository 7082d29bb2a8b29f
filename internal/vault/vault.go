// Package vault protects personal data at rest.
//
// A city node keeps one 32-byte master key in DIR/master.key (mode 0600 in a
// 0700 directory). Every process of the city (API processes side by side over
// one PostgreSQL, the CLI) must open the same file: data sealed by one is
// unsealed by another, and look-up hashes must agree for the unique indexes
// to work. Back the file up with the database; losing it loses every sealed
// name and ID number.
//
// The master key is never used directly. Separate subkeys are derived with
// HMAC-SM3(master, label), one per purpose:
//
//   - sealing: SM4-GCM (GM/T 0002 block cipher in Galois/Counter Mode, the
//     national algorithm a government system is expected to use). A sealed
//     value is version byte 0x01 ‖ 12-byte random nonce ‖ ciphertext ‖ 16-byte
//     tag. The caller's associated data (e.g. the row id) is authenticated,
//     so a sealed value copied to another row does not open.
//   - look-up hashes: hex HMAC-SM3 of kind ‖ 0x00 ‖ value, for unique indexes
//     and exact search (by ID number, …) without storing the value.
//   - PIN pepper: mixed into PIN hashes so a stolen database alone does not
//     allow an offline search of the 10⁶ possible PINs.
//
// The first Open on an empty directory creates the key atomically (a
// complete temporary file hard-linked into place), so processes starting
// together agree on one key. The temporary file is named .master.key-*.tmp
// (a name `yikatong backup` skips rather than filing a key copy with the
// ordinary data), and Open removes any such file a crash left behind.
package vault

import (
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/emmansun/gmsm/sm3"
	"github.com/emmansun/gmsm/sm4"

	"github.com/yikatong/yikatong/internal/secretfile"
)

// KeyFile is the name of the master key file inside the data directory.
const KeyFile = "master.key"

const (
	keySize   = 32
	version1  = 0x01
	nonceSize = 12
	tagSize   = 16
)

// Overhead is how many bytes Seal adds to the plaintext.
const Overhead = 1 + nonceSize + tagSize

// ErrOpen is returned by Unseal for a value that is not authentic: tampered,
// truncated, sealed under another key or with other associated data.
var ErrOpen = errors.New("vault: sealed value is not authentic (tampered, wrong key or wrong associated data)")

// Vault holds the derived subkeys. It is safe for concurrent use.
type Vault struct {
	aead      cipher.AEAD
	lookupKey []byte
	pepper    []byte
}

// Open loads DIR/master.key, creating the directory (0700) and the key
// (0600, 32 random bytes) if they do not exist. It refuses a key file of the
// wrong size or one readable by group or others.
func Open(dataDir string) (*Vault, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("vault: creating data directory: %w", err)
	}
	secretfile.RemoveStaleTemps(dataDir, keyTempPattern, oldKeyTempPattern)
	path := filepath.Join(dataDir, KeyFile)
	key, err := readKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := createKey(dataDir, path); err != nil {
			return nil, err
		}
		key, err = readKey(path)
	}
	if err != nil {
		return nil, err
	}
	return fromMaster(key)
}

// New returns a vault over a given 32-byte master key (tests, tools).
func New(master []byte) (*Vault, error) {
	if len(master) != keySize {
		return nil, fmt.Errorf("vault: master key must be %d bytes, got %d", keySize, len(master))
	}
	return fromMaster(master)
}

func readKey(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("vault: %s is accessible by other users (mode %v); run chmod 600 on it (主密钥文件 %s 可被其他用户访问（权限 %v），请对其执行 chmod 600)", path, st.Mode().Perm(), path, st.Mode().Perm())
	}
	key, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("vault: reading master key: %w", err)
	}
	if len(key) != keySize {
		return nil, fmt.Errorf("vault: %s holds %d bytes, expected a %d-byte key (主密钥文件 %s 有 %d 字节，应为 %d 字节的密钥)", path, len(key), keySize, path, len(key), keySize)
	}
	return key, nil
}

// testHookKeyTemp, when set (tests), sees the temporary key file's path.
var testHookKeyTemp func(tmp string)

// keyTempPattern names the temporary file createKey writes the key to. It
// ends in ".tmp" so that a copy left behind by a crash is never taken for a
// data file: `yikatong backup` skips "*.tmp" files, and would otherwise put
// a full copy of the master key in the ordinary backup archive rather than
// the secrets archive. The versions before this one used
// ".master.key.tmp-*" (oldKeyTempPattern).
const (
	keyTempPattern    = ".master.key-*.tmp"
	oldKeyTempPattern = ".master.key.tmp-*"
)

// createKey writes a new key to a temporary file and hard-links it into
// place: readers never see a partial file, and of several processes racing
// here exactly one wins (the others find the winner's key).
func createKey(dir, path string) error {
	key := make([]byte, keySize)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("vault: generating master key: %w", err)
	}
	f, err := os.CreateTemp(dir, keyTempPattern)
	if err != nil {
		return fmt.Errorf("vault: creating master key: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("vault: creating master key: %w", err)
	}
	if _, err := f.Write(key); err != nil {
		f.Close()
		return fmt.Errorf("vault: writing master key: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("vault: writing master key: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("vault: writing master key: %w", err)
	}
	if testHookKeyTemp != nil {
		testHookKeyTemp(tmp)
	}
	if err := os.Link(tmp, path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("vault: installing master key: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

func derive(master []byte, label string) []byte {
	m := hmac.New(sm3.New, master)
	m.Write([]byte("yikatong/vault/v1/" + label))
	return m.Sum(nil)
}

func fromMaster(master []byte) (*Vault, error) {
	sealKey := derive(master, "seal")[:16] // SM4 keys are 128 bits
	block, err := sm4.NewCipher(sealKey)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Vault{
		aead:      aead,
		lookupKey: derive(master, "lookup"),
		pepper:    derive(master, "pin-pepper"),
	}, nil
}

// Seal encrypts and authenticates plaintext, binding it to aad (for
// example the id of the row that stores it).
func (v *Vault) Seal(plaintext []byte, aad string) []byte {
	out := make([]byte, 1+nonceSize, Overhead+len(plaintext))
	out[0] = version1
	if _, err := rand.Read(out[1:]); err != nil {
		panic("vault: no randomness: " + err.Error()) // crypto/rand never fails on supported systems
	}
	return v.aead.Seal(out, out[1:1+nonceSize], plaintext, []byte(aad))
}

// Unseal authenticates and decrypts a value produced by Seal with the same
// aad. Any tampering yields ErrOpen.
func (v *Vault) Unseal(sealed []byte, aad string) ([]byte, error) {
	if len(sealed) < Overhead || sealed[0] != version1 {
		return nil, ErrOpen
	}
	pt, err := v.aead.Open(nil, sealed[1:1+nonceSize], sealed[1+nonceSize:], []byte(aad))
	if err != nil {
		return nil, ErrOpen
	}
	return pt, nil
}

// LookupHash returns the hex keyed hash (HMAC-SM3) of value within kind
// ("id_number", …). Equal inputs give equal hashes in every process of the
// city; without the master key the hash reveals nothing and cannot be
// searched by enumeration.
func (v *Vault) LookupHash(kind, value string) string {
	m := hmac.New(sm3.New, v.lookupKey)
	m.Write([]byte(kind))
	m.Write([]byte{0})
	m.Write([]byte(value))
	return hex.EncodeToString(m.Sum(nil))
}

// Pepper returns a copy of the 32-byte PIN pepper.
func (v *Vault) Pepper() []byte {
	return append([]byte(nil), v.pepper...)
}
