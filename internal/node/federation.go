package node

import (
	"context"
	"io"
	"net/http"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/httpapi"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/trust"
)

type positionsResponse struct {
	Positions []federation.Position `json:"positions"`
}

type settleRequest struct {
	Day string `json:"day,omitempty" doc:"YYYY-MM-DD (UTC); omitted: yesterday"`
}

type settleResponse struct {
	Statements []federation.SignedStatement `json:"statements"`
}

// wireFederation joins the node to its region (if configured): peers'
// keys for the YK1 verifier and the trust bundle, the scan path's Remote
// for other cities' codes, the peer and clearing routes, and the
// federation's background loops.
func (n *Node) wireFederation(ctx context.Context) error {
	fed, err := federation.New(ctx, federation.Deps{DB: n.DB, Ledger: n.Ledger, Residents: n.Residents, Node: n.Keys.NodeSigner,
		City: n.City, Now: n.Now, Log: n.Log, OnChange: n.invalidateTrust, HolderFlags: AgeFlags}, n.Config.Federation)
	if err != nil {
		return err
	}
	n.Fed = fed
	if fed.Config().Enabled() && n.scan != nil {
		n.scan.Schemes.Register(scan.SchemeYK1, scan.NewYK1(func(ctx context.Context) (map[string][]ecode.PublicKey, error) {
			ks, err := n.Keys.PublicKeys(ctx)
			if err != nil {
				return nil, err
			}
			m := fed.PeerKeys()
			m[n.City] = ks
			return m, nil
		}))
		n.scan.Scans.Remote = fed
	}
	n.federationRoutes()
	fctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); fed.Run(fctx) }()
	n.closers = append(n.closers, func() error { cancel(); <-done; fed.Close(); return nil })
	return nil
}

// trustPeers is the peers' part of this node's trust bundle.
func (n *Node) trustPeers() []trust.PeerBundle {
	if n.Fed == nil {
		return nil
	}
	return n.Fed.PeerBundles()
}

func (n *Node) federationRoutes() {
	peer := func(kind string, h func(context.Context, []byte) ([]byte, error)) {
		n.API.Handle(httpapi.Route{
			Pattern: "POST /v1/federation/" + kind, Tag: "federation", MaxBody: 16 << 20,
			Summary: "Peer node message (" + kind + "): a signed envelope from a region member, answered with a signed envelope",
			Request: federation.Envelope{}, Response: federation.Envelope{},
			Handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
				body, err := io.ReadAll(r.Body)
				if err != nil {
					return apperr.New(apperr.BodyTooLarge)
				}
				out, err := h(r.Context(), body)
				if err != nil {
					return err
				}
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("Cache-Control", "no-store")
				_, err = w.Write(out)
				return err
			},
		})
	}
	peer(federation.KindCharge, n.Fed.HandleCharge)
	peer(federation.KindMessages, n.Fed.HandleMessages)
	peer(federation.KindList, n.Fed.HandleList)
	peer(federation.KindStatement, n.Fed.HandleStatement)
	peer(federation.KindBundle, n.Fed.HandleBundle)

	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/federation/status", Summary: "The region member list and each peer's trust state as this node sees it", Tag: "federation",
		Response: federation.Status{},
		Handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
			return httpapi.WriteJSON(w, http.StatusOK, n.Fed.Status())
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/federation/refresh", Summary: "Re-read the member list and fetch the peers' bundles now", Tag: "federation",
		Roles: []auth.Role{auth.RoleOperator}, Response: federation.Status{},
		Handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
			if !n.Fed.Config().Enabled() {
				return apperr.Newf(apperr.Conflict, "this node is not configured for a region (--region-anchor, --region-members)", "本节点未配置区域")
			}
			if err := n.Fed.Refresh(r.Context()); err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, n.Fed.Status())
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/clearing/positions", Summary: "What each peer city owes this city and the reverse, as booked here", Tag: "clearing",
		Roles: []auth.Role{auth.RoleFinance}, Response: positionsResponse{},
		Handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
			ps, err := n.Fed.Positions(r.Context())
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, positionsResponse{Positions: ps})
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/clearing/reconcile", Summary: "Compare this city's clearing messages with a peer's (?peer=CN-…&from=&to= RFC 3339)", Tag: "clearing",
		Roles: []auth.Role{auth.RoleFinance}, Response: federation.Reconciliation{},
		Handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
			q := r.URL.Query()
			var from, to time.Time
			for name, dst := range map[string]*time.Time{"from": &from, "to": &to} {
				if v := q.Get(name); v != "" {
					t, err := time.Parse(time.RFC3339, v)
					if err != nil {
						return apperr.Invalid(name, name+" must be an RFC 3339 time", name+" 须为 RFC 3339 时间")
					}
					*dst = t
				}
			}
			if q.Get("peer") == "" {
				return apperr.Invalid("peer", "peer is required", "缺少 peer")
			}
			rec, err := n.Fed.Reconcile(r.Context(), q.Get("peer"), from, to)
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, rec)
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/clearing/settle", Summary: "Run the daily settlement: a statement per peer, signed by both cities", Tag: "clearing",
		Roles: []auth.Role{auth.RoleFinance}, Request: settleRequest{}, RequestOptional: true, Response: settleResponse{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req settleRequest
			if err := httpapi.DecodeOptionalJSON(r, &req); err != nil {
				return err
			}
			if n.Fed == nil || !n.Fed.Config().Enabled() {
				return apperr.Newf(apperr.Conflict, "this node is not in a region: there is no cross-city clearing", "本节点未加入区域，没有跨城清算")
			}
			now := n.Now().UTC()
			if req.Day == "" {
				req.Day = now.Add(-24 * time.Hour).Format("2006-01-02")
			}
			if _, err := time.Parse("2006-01-02", req.Day); err == nil && req.Day > now.Format("2006-01-02") {
				return apperr.Invalid("day", "the day "+req.Day+" has not begun (UTC)", "日期 "+req.Day+" 尚未到来（UTC）")
			}
			sts, err := n.Fed.Settle(r.Context(), req.Day)
			if err != nil {
				return err
			}
			n.Auth.Audit(r.Context(), p, "clearing_settle", req.Day, "")
			return httpapi.WriteJSON(w, http.StatusOK, settleResponse{Statements: sts})
		},
	})
}
