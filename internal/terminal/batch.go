package terminal

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
)

// Record is one scan a terminal made offline.
type Record struct {
	// ID is unique per terminal (the terminal makes it up); a record is
	// applied once however often it is uploaded.
	ID string `json:"id"`
	// Seq increases with every record the terminal makes.
	Seq int64 `json:"seq"`
	// At is the terminal's clock at the scan.
	At         time.Time `json:"at"`
	Scenario   string    `json:"scenario"`
	Code       string    `json:"code,omitempty"`
	CardNumber string    `json:"card_number,omitempty"`
	AmountFen  int64     `json:"amount_fen,omitempty"`
}

// Batch is a set of offline records.
type Batch struct {
	Terminal  string    `json:"terminal"`
	ID        string    `json:"batch_id"`
	CreatedAt time.Time `json:"created_at"`
	Records   []Record  `json:"records"`
}

// SignedBatch is what a terminal uploads: the batch JSON (base64url) and
// its Ed25519 signature over "yikatong-batch-v1\x00" followed by the
// decoded payload bytes. Any change to the payload breaks the signature.
type SignedBatch struct {
	Payload   string `json:"payload"`
	Signature string `json:"signature"`
}

// MaxBatchRecords bounds one batch.
const MaxBatchRecords = 100_000

const batchContext = "yikatong-batch-v1\x00"

// ParseBatchKey reads a terminal's batch key (base64url Ed25519 seed, as in
// Credentials.BatchKey).
func ParseBatchKey(s string) (ed25519.PrivateKey, error) {
	seed, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, apperr.Invalid("batch_key", "the batch key is not a base64url Ed25519 seed", "批次密钥格式错误")
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// SignBatch signs b with the terminal's key.
func SignBatch(b Batch, key ed25519.PrivateKey) (SignedBatch, error) {
	payload, err := json.Marshal(b)
	if err != nil {
		return SignedBatch{}, apperr.Wrap(apperr.Internal, err)
	}
	sig := ed25519.Sign(key, append([]byte(batchContext), payload...))
	return SignedBatch{Payload: base64.RawURLEncoding.EncodeToString(payload), Signature: base64.RawURLEncoding.EncodeToString(sig)}, nil
}

// OpenBatch checks sb's signature with the terminal's public key and
// returns the batch. Errors: batch_tampered (signature), malformed (shape).
func OpenBatch(sb SignedBatch, pub ed25519.PublicKey) (Batch, []byte, error) {
	payload, err := base64.RawURLEncoding.DecodeString(sb.Payload)
	if err != nil {
		return Batch{}, nil, apperr.Newf(apperr.Malformed, "the batch payload is not base64url", "批次内容编码错误")
	}
	sig, err := base64.RawURLEncoding.DecodeString(sb.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize || len(pub) != ed25519.PublicKeySize {
		return Batch{}, nil, apperr.New(apperr.BatchTampered)
	}
	if !ed25519.Verify(pub, append([]byte(batchContext), payload...), sig) {
		return Batch{}, nil, apperr.New(apperr.BatchTampered)
	}
	var b Batch
	if err := json.Unmarshal(payload, &b); err != nil {
		return Batch{}, nil, apperr.Newf(apperr.Malformed, "the batch is not valid JSON", "批次不是有效的JSON")
	}
	if b.ID == "" || len(b.ID) > 64 {
		return Batch{}, nil, apperr.Invalid("batch_id", "batch_id must be 1-64 characters", "批次编号须为1至64个字符")
	}
	if len(b.Records) > MaxBatchRecords {
		return Batch{}, nil, apperr.Invalid("records", "too many records in one batch", "单批记录过多")
	}
	return b, payload, nil
}
