package web_test

import (
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// TestConsoleLoginLockout: the console sign-in shares the staff lock-out
// with the API: wrong passwords from either count, the locked name is
// refused in plain words even with the right password, and it signs in
// again after the period.
func TestConsoleLoginLockout(t *testing.T) {
	t.Parallel()
	for _, be := range storetest.Backends() {
		t.Run(be.Name, func(t *testing.T) {
			var mu sync.Mutex
			at := time.Now()
			now := func() time.Time { mu.Lock(); defer mu.Unlock(); return at }
			advance := func(d time.Duration) { mu.Lock(); at = at.Add(d); mu.Unlock() }
			o := nodetest.Options{Demo: true, DemoResidents: 5, Now: now}
			if be.Name != "sqlite" {
				o.DB = be.DSN(t)
			}
			tn := nodetest.Start(t, o)
			hr := tn.Demo.Staff["hr_admin"]
			b := newBrowser(t, tn.URL)
			post := func(pw string) (int, string) {
				tok := b.csrf("/console/login")
				st, body, _ := b.do("POST", "/console/login", url.Values{"csrf": {tok}, "user": {hr.User}, "password": {pw}})
				return st, errorText(body)
			}
			for i := 0; i < 3; i++ {
				if st, msg := post("wrong-password"); st != http.StatusUnauthorized || !strings.Contains(msg, "用户名或密码错误") {
					t.Fatalf("wrong password %d: %d %s", i+1, st, msg)
				}
			}
			// The API's wrong passwords count toward the same limit.
			if r := tn.Client("").Do(t, "POST", "/v1/auth/staff", map[string]string{"user": hr.User, "password": "wrong-password"}); r.Status != 401 {
				t.Fatalf("API wrong password: %d %s", r.Status, r.Body)
			}
			if st, msg := post("wrong-password"); st != http.StatusTooManyRequests || !strings.Contains(msg, "已锁定") {
				t.Fatalf("fifth wrong password: %d %s", st, msg)
			}
			if st, msg := post(hr.Password); st != http.StatusTooManyRequests || !strings.Contains(msg, "15分钟后再试") {
				t.Fatalf("right password while locked: %d %s", st, msg)
			}
			advance(15 * time.Minute)
			b.staffLogin(hr.User, hr.Password)
		})
	}
}
