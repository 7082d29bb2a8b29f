package node_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// TestSubsidyPayoutListWithBOM: a payout list saved by Excel as UTF-8 CSV
// starts with a byte order mark; its first line is paid like the others.
func TestSubsidyPayoutListWithBOM(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 3})
	d := tn.Demo
	fin := tn.Client(d.Staff["finance"].Token)
	fin.JSON(t, "POST", "/v1/subsidies", map[string]string{"id": "bom-2026", "label": "BOM"}, 201, nil)
	fin.JSON(t, "POST", "/v1/subsidies/bom-2026/funding", map[string]any{"idempotency_key": "f-1", "amount_fen": 1000}, 200, nil)
	for _, list := range []string{
		"\ufeff" + d.Residents[0].IDNumber + ",100,ref-bom-1\n" + d.Residents[1].CardNumber + ",200,ref-bom-2\n",
		"\ufeff\"" + d.Residents[2].IDNumber + "\",300,ref-bom-3\n", // a quoted first field
	} {
		req, _ := http.NewRequest("POST", tn.URL+"/v1/subsidies/bom-2026/payouts", strings.NewReader(list))
		req.Header.Set("Content-Type", "text/csv")
		req.Header.Set("Authorization", "Bearer "+d.Staff["hr_admin"].Token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		r := nodetest.Response{Status: resp.StatusCode, Body: body}
		var rep struct {
			Paid    int `json:"paid"`
			Refused int `json:"refused"`
			Lines   []struct {
				Line           int
				Status, Reason string
			}
		}
		r.Decode(t, &rep)
		if r.Status != 200 || rep.Refused != 0 || rep.Paid != strings.Count(list, "\n") || rep.Lines[0].Line != 1 || rep.Lines[0].Status != "paid" {
			t.Fatalf("list %q: %d %s", list, r.Status, body)
		}
	}
}

// TestSubsidyProgrammeIDs: a programme id is a safe path segment; others
// are refused with a validation problem naming the field, in both
// languages.
func TestSubsidyProgrammeIDs(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 1})
	fin := tn.Client(tn.Demo.Staff["finance"].Token)
	for _, id := range []string{"../x", "a/b", "a?b#c", ".", "..", "%2e%2e", "Heating", "-x", "_x", ".x", "a b", "a:b", "补贴", strings.Repeat("a", 65)} {
		r := fin.Do(t, "POST", "/v1/subsidies", map[string]string{"id": id, "label": "x"})
		p := r.Problem()
		if r.Status != 422 || r.Code() != "validation_failed" || p["field"] != "id" || p["detail"] == "" || !strings.Contains(p["detail_zh"].(string), "补贴项目编号") {
			t.Errorf("id %q: %d %s", id, r.Status, r.Body)
		}
	}
	for _, id := range []string{"heating-2026", "farm_2026.q1", "2026", "a", strings.Repeat("a", 64)} {
		fin.JSON(t, "POST", "/v1/subsidies", map[string]string{"id": id, "label": "x"}, 201, nil)
		fin.JSON(t, "POST", "/v1/subsidies/"+id+"/funding", map[string]any{"idempotency_key": "f-" + id, "amount_fen": 100}, 200, nil)
	}
}
