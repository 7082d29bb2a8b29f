package node

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
)

// Creating the demo city takes many writes (staff, a thousand residents
// and cards, their funding, providers and terminals), and a first start may
// be stopped anywhere among them (Ctrl-C, a crash, a power cut). Before the
// first of them the node records a plan of the demo city in node_settings
// ("demo", sealed with the vault like residents' personal data): the seed
// that draws the residents, the instant their ages are counted from, how
// many there are, and the secrets chosen in advance (staff passwords, the
// listed residents' PINs). Every step then finds what an earlier start
// created and creates only what is missing:
//
//   - staff by user name (their password is the plan's);
//   - residents by ID number (the same seed draws the same people; a
//     resident and the card are enrolled in one transaction, the listed
//     residents' cards with the plan's PIN);
//   - funding by idempotency key (demo-topup:RESIDENT, demo-medical:RESIDENT),
//     so no top-up is ever applied twice;
//   - providers by name and terminals by provider and name. A terminal's
//     token and batch key are drawn when it is created; the plan keeps them
//     as soon as it is. A terminal whose credentials were lost (stopped
//     between the two) gets a new token (its other tokens revoked) and a
//     new batch key.
//
// demo.json is written last; then the plan is marked done and forgets its
// secrets. A node without a plan that already holds a city's data is not
// a demo city and is never made one (ErrNotDemoCity).
type demoPlan struct {
	State     string            `json:"state"` // demoCreating, demoDone
	Seed      uint64            `json:"seed"`
	At        int64             `json:"at"` // Unix ns: ages and birth dates count from here
	Residents int               `json:"residents"`
	Passwords map[string]string `json:"passwords,omitempty"` // staff user name → password
	PINs      []string          `json:"pins,omitempty"`      // of the listed residents, in order
	// Terminals: terminal name → its credentials, kept as soon as it is created.
	Terminals map[string]DemoTerminal `json:"terminals,omitempty"`
}

const (
	demoCreating = "creating"
	demoDone     = "done"

	demoPlanSetting = "demo"
	demoPlanAAD     = "node_settings/demo"
)

// ErrNotDemoCity: `serve --demo` on a node that holds a city's data but is
// not a demo city (nor a demo city's interrupted creation).
var ErrNotDemoCity = errors.New("this node already holds a city's data (residents, staff users or providers) and is not a demo city: --demo never mixes demo data into a city; for a demo city start on an empty --data directory " +
	"(该节点已有城市数据（居民、工作人员或服务商），且不是演示城市：--demo 不会把演示数据混入已有城市；如需演示城市，请使用空的数据目录启动)")

// ErrDemoFileMissing: the node's demo city was created, but its demo.json
// is not there (deleted, or the data directory copied without it). Its
// one-time secrets cannot be shown again; the city serves as it is.
var ErrDemoFileMissing = errors.New("this node's demo city was created, but its demo.json is missing (deleted or not copied?): the sign-in details were shown only in that file; restore it, or start on an empty --data directory for a new demo city " +
	"(该节点的演示城市已创建，但 demo.json 不存在（被删除或未复制？）：登录信息只保存在该文件中；请恢复该文件，或使用空的数据目录创建新的演示城市)")

// newDemoPlan draws a new plan for n with listed residents who sign in.
func (n *Node) newDemoPlan(listed int) *demoPlan {
	at := n.Now().UnixNano()
	total := n.DemoResidents
	if total <= 0 {
		total = DefaultDemoResidents
	}
	p := &demoPlan{State: demoCreating, Seed: uint64(at), At: at, Residents: max(total, listed),
		Passwords: map[string]string{}, Terminals: map[string]DemoTerminal{}}
	var b [8]byte
	rand.Read(b[:])
	p.Seed ^= binary.LittleEndian.Uint64(b[:])
	for _, s := range demoStaffUsers {
		p.Passwords[s.user] = randomSecret(14)
	}
	for range listed {
		p.PINs = append(p.PINs, randomPIN())
	}
	return p
}

// loadDemoPlan returns the node's demo plan, nil if it has none.
func (n *Node) loadDemoPlan(ctx context.Context) (*demoPlan, error) {
	var v string
	err := n.DB.W.QueryRowContext(ctx, `SELECT value FROM node_settings WHERE name = $1`, demoPlanSetting).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	sealed, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("the demo city's record: %w", err)
	}
	b, err := n.Vault.Unseal(sealed, demoPlanAAD)
	if err != nil {
		return nil, fmt.Errorf("the demo city's record: %w", err)
	}
	var p demoPlan
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("the demo city's record: %w", err)
	}
	if p.Passwords == nil {
		p.Passwords = map[string]string{}
	}
	if p.Terminals == nil {
		p.Terminals = map[string]DemoTerminal{}
	}
	return &p, nil
}

func (n *Node) sealDemoPlan(p *demoPlan) (string, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(n.Vault.Seal(b, demoPlanAAD)), nil
}

// startDemoPlan stores p as the node's plan unless one is there already
// (another process won the race), and returns the stored one.
func (n *Node) startDemoPlan(ctx context.Context, p *demoPlan) (*demoPlan, error) {
	v, err := n.sealDemoPlan(p)
	if err != nil {
		return nil, err
	}
	if _, err := n.DB.W.ExecContext(ctx, `INSERT INTO node_settings(name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING`, demoPlanSetting, v); err != nil {
		return nil, err
	}
	got, err := n.loadDemoPlan(ctx)
	if err == nil && got == nil {
		err = errors.New("the demo city's record was not stored")
	}
	return got, err
}

// saveDemoPlan stores p over the node's plan.
func (n *Node) saveDemoPlan(ctx context.Context, p *demoPlan) error {
	v, err := n.sealDemoPlan(p)
	if err != nil {
		return err
	}
	_, err = n.DB.W.ExecContext(ctx, `UPDATE node_settings SET value = $2 WHERE name = $1`, demoPlanSetting, v)
	return err
}

// finishDemoPlan marks the plan done (demo.json holds the secrets now)
// and drops its secrets.
func (n *Node) finishDemoPlan(ctx context.Context, p *demoPlan) error {
	done := *p
	done.State, done.Passwords, done.PINs, done.Terminals = demoDone, nil, nil, nil
	return n.saveDemoPlan(ctx, &done)
}

// holdsCityData reports whether the node holds data a city is made of
// (its residents, staff users, providers): such a node is not empty.
func (n *Node) holdsCityData(ctx context.Context) (bool, error) {
	for _, table := range []string{"residents", "staff_users", "providers"} {
		var one int
		err := n.DB.W.QueryRowContext(ctx, `SELECT 1 FROM `+table+` LIMIT 1`).Scan(&one)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return false, err
		}
	}
	return false, nil
}

// demoTestHooks lets tests stop the creation of the demo city at a step
// (as a crash there would) and make the enrolment steps small.
type demoTestHooks struct {
	step  func(step string) error
	chunk int // residents per enrolment step (0: demoEnrolChunk)
}

var demoHooks sync.Map // *Node → *demoTestHooks (set only by tests)

// demoEnrolChunk is how many residents one enrolment step enrols.
const demoEnrolChunk = 500

// demoStep marks the end of a step of the demo's creation; an error stops
// the creation there (tests only).
func (n *Node) demoStep(format string, args ...any) error {
	h, ok := demoHooks.Load(n)
	if !ok || h.(*demoTestHooks).step == nil {
		return nil
	}
	return h.(*demoTestHooks).step(fmt.Sprintf(format, args...))
}

func (n *Node) demoChunk() int {
	if h, ok := demoHooks.Load(n); ok && h.(*demoTestHooks).chunk > 0 {
		return h.(*demoTestHooks).chunk
	}
	return demoEnrolChunk
}
