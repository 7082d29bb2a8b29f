package node

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/catalog"
	"github.com/yikatong/yikatong/internal/httpapi"
)

type itemWithScenarios struct {
	catalog.Item
	Scenarios []catalog.Scenario `json:"scenarios"`
}

type enabledRequest struct {
	Enabled *bool `json:"enabled" doc:"true: scans of the scenario are accepted; false: refused"`
}

func (n *Node) catalogRoutes() {
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/catalog", Summary: "The 13 service items and their scenarios", Tag: "catalog",
		Response: []itemWithScenarios{},
		Handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
			items, err := n.Catalog.Items(r.Context())
			if err != nil {
				return err
			}
			all, err := n.Catalog.Scenarios(r.Context(), 0)
			if err != nil {
				return err
			}
			out := make([]itemWithScenarios, 0, len(items))
			for _, it := range items {
				x := itemWithScenarios{Item: it, Scenarios: []catalog.Scenario{}}
				for _, s := range all {
					if s.Item == it.Number {
						x.Scenarios = append(x.Scenarios, s)
					}
				}
				out = append(out, x)
			}
			return httpapi.WriteJSON(w, http.StatusOK, out)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/scenarios/{id}", Summary: "One scenario", Tag: "catalog", Response: catalog.Scenario{},
		Handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
			s, err := n.Catalog.Scenario(r.Context(), r.PathValue("id"))
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, s)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/scenarios", Summary: "Create a scenario (no code change needed)", Tag: "catalog",
		Roles: hrOnly, Request: catalog.Scenario{}, Response: catalog.Scenario{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var s catalog.Scenario
			if err := httpapi.DecodeJSON(r, &s); err != nil {
				return err
			}
			out, err := n.Catalog.CreateScenario(r.Context(), s)
			if err != nil {
				return err
			}
			n.auditJSON(r, p, "create_scenario", out.ID, out)
			return httpapi.WriteJSON(w, http.StatusCreated, out)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "PUT /v1/scenarios/{id}", Summary: "Change a scenario's rules (send version to guard against lost updates)", Tag: "catalog",
		Roles: hrOnly, Request: catalog.Scenario{}, Response: catalog.Scenario{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var s catalog.Scenario
			if err := httpapi.DecodeJSON(r, &s); err != nil {
				return err
			}
			if s.ID == "" {
				s.ID = r.PathValue("id")
			}
			if s.ID != r.PathValue("id") {
				return apperr.Invalid("id", "the body's id differs from the URL's", "请求体中的 id 与 URL 不一致")
			}
			out, err := n.Catalog.UpdateScenario(r.Context(), s)
			if err != nil {
				return err
			}
			n.auditJSON(r, p, "update_scenario", out.ID, out)
			return httpapi.WriteJSON(w, http.StatusOK, out)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "PUT /v1/scenarios/{id}/enabled", Summary: "Enable or disable a scenario", Tag: "catalog",
		Roles: hrOnly, Request: enabledRequest{}, Response: catalog.Scenario{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req enabledRequest
			if err := httpapi.DecodeJSON(r, &req); err != nil {
				return err
			}
			if req.Enabled == nil {
				// Never read a missing value as "off": a scenario switched
				// off stops every gate that uses it.
				return apperr.Invalid("enabled", "field \"enabled\" is required (true or false)", "缺少必填字段 \"enabled\"（true 或 false）")
			}
			out, err := n.Catalog.SetEnabled(r.Context(), r.PathValue("id"), *req.Enabled)
			if err != nil {
				return err
			}
			n.Auth.Audit(r.Context(), p, "set_scenario_enabled", out.ID, strconv.FormatBool(*req.Enabled))
			return httpapi.WriteJSON(w, http.StatusOK, out)
		},
	})
}

func (n *Node) auditJSON(r *http.Request, p auth.Principal, action, subject string, v any) {
	b, _ := json.Marshal(v)
	if len(b) > 4000 {
		b = b[:4000]
	}
	n.Auth.Audit(r.Context(), p, action, subject, string(b))
}
