package auth

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/yikatong/yikatong/internal/store"
)

// AuditEntry is one line of the audit log.
type AuditEntry struct {
	ID        int64     `json:"id"`
	At        time.Time `json:"at"`
	Actor     string    `json:"actor"`
	ActorRole Role      `json:"actor_role"`
	Action    string    `json:"action"`
	Subject   string    `json:"subject"`
	Detail    string    `json:"detail"`
}

// Audit appends to the audit log. Callers must not put full ID numbers in
// subject or detail: name the resident by id or card number.
func (s *Service) Audit(ctx context.Context, p Principal, action, subject, detail string) error {
	return s.audit(ctx, s.db.W, p, action, subject, detail)
}

// audit appends to the audit log through q (a transaction: the line is
// written if and only if what it records is).
func (s *Service) audit(ctx context.Context, q store.Querier, p Principal, action, subject, detail string) error {
	_, err := q.ExecContext(ctx, `INSERT INTO audit_log(at, actor, actor_role, action, subject, detail) VALUES ($1,$2,$3,$4,$5,$6)`,
		s.now().UnixMilli(), p.Subject, string(p.Role), action, subject, detail)
	return storeErr(err)
}

// AuditEach records one action that showed the data of several subjects
// (a search's results, the residents behind a statement's lines): one row
// per subject, so that the log answers "who has seen this resident" by
// subject; with no subject, one row. The rows are written by one
// statement per 200 subjects.
func (s *Service) AuditEach(ctx context.Context, p Principal, action string, subjects []string, detail string) error {
	if len(subjects) == 0 {
		return s.Audit(ctx, p, action, "", detail)
	}
	at := s.now().UnixMilli()
	for len(subjects) > 0 {
		n := min(len(subjects), 200)
		var q strings.Builder
		q.WriteString(`INSERT INTO audit_log(at, actor, actor_role, action, subject, detail) VALUES `)
		args := append(make([]any, 0, 5+n), at, p.Subject, string(p.Role), action, detail)
		for i, sub := range subjects[:n] {
			if i > 0 {
				q.WriteByte(',')
			}
			q.WriteString(`($1,$2,$3,$4,$` + strconv.Itoa(6+i) + `,$5)`)
			args = append(args, sub)
		}
		if _, err := s.db.W.ExecContext(ctx, q.String(), args...); err != nil {
			return storeErr(err)
		}
		subjects = subjects[n:]
	}
	return nil
}

// AuditLog returns entries newest first, optionally only for one subject.
func (s *Service) AuditLog(ctx context.Context, subject string, beforeID int64, limit int) ([]AuditEntry, error) {
	if limit <= 0 || limit > 500 {
		limit = 100
	}
	if beforeID <= 0 {
		beforeID = 1 << 62
	}
	q := `SELECT id, at, actor, actor_role, action, subject, detail FROM audit_log WHERE id < $1 AND ($2 = '' OR subject = $2) ORDER BY id DESC LIMIT $3`
	rows, err := s.db.R.QueryContext(ctx, q, beforeID, subject, limit)
	if err != nil {
		return nil, storeErr(err)
	}
	defer rows.Close()
	var out []AuditEntry
	for rows.Next() {
		var e AuditEntry
		var at int64
		var role string
		if err := rows.Scan(&e.ID, &at, &e.Actor, &role, &e.Action, &e.Subject, &e.Detail); err != nil {
			return nil, storeErr(err)
		}
		e.At, e.ActorRole = time.UnixMilli(at).UTC(), Role(role)
		out = append(out, e)
	}
	return out, storeErr(rows.Err())
}
