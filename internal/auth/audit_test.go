package auth_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// TestAuditEachWritesARowPerSubject: one action that showed many
// residents (more than one statement's worth of rows) is found under
// each of them, with the actor, action and detail; no subject, one row.
func TestAuditEachWritesARowPerSubject(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := auth.New(storetest.Open(t, dsn), nil)
		p := auth.Principal{Kind: auth.KindStaff, Role: auth.RoleFinance, Subject: "usr_fin"}
		subjects := make([]string, 450)
		for i := range subjects {
			subjects[i] = fmt.Sprintf("w:res_%03d", i)
		}
		if err := s.AuditEach(ctx, p, "read_statement", subjects, "counterpart in prv:bus api"); err != nil {
			t.Fatal(err)
		}
		for _, sub := range []string{subjects[0], subjects[199], subjects[200], subjects[449]} {
			log, err := s.AuditLog(ctx, sub, 0, 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(log) != 1 || log[0].Actor != "usr_fin" || log[0].ActorRole != auth.RoleFinance || log[0].Action != "read_statement" || log[0].Detail != "counterpart in prv:bus api" {
				t.Fatalf("%s: %+v", sub, log)
			}
		}
		all, err := s.AuditLog(ctx, "", 0, 500)
		if err != nil || len(all) != len(subjects) {
			t.Fatalf("%d rows (%v), want %d", len(all), err, len(subjects))
		}
		if err := s.AuditEach(ctx, p, "search_residents", nil, "results=0"); err != nil {
			t.Fatal(err)
		}
		if all, _ = s.AuditLog(ctx, "", 0, 500); len(all) != len(subjects)+1 || all[0].Action != "search_residents" || all[0].Subject != "" {
			t.Fatalf("no subject: %d rows, newest %+v", len(all), all[0])
		}
	})
}
