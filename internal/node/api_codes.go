package node

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/httpapi"
	"github.com/yikatong/yikatong/internal/keys"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/trust"
)

// trustCache keeps the signed bundle for a few seconds; any card change
// clears it so a lost card reaches the deny list at once.
type trustCache struct {
	mu    sync.Mutex
	json  []byte
	built time.Time
	// own is a digest of what peers take from this node's bundle (its
	// issuer keys and deny list) at the last build; a build that finds it
	// changed tells the region's members (federation.Announce).
	own    [32]byte
	hasOwn bool
}

// trustCacheFor bounds how stale a served bundle may be.
const trustCacheFor = 5 * time.Second

// denySubjectWindow: e-code subjects revoked longer ago than this cannot
// have live codes (the node stops issuing codes at revocation and codes live
// 60 s), so they leave the bundle; revoked physical cards stay listed.
const denySubjectWindow = 24 * time.Hour

type ecodeResponse struct {
	Code      string    `json:"code"`
	ExpiresAt time.Time `json:"expires_at"`
}

type rotateResponse struct {
	Kid string `json:"kid"`
	// ActiveFrom is when the new key starts signing (now for a rotation at
	// once); it is in trust bundles from the answer on.
	ActiveFrom time.Time `json:"active_from"`
}

// rotateRequest is the optional body of POST /v1/keys/rotate. Without
// AnnounceSeconds (or 0) the key switches at once, as for a compromised
// key; a planned rotation announces the key ahead (docs/trust-bundle.md),
// as `yikatong keys rotate` does by default.
type rotateRequest struct {
	AnnounceSeconds int64 `json:"announce_seconds,omitempty" doc:"seconds the new key is published before it signs, 0 (at once, for a compromised key) to 604800; omitted: 0"`
}

// maxAnnounce bounds a rotation's announce period (a week).
const maxAnnounce = 7 * 24 * time.Hour

func (n *Node) codeRoutes() {
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/trust", Summary: "The signed trust bundle: issuer keys, deny list, peers, expiry", Tag: "trust",
		Response: trust.Bundle{},
		Handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
			b, err := n.TrustBundle(r.Context())
			if err != nil {
				return err
			}
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "public, max-age=5")
			_, err = w.Write(b)
			return err
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "GET /v1/trust/node-key", Summary: "The node's public key (JWK) that signs its trust bundles, for pinning at terminal provisioning", Tag: "trust",
		Response: ecode.JWK{},
		Handle: func(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
			return httpapi.WriteJSON(w, http.StatusOK, n.Keys.NodePublicKey().JWK())
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/ecodes", Summary: "Create a one-minute e-code for the signed-in resident's card", Tag: "ecodes",
		Roles: []auth.Role{auth.RoleResident}, Response: ecodeResponse{}, Status: http.StatusOK,
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			code, exp, err := n.IssueCode(r.Context(), p.Subject)
			if err != nil {
				return err
			}
			return httpapi.WriteJSON(w, http.StatusOK, ecodeResponse{Code: code, ExpiresAt: exp})
		},
	})
	n.API.Handle(httpapi.Route{
		Pattern: "POST /v1/keys/rotate", Summary: "Rotate the e-code signing key (old codes keep verifying until they expire)", Tag: "trust",
		Roles: []auth.Role{auth.RoleOperator}, Request: rotateRequest{}, RequestOptional: true, Response: rotateResponse{},
		Handle: func(w http.ResponseWriter, r *http.Request, p auth.Principal) error {
			var req rotateRequest // no body: at once
			if err := httpapi.DecodeOptionalJSON(r, &req); err != nil {
				return err
			}
			announce := time.Duration(req.AnnounceSeconds) * time.Second
			if req.AnnounceSeconds < 0 || announce > maxAnnounce {
				return apperr.Invalid("announce_seconds", "announce_seconds is 0 (at once) to 604800 (a week)", "announce_seconds 须为 0（立即）至 604800（一周）")
			}
			kid, from, err := n.Keys.RotateAnnounced(r.Context(), announce)
			if errors.Is(err, keys.ErrRotationPending) {
				return n.rotationPending(r.Context())
			}
			if err != nil {
				return err
			}
			n.Auth.Audit(r.Context(), p, "rotate_keys", kid, "active_from="+from.UTC().Format(time.RFC3339))
			n.trustChanged()
			return httpapi.WriteJSON(w, http.StatusOK, rotateResponse{Kid: kid, ActiveFrom: from})
		},
	})
}

// rotationPending is the API's answer to an announced rotation while
// another is pending. keys.ErrRotationPending's own text is the package's
// ("keys: …", with command-line advice); the answer here says it once, in
// the API's words, naming the pending key and its activation time.
func (n *Node) rotationPending(ctx context.Context) error {
	kid, from, ok := n.Keys.Pending()
	if !ok {
		// Announced by another process since this one last looked.
		if err := n.Keys.Refresh(ctx); err == nil {
			kid, from, ok = n.Keys.Pending()
		}
	}
	en, zh := "a key rotation is already pending", "已有一次密钥轮换待生效"
	if ok {
		at := from.UTC().Format(time.RFC3339)
		en += ": key " + kid + " becomes current at " + at
		zh += "：密钥 " + kid + " 将于 " + at + " 启用"
	}
	return apperr.Newf(apperr.Conflict,
		en+"; rotate again after that, or with announce_seconds 0 to replace it and switch at once (for a compromised key)",
		zh+"；请在其启用后再轮换，或以 announce_seconds 0 立即轮换并取代它（用于密钥泄露）")
}

// IssueCode signs a fresh e-code for an active card.
func (n *Node) IssueCode(ctx context.Context, cardNumber string) (string, time.Time, error) {
	c, err := n.Residents.Card(ctx, cardNumber)
	if err != nil {
		return "", time.Time{}, err
	}
	if c.Status != resident.StatusActive {
		return "", time.Time{}, apperr.Newf(apperr.CardNotActive, "the card is "+c.Status+"; no code can be issued", "卡片状态为"+statusZh(c.Status)+"，无法生成电子码")
	}
	if c.Locked {
		return "", time.Time{}, apperr.New(apperr.CardLocked)
	}
	res, err := n.Residents.Get(ctx, c.ResidentID)
	if err != nil {
		return "", time.Time{}, err
	}
	now := n.Now()
	code, claims, err := ecode.IssueClaims(n.Keys.Current(), ecode.Claims{
		Issuer: n.City, Subject: c.Token, IssuedAt: now, Category: res.Category, Flags: HolderFlags(res, now),
	})
	if err != nil {
		return "", time.Time{}, apperr.Wrap(apperr.Internal, err)
	}
	return code, claims.ExpiresAt, nil
}

// HolderFlags are the concession flags a code carries for offline
// terminals: only what a gate needs to decide and price, never the birth
// date: the age flag (AgeFlags) and the resident's holder flags (student,
// teacher, disabled, veteran), sorted. An online scan of a local code
// takes the holder flags from the resident's record instead (a flag
// removed since the code was issued stops working at once); a terminal
// offline trusts the code for its minute.
func HolderFlags(r resident.Resident, at time.Time) []string {
	age := AgeFlags(r, at)
	if len(r.Flags) == 0 {
		return age
	}
	out := append(append([]string{}, age...), r.Flags...)
	slices.Sort(out)
	return slices.Compact(out)
}

// AgeFlags are the age claims: senior_65 and senior_70 from 70,
// senior_65 from 65 to 69, senior_60 from 60 to 64, child_6 to 6, else
// none; always one of scan.AgeClaimSets. They are the claims a physical
// card's cross-city charge is answered with (federation): the other city
// prices a card only for age-based claims, and the home city's answer
// gives away nothing it does not need (a disability, say).
func AgeFlags(r resident.Resident, at time.Time) []string {
	switch age := r.Age(at); {
	case age >= 70:
		return []string{ecode.FlagSenior65, ecode.FlagSenior70}
	case age >= 65:
		return []string{ecode.FlagSenior65}
	case age >= 60:
		return []string{ecode.FlagSenior60}
	case age <= 6:
		return []string{ecode.FlagChild6}
	}
	return nil
}

func (n *Node) invalidateTrust() {
	n.trust.mu.Lock()
	n.trust.json = nil
	n.trust.mu.Unlock()
}

// TrustBundle returns the signed trust bundle JSON (cached briefly).
func (n *Node) TrustBundle(ctx context.Context) ([]byte, error) {
	b, changed, err := n.buildTrust(ctx)
	if changed && n.Fed != nil {
		n.Fed.Announce()
	}
	return b, err
}

// buildTrust returns the bundle, and whether its issuer keys or deny list
// differ from the previous build's (not on the first build: a starting
// node does not notify the whole region; its peers fetch it on their
// schedule, and a key rotated while it was stopped reaches them then).
func (n *Node) buildTrust(ctx context.Context) (b []byte, changed bool, err error) {
	n.trust.mu.Lock()
	defer n.trust.mu.Unlock()
	now := n.Now()
	if n.trust.json != nil && now.Sub(n.trust.built) < trustCacheFor && now.After(n.trust.built) {
		return n.trust.json, false, nil
	}
	keys, err := n.Keys.PublicKeys(ctx)
	if err != nil {
		return nil, false, err
	}
	revs, err := n.Residents.Revocations(ctx, time.Time{})
	if err != nil {
		return nil, false, err
	}
	deny := make([]trust.Revocation, 0, len(revs))
	for _, r := range revs {
		x := trust.Revocation{CardHash: r.CardNumberHash, At: r.At}
		if now.Sub(r.At) < denySubjectWindow {
			x.Subject = r.Token
		}
		deny = append(deny, x)
	}
	ttl := n.Config.TrustTTL
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	scens, err := n.offlineRules(ctx)
	if err != nil {
		return nil, false, err
	}
	bundle, b, err := trust.Build(trust.BuildInput{Issuer: n.City, Keys: keys, Deny: deny, Peers: n.trustPeers(), Scenarios: scens, IssuedAt: now, TTL: ttl}, n.Keys.NodeSigner())
	if err != nil {
		return nil, false, apperr.Wrap(apperr.Internal, err)
	}
	own, _ := json.Marshal(struct {
		K []trust.Key
		D trust.Deny
	}{bundle.Keys, bundle.Deny})
	digest := sha256.Sum256(own)
	changed = n.trust.hasOwn && digest != n.trust.own
	n.trust.json, n.trust.built, n.trust.own, n.trust.hasOwn = b, now, digest, true
	return b, changed, nil
}

// offlineRules are the city's scenarios as its trust bundle states them:
// which a terminal may accept offline, which are online only, which are
// disabled (trust.Bundle.CheckScenario). Signed with the rest, so nobody
// between node and terminal can make a terminal accept what the node
// will reject.
func (n *Node) offlineRules(ctx context.Context) (map[string]string, error) {
	list, err := n.Catalog.Scenarios(ctx, 0)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(list))
	for _, s := range list {
		switch {
		case !s.Enabled:
			out[s.ID] = trust.ScenarioDisabled
		case s.OfflineAllowed:
			out[s.ID] = trust.ScenarioOffline
		default:
			out[s.ID] = trust.ScenarioOnline
		}
	}
	return out, nil
}

// afterCardChange refreshes what depends on card statuses (the deny list).
func (n *Node) afterCardChange(ctx context.Context) { n.trustChanged() }

// trustChanged rebuilds this node's trust bundle now (its keys or card
// statuses changed); if what peers take from it changed, the build tells
// the region's members to fetch it (TrustBundle).
func (n *Node) trustChanged() {
	n.invalidateTrust()
	if n.Fed == nil || !n.Fed.Config().Enabled() {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n.trust.mu.Lock()
		known := n.trust.hasOwn
		n.trust.mu.Unlock()
		_, changed, err := n.buildTrust(ctx)
		if err != nil {
			n.Log.Warn("rebuilding the trust bundle", "err", err)
			return
		}
		if changed || !known {
			// (Not built before this change: nothing to compare with.)
			n.Fed.Announce()
		}
	}()
}
