package node

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/idnum"
	"github.com/yikatong/yikatong/internal/resident"
)

// DefaultDemoResidents is the size of the demo city.
const DefaultDemoResidents = 1000

// Demo funding of every demo card.
const (
	DemoWalletFen  = 20_000 // 200 yuan
	DemoMedicalFen = 50_000 // 500 yuan
)

// demoStaffTTL keeps demo tokens valid across restarts for a year.
const demoStaffTTL = 365 * 24 * time.Hour

// EnsureDemo creates the demo city on an empty node and writes demo.json at
// path. On a node that already has its demo it keeps the data and rewrites
// demo.json only if the base URL changed. A creation stopped part way (a
// first start interrupted) is finished: what was created is kept, what is
// missing is created (demo_plan.go). A node that holds a city's data but is
// not a demo city is refused with ErrNotDemoCity (it never mixes demo data
// into a real city); a demo city whose demo.json is gone with
// ErrDemoFileMissing.
func (n *Node) EnsureDemo(ctx context.Context, baseURL, path string) error {
	plan, err := n.loadDemoPlan(ctx)
	if err != nil {
		return err
	}
	if d, err := ReadDemoFile(path); err == nil {
		if d.City != n.City {
			return fmt.Errorf("%s belongs to city %s, this node is %s", path, d.City, n.City)
		}
		n.DemoMode.Store(true)
		if plan != nil && plan.State == demoCreating {
			// Stopped after writing demo.json, before closing the plan.
			if err := n.finishDemoPlan(ctx, plan); err != nil {
				return err
			}
		}
		if d.BaseURL != baseURL {
			d.BaseURL = baseURL
			return writeDemoFile(path, d)
		}
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	switch {
	case plan == nil:
		holds, err := n.holdsCityData(ctx)
		if err != nil {
			return err
		}
		if holds {
			n.Log.Warn("--demo refused: the node holds a city's data and is not a demo city", "path", path)
			return ErrNotDemoCity
		}
		if plan, err = n.startDemoPlan(ctx, n.newDemoPlan(len(demoListed))); err != nil {
			return err
		}
	case plan.State == demoDone:
		n.DemoMode.Store(true)
		n.Log.Warn("the demo city's demo.json is missing", "path", path)
		return fmt.Errorf("%w (%s)", ErrDemoFileMissing, path)
	default:
		n.Log.Info("finishing the demo city a previous start began", "city", n.City)
	}
	n.DemoMode.Store(true)
	d, err := n.seedDemo(ctx, baseURL, plan)
	if err != nil {
		return err
	}
	if err := writeDemoFile(path, d); err != nil {
		return err
	}
	if err := n.demoStep("written"); err != nil {
		return err
	}
	return n.finishDemoPlan(ctx, plan)
}

func writeDemoFile(path string, d *DemoFile) error {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	// Synced before it replaces the old one, and the directory after: the
	// demo's record forgets its secrets once this returns.
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if dir, err := os.Open(filepath.Dir(path)); err == nil {
		dir.Sync()
		dir.Close()
	}
	return nil
}

var (
	surnames   = []rune("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤")
	givenChars = []rune("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红鹏飞建国志文斌辉力宇浩然子轩梓涵一诺欣怡思远雨桐嘉豪俊杰晨曦婷雪梅海燕春生德福振华晓东")
	zzRegions  = []string{"410102", "410103", "410104", "410105", "410106", "410108", "410122", "410181", "410182", "410183"}
	otherCity  = []string{"320102", "310101", "330106", "340104", "420102", "110105", "430102", "370102", "610113", "440106"}
	foreigners = []struct{ name, nat, sex string }{
		{"Anna Müller", "DEU", "F"}, {"John Smith", "GBR", "M"}, {"Kim Minjun", "KOR", "M"}, {"Ivan Petrov", "RUS", "M"},
		{"María García", "ESP", "F"}, {"Sato Yui", "JPN", "F"}, {"Lucas Martin", "FRA", "M"}, {"Aisha Khan", "PAK", "F"},
	}
)

func chineseName(rng *mrand.Rand) string {
	name := []rune{surnames[rng.IntN(len(surnames))]}
	for i := 0; i <= rng.IntN(2); i++ {
		name = append(name, givenChars[rng.IntN(len(givenChars))])
	}
	return string(name)
}

func randomSecret(n int) string {
	const alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
	b := make([]byte, n)
	for i := range b {
		v, _ := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		b[i] = alphabet[v.Int64()]
	}
	return string(b)
}

func randomPIN() string {
	for {
		v, _ := rand.Int(rand.Reader, big.NewInt(1_000_000))
		pin := fmt.Sprintf("%06d", v.Int64())
		if resident.ValidatePIN(pin) == nil {
			return pin
		}
	}
}

// demoPerson is a resident the demo lists in demo.json (with a PIN).
type demoPerson struct {
	name, category, kind, region, nat, sex string
	age                                    int
}

// demoListed are the residents who can sign in (demo.json lists them):
// every category, and the ages that matter for concessions (child, adult,
// 60-64 half fare, 65+ free bus); the schoolchild is a student (the campus
// gate, student fares). A citizen's name ("") is drawn from the plan's seed.
var demoListed = []demoPerson{
	{"", resident.CategoryLocal, idnum.KindCitizen, zzRegions[3], "", "F", 34},
	{"", resident.CategoryInsuredNonlocal, idnum.KindCitizen, otherCity[0], "", "M", 29},
	{foreigners[0].name, resident.CategoryPermanentResident, idnum.KindPermanentResident, "41", foreigners[0].nat, foreigners[0].sex, 41},
	{"", resident.CategoryLocal, idnum.KindCitizen, zzRegions[1], "", "M", 67},
	{"", resident.CategoryLocal, idnum.KindCitizen, zzRegions[2], "", "F", 62},
	{"", resident.CategoryLocal, idnum.KindCitizen, zzRegions[0], "", "M", 19},
	{"", resident.CategoryLocal, idnum.KindCitizen, zzRegions[4], "", "F", 9},
	{foreigners[1].name, resident.CategoryPermanentResident, idnum.KindPermanentResident2017, "4101", foreigners[1].nat, foreigners[1].sex, 55},
}

// demoStaffUsers are the staff of the bureau, the finance department and
// the operator.
var demoStaffUsers = []struct {
	user, name string
	role       auth.Role
}{{"hr", "人社局 王科长", auth.RoleHRAdmin}, {"finance", "财政局 李会计", auth.RoleFinance}, {"operator", "运营中心 张工", auth.RoleOperator}}

// seedDemo creates (or, after an interrupted start, finishes creating)
// the demo city of plan and returns its demo.json.
func (n *Node) seedDemo(ctx context.Context, baseURL string, plan *demoPlan) (*DemoFile, error) {
	start := time.Now()
	d := &DemoFile{BaseURL: baseURL, City: n.City, Staff: map[string]DemoStaff{}, Residents: []DemoResident{}, Terminals: []DemoTerminal{}}
	for _, s := range demoStaffUsers {
		st, err := n.ensureDemoStaff(ctx, s.user, s.name, s.role, plan.Passwords[s.user])
		if err != nil {
			return nil, fmt.Errorf("demo staff %s: %w", s.user, err)
		}
		d.Staff[string(s.role)] = st
	}
	ids, err := n.enrolDemo(ctx, plan, d)
	if err != nil {
		return nil, err
	}
	if err := n.fundDemoSteps(ctx, ids); err != nil {
		return nil, err
	}
	if err := n.demoTerminals(ctx, d, plan); err != nil {
		return nil, err
	}
	n.Auth.Audit(ctx, auth.Principal{Subject: "demo", Role: auth.RoleOperator}, "create_demo_city", n.City, fmt.Sprintf("residents=%d", len(ids)))
	n.Log.Info("demo city created", "city", n.City, "residents", len(ids), "ms", time.Since(start).Milliseconds())
	return d, nil
}

// ensureDemoStaff creates a demo staff user with the plan's password (or
// finds the one an interrupted start created) and signs it in. Tokens an
// interrupted start issued were never shown: they are revoked.
func (n *Node) ensureDemoStaff(ctx context.Context, user, name string, role auth.Role, pw string) (DemoStaff, error) {
	if pw == "" {
		return DemoStaff{}, errors.New("the demo city's record has no password for this user")
	}
	_, err := n.Auth.CreateStaff(ctx, user, name, role, pw, "")
	if apperr.CodeOf(err) == apperr.AlreadyExists {
		u, hash, err2 := n.Auth.StaffByUsername(ctx, user)
		if err2 != nil {
			return DemoStaff{}, err2
		}
		if u.Role != role || u.Disabled || !auth.CheckPassword(hash, pw) {
			return DemoStaff{}, fmt.Errorf("a staff user %q exists that is not the demo city's", user)
		}
		err = nil
	}
	if err != nil {
		return DemoStaff{}, err
	}
	if err := n.demoStep("staff/%s/created", user); err != nil {
		return DemoStaff{}, err
	}
	tok, p, err := n.Auth.LoginStaff(ctx, user, pw, demoStaffTTL)
	if err != nil {
		return DemoStaff{}, err
	}
	if err := n.Auth.RevokeSubjectExcept(ctx, auth.KindStaff, p.Subject, tok); err != nil {
		return DemoStaff{}, err
	}
	if err := n.demoStep("staff/%s", user); err != nil {
		return DemoStaff{}, err
	}
	return DemoStaff{User: user, Password: pw, Token: tok}, nil
}

// demoPeople draws the plan's residents: the listed ones first (with the
// plan's PINs), then the others. The same plan draws the same people.
func demoPeople(plan *demoPlan) ([]resident.BatchItem, error) {
	now := time.Unix(0, plan.At).UTC()
	rng := mrand.New(mrand.NewPCG(plan.Seed, 410100))
	if len(plan.PINs) != len(demoListed) {
		return nil, fmt.Errorf("the demo city's record has %d PINs for %d residents", len(plan.PINs), len(demoListed))
	}
	items := make([]resident.BatchItem, 0, plan.Residents)
	seen := map[string]bool{}
	birthAt := func(age int) time.Time {
		y := now.AddDate(-age, 0, 0).Year()
		return time.Date(y, time.Month(1+rng.IntN(12)), 1+rng.IntN(28), 0, 0, 0, 0, time.UTC).AddDate(0, 0, -1)
	}
	add := func(p demoPerson, pin string) bool {
		for try := 0; try < 20; try++ {
			id := idnum.GenerateNationality(rng, p.kind, p.region, p.nat, birthAt(p.age), p.sex)
			if id == "" {
				return false
			}
			if seen[id] {
				continue
			}
			seen[id] = true
			items = append(items, resident.BatchItem{EnrolInput: resident.EnrolInput{Name: p.name, IDNumber: id, Category: p.category}, IssueCard: true, PIN: pin})
			return true
		}
		return false
	}
	for i, p := range demoListed {
		if p.name == "" {
			p.name = chineseName(rng)
		}
		if !add(p, plan.PINs[i]) {
			return nil, fmt.Errorf("demo: cannot generate an ID for %s", p.category)
		}
		if p.age >= 6 && p.age < 18 {
			items[len(items)-1].Flags = []string{resident.FlagStudent}
		}
	}
	for len(items) < plan.Residents {
		var p demoPerson
		p.age = 1 + rng.IntN(90)
		p.sex = []string{"M", "F"}[rng.IntN(2)]
		switch r := rng.IntN(100); {
		case r < 72:
			p = demoPerson{chineseName(rng), resident.CategoryLocal, idnum.KindCitizen, zzRegions[rng.IntN(len(zzRegions))], "", p.sex, p.age}
		case r < 94:
			p = demoPerson{chineseName(rng), resident.CategoryInsuredNonlocal, idnum.KindCitizen, otherCity[rng.IntN(len(otherCity))], "", p.sex, 18 + rng.IntN(50)}
		default:
			f := foreigners[rng.IntN(len(foreigners))]
			p = demoPerson{f.name, resident.CategoryPermanentResident, idnum.KindPermanentResident, "41", f.nat, f.sex, 20 + rng.IntN(50)}
		}
		add(p, "")
	}
	return items, nil
}

// enrolDemo enrols the plan's residents with their cards, a step at a
// time, finding those an interrupted start enrolled, lists the listed ones
// in d and returns every resident's id.
func (n *Node) enrolDemo(ctx context.Context, plan *demoPlan, d *DemoFile) ([]string, error) {
	items, err := demoPeople(plan)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(items))
	chunk := n.demoChunk()
	for from := 0; from < len(items); from += chunk {
		to := min(from+chunk, len(items))
		results, err := n.Residents.EnrolBatch(ctx, items[from:to])
		if err != nil {
			return nil, fmt.Errorf("demo enrolment: %w", err)
		}
		for j, r := range results {
			i := from + j
			listed := i < len(demoListed)
			if apperr.CodeOf(r.Err) == apperr.AlreadyExists {
				// Enrolled by an interrupted start.
				r, err = n.enrolledDemoResident(ctx, items[i], listed)
				if err != nil {
					return nil, fmt.Errorf("demo resident %d: %w", i, err)
				}
			}
			if r.Err != nil {
				return nil, fmt.Errorf("demo resident %d: %w", i, r.Err)
			}
			ids = append(ids, r.Resident.ID)
			if listed {
				d.Residents = append(d.Residents, DemoResident{
					Name: r.Resident.Name, IDNumber: items[i].IDNumber, CardNumber: r.Card.Number,
					PIN: items[i].PIN, Category: r.Resident.Category, ResidentID: r.Resident.ID, Flags: r.Resident.Flags,
				})
			}
		}
		if err := n.demoStep("residents/%d", to); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// enrolledDemoResident finds a demo resident already enrolled and, for a
// listed one, the live card (enrolment writes the resident and the card,
// with the plan's PIN, in one transaction; a listed resident found without
// one gets it now).
func (n *Node) enrolledDemoResident(ctx context.Context, it resident.BatchItem, withCard bool) (resident.BatchResult, error) {
	res, err := n.Residents.FindByIDNumber(ctx, it.IDNumber)
	if err != nil {
		return resident.BatchResult{}, err
	}
	out := resident.BatchResult{Resident: res}
	if !withCard {
		return out, nil
	}
	cards, err := n.Residents.CardsOf(ctx, res.ID)
	if err != nil {
		return resident.BatchResult{}, err
	}
	for i := range cards {
		if cards[i].Live() {
			out.Card = &cards[i]
			return out, nil
		}
	}
	c, err := n.Residents.IssueCardBy(ctx, res.ID, it.PIN, "enrolment")
	if err != nil {
		return resident.BatchResult{}, err
	}
	out.Card = &c
	return out, nil
}

// fundDemoSteps funds the demo residents (fundDemo: by idempotency key, so
// residents an interrupted start funded are not funded twice), a step at
// a time.
func (n *Node) fundDemoSteps(ctx context.Context, ids []string) error {
	chunk := n.demoChunk()
	for from := 0; from < len(ids); from += chunk {
		to := min(from+chunk, len(ids))
		if err := n.fundDemo(ctx, ids[from:to]); err != nil {
			return err
		}
		if err := n.demoStep("funded/%d", to); err != nil {
			return err
		}
	}
	return nil
}
