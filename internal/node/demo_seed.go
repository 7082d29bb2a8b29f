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
// demo.json only if the base URL changed. On a non-empty node without a
// demo.json it creates nothing (it never mixes demo data into a real city).
func (n *Node) EnsureDemo(ctx context.Context, baseURL, path string) error {
	n.DemoMode.Store(true)
	if d, err := ReadDemoFile(path); err == nil {
		if d.City != n.City {
			return fmt.Errorf("%s belongs to city %s, this node is %s", path, d.City, n.City)
		}
		if d.BaseURL != baseURL {
			d.BaseURL = baseURL
			return writeDemoFile(path, d)
		}
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	var count int
	if err := n.DB.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM residents`).Scan(&count); err != nil {
		return err
	}
	if count > 0 {
		n.Log.Warn("--demo ignored: the node already holds residents and has no demo.json", "path", path)
		return nil
	}
	d, err := n.seedDemo(ctx, baseURL)
	if err != nil {
		return err
	}
	return writeDemoFile(path, d)
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
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
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

func (n *Node) seedDemo(ctx context.Context, baseURL string) (*DemoFile, error) {
	start := time.Now()
	now := n.Now()
	rng := mrand.New(mrand.NewPCG(uint64(now.UnixNano()), 410100))
	d := &DemoFile{BaseURL: baseURL, City: n.City, Staff: map[string]DemoStaff{}, Residents: []DemoResident{}, Terminals: []DemoTerminal{}}

	// Staff of the bureau, the finance department and the operator.
	for _, s := range []struct {
		user, name string
		role       auth.Role
	}{{"hr", "人社局 王科长", auth.RoleHRAdmin}, {"finance", "财政局 李会计", auth.RoleFinance}, {"operator", "运营中心 张工", auth.RoleOperator}} {
		pw := randomSecret(14)
		if _, err := n.Auth.CreateStaff(ctx, s.user, s.name, s.role, pw, ""); err != nil {
			return nil, fmt.Errorf("demo staff %s: %w", s.user, err)
		}
		tok, _, err := n.Auth.LoginStaff(ctx, s.user, pw, demoStaffTTL)
		if err != nil {
			return nil, err
		}
		d.Staff[string(s.role)] = DemoStaff{User: s.user, Password: pw, Token: tok}
	}

	// Residents who can sign in: every category, and the ages that matter
	// for concessions (child, adult, 60-64 half fare, 65+ free bus); the
	// schoolchild is a student (the campus gate, student fares).
	listed := []demoPerson{
		{chineseName(rng), resident.CategoryLocal, idnum.KindCitizen, zzRegions[3], "", "F", 34},
		{chineseName(rng), resident.CategoryInsuredNonlocal, idnum.KindCitizen, otherCity[0], "", "M", 29},
		{foreigners[0].name, resident.CategoryPermanentResident, idnum.KindPermanentResident, "41", foreigners[0].nat, foreigners[0].sex, 41},
		{chineseName(rng), resident.CategoryLocal, idnum.KindCitizen, zzRegions[1], "", "M", 67},
		{chineseName(rng), resident.CategoryLocal, idnum.KindCitizen, zzRegions[2], "", "F", 62},
		{chineseName(rng), resident.CategoryLocal, idnum.KindCitizen, zzRegions[0], "", "M", 19},
		{chineseName(rng), resident.CategoryLocal, idnum.KindCitizen, zzRegions[4], "", "F", 9},
		{foreigners[1].name, resident.CategoryPermanentResident, idnum.KindPermanentResident2017, "4101", foreigners[1].nat, foreigners[1].sex, 55},
	}
	total := n.DemoResidents
	if total <= 0 {
		total = DefaultDemoResidents
	}
	if total < len(listed) {
		total = len(listed)
	}
	items := make([]resident.BatchItem, 0, total)
	pins := make([]string, len(listed))
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
	for i, p := range listed {
		pins[i] = randomPIN()
		if !add(p, pins[i]) {
			return nil, fmt.Errorf("demo: cannot generate an ID for %s", p.category)
		}
		if p.age >= 6 && p.age < 18 {
			items[len(items)-1].Flags = []string{resident.FlagStudent}
		}
	}
	for len(items) < total {
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
	results, err := n.Residents.EnrolBatch(ctx, items)
	if err != nil {
		return nil, fmt.Errorf("demo enrolment: %w", err)
	}
	ids := make([]string, 0, len(results))
	for i, r := range results {
		if r.Err != nil {
			return nil, fmt.Errorf("demo resident %d: %w", i, r.Err)
		}
		ids = append(ids, r.Resident.ID)
		if i < len(listed) {
			d.Residents = append(d.Residents, DemoResident{
				Name: r.Resident.Name, IDNumber: items[i].IDNumber, CardNumber: r.Card.Number,
				PIN: pins[i], Category: r.Resident.Category, ResidentID: r.Resident.ID, Flags: r.Resident.Flags,
			})
		}
	}
	if err := n.fundDemo(ctx, ids); err != nil {
		return nil, err
	}
	if err := n.demoTerminals(ctx, d); err != nil {
		return nil, err
	}
	n.Auth.Audit(ctx, auth.Principal{Subject: "demo", Role: auth.RoleOperator}, "create_demo_city", n.City, fmt.Sprintf("residents=%d", len(ids)))
	n.Log.Info("demo city created", "city", n.City, "residents", len(ids), "ms", time.Since(start).Milliseconds())
	return d, nil
}
