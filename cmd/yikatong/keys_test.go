package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// `yikatong keys rotate --announce 10m` registers a key that signs ten
// minutes later, prints its kid and activation time, and publishes it at
// once while the running node keeps signing with the old key; a second
// announced rotation is refused while the first is pending; --announce 0
// switches at once.
func TestCmdKeysRotateAnnounce(t *testing.T) {
	ctx := context.Background()
	dsn := storetest.SQLite(t)
	n := nodetest.Start(t, nodetest.Options{DB: dsn})
	oldKid := n.Keys.Current().Public().KidString()
	rotate := func(args ...string) (int, string, string) {
		var out, errb strings.Builder
		code := run(append([]string{"keys", "rotate", "--data", n.Dir, "--db", dsn}, args...), strings.NewReader(""), &out, &errb)
		return code, out.String(), errb.String()
	}
	before := time.Now()
	code, out, msg := rotate("--announce", "10m")
	if code != 0 {
		t.Fatalf("keys rotate --announce 10m: exit %d: %s", code, msg)
	}
	var a struct {
		Kid        string    `json:"kid"`
		ActiveFrom time.Time `json:"active_from"`
	}
	if err := json.Unmarshal([]byte(out), &a); err != nil || a.Kid == "" || a.Kid == oldKid {
		t.Fatalf("printed %q (%v)", out, err)
	}
	if a.ActiveFrom.Before(before.Add(10*time.Minute).Truncate(time.Millisecond)) || a.ActiveFrom.After(time.Now().Add(10*time.Minute)) {
		t.Fatalf("active_from %v, want now + 10m", a.ActiveFrom)
	}
	if !strings.Contains(msg, a.Kid) || !strings.Contains(msg, a.ActiveFrom.Format(time.RFC3339)) {
		t.Fatalf("stderr does not name the key and its activation: %s", msg)
	}
	// Audited, with the host's administrator as the actor.
	entries, err := n.Auth.AuditLog(ctx, a.Kid, 0, 5)
	if err != nil || len(entries) != 1 || entries[0].Action != "rotate_keys" || entries[0].ActorRole != "admin" {
		t.Fatalf("audit of the rotation: %+v %v", entries, err)
	}
	if err := n.Keys.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if got := n.Keys.Current().Public().KidString(); got != oldKid {
		t.Fatalf("the node signs with %s before activation", got)
	}
	pubs, err := n.Keys.PublicKeys(ctx)
	if err != nil || len(pubs) != 2 || pubs[1].KidString() != a.Kid {
		t.Fatalf("published %d keys (%v), want the old and the announced one", len(pubs), err)
	}

	// One pending rotation at a time.
	if code, _, msg := rotate("--announce", "10m"); code != 1 || !strings.Contains(msg, "pending") || !strings.Contains(msg, a.Kid) {
		t.Fatalf("second announced rotation: exit %d: %s", code, msg)
	}
	if code, _, _ := rotate("--announce", "-1m"); code != 2 {
		t.Fatalf("negative --announce: exit %d", code)
	}
	// At once (a compromised key).
	code, out, msg = rotate("--announce", "0")
	if code != 0 || json.Unmarshal([]byte(out), &a) != nil {
		t.Fatalf("--announce 0: exit %d: %s %s", code, out, msg)
	}
	if err := n.Keys.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if got := n.Keys.Current().Public().KidString(); got != a.Kid {
		t.Fatalf("after --announce 0 the node signs with %s, want %s", got, a.Kid)
	}
}
