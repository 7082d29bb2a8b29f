package scan

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/catalog"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/terminal"
)

// leg is one ledger transfer of a scan's plan.
type leg struct {
	Key    string `json:"k"`
	Debit  string `json:"d"`
	Credit string `json:"c"`
	Amount int64  `json:"a"`
	Kind   string `json:"t"`
}

// request is the ledger transfer of leg i of rec. Its key (unless the leg
// names one) is transferKey(…, strconv.Itoa(i)): time-ordered for a new
// scan, the key an older version gave it for a row that version left
// pending (legacy), whose leg it may have applied under that key already.
func (l leg) request(rec *record, i int, legacy bool) ledger.TransferRequest {
	key := l.Key
	if key == "" {
		key = transferKey(rec.terminal, rec.key, rec.at, strconv.Itoa(i), legacy)
	}
	return ledger.TransferRequest{Key: key, Debit: l.Debit, Credit: l.Credit, Amount: l.Amount, Kind: l.Kind,
		Meta: map[string]string{"scenario": rec.scenario, "terminal": rec.terminal}}
}

// transferKey is the ledger idempotency key of one transfer (suffix: the
// leg's number, "debt0", "debt1", "collect<n>") of the scan (terminal, key)
// made at at (Unix ms): "scan:<at, 11 hex digits>:<terminal>:<key>:<suffix>".
//
// The scan's time comes first so that the key lands at the end of the
// journal's unique index of keys, on the page the rest of the batch
// writes too. Keyed by terminal first (as before, and as legacy still
// gives), every charge of a city with thousands of terminals wrote a page
// of that index of its own: measured, 5,692 charges/s over 2,000
// terminals against 7,308 over the demo's 11 (docs/benchmarks.md,
// "Session 9"). Every part is stored in the scan's row, so the key can be
// made again from it.
func transferKey(terminal, key string, at int64, suffix string, legacy bool) string {
	if legacy {
		return "scan:" + terminal + ":" + key + ":" + suffix
	}
	t := strconv.FormatInt(at, 16)
	if len(t) < 11 {
		t = strings.Repeat("0", 11-len(t)) + t
	}
	k := "scan:" + t + ":" + terminal + ":" + key + ":" + suffix
	if len(k) <= ledger.MaxKeyLen {
		return k
	}
	h := sha256.Sum256([]byte(terminal + "\x00" + key))
	return "scan:" + t + ":h" + hex.EncodeToString(h[:20]) + ":" + suffix
}

// eval is the outcome of evaluating a scan before any write.
type eval struct {
	id   Identity
	card resident.Card
	res  resident.Resident
	age  int
	dec  catalog.Decision
	plan []leg
	// medical split
	medical, wallet int64
	err             error
	// remote: a verified code of another city that a Remote handles; the
	// caller runs evaluateRemote after checking the idempotency key.
	remote bool
}

func (s *Service) resident(ctx context.Context, id string) (resident.Resident, error) {
	now := time.Now()
	s.mu.Lock()
	c, ok := s.cache[id]
	s.mu.Unlock()
	if ok && now.Before(c.until) {
		return c.r, nil
	}
	r, err := s.Residents.Get(ctx, id)
	if err != nil {
		return resident.Resident{}, err
	}
	s.mu.Lock()
	if len(s.cache) > 200_000 {
		s.cache = map[string]cachedResident{}
	}
	s.cache[id] = cachedResident{r: r, until: now.Add(ResidentCacheTTL)}
	s.mu.Unlock()
	return r, nil
}

// ResidentCacheTTL bounds how long a scan trusts a resident read earlier
// (category, birth date, holder flags). A change made through this
// process drops its copy at once (forgetResident); another process
// sharing the database decides with the change within this bound, the
// same as for a disabled terminal or a revoked token. A resident is
// rarely scanned twice within it, so the bound costs few reads.
const ResidentCacheTTL = 2 * time.Second

// forgetResident drops a resident from the cache (resident.OnChange: its
// holder flags changed), so this process's next scan reads it afresh.
// Another process sharing the database reads it again within
// ResidentCacheTTL.
func (s *Service) forgetResident(id string) {
	s.mu.Lock()
	delete(s.cache, id)
	s.mu.Unlock()
}

// holderFlags are the flags a local resident's scan is decided with: the
// resident's stored holder flags (student, disabled, …) and, of the
// code's claims, only those that are not holder flags (the age flags
// senior_60/senior_65). A holder flag removed after a code was issued
// therefore stops working at once online, and one added works at once,
// by card as by code.
func holderFlags(code []string, r resident.Resident) []string {
	if !slices.ContainsFunc(code, resident.IsFlag) {
		return unionFlags(code, r.Flags) // the common case: no copy
	}
	out := make([]string, 0, len(code)+len(r.Flags))
	for _, f := range code {
		if !resident.IsFlag(f) {
			out = append(out, f)
		}
	}
	return unionFlags(out, r.Flags)
}

// unionFlags is a ∪ b, sorted, without repeats (a or b itself when the
// other is empty: both come sorted, from a code or a resident's record).
func unionFlags(a, b []string) []string {
	switch {
	case len(b) == 0:
		return a
	case len(a) == 0:
		return b
	}
	out := append(slices.Clone(a), b...)
	slices.Sort(out)
	return slices.Compact(out)
}

// identify resolves a code or card number to a card and its resident.
func (s *Service) identify(ctx context.Context, code, cardNumber string, at time.Time) (Identity, resident.Card, resident.Resident, error) {
	var id Identity
	if cardNumber != "" {
		n := resident.NormalizeCardNumber(cardNumber)
		if !resident.ValidCardNumber(n) {
			return id, resident.Card{}, resident.Resident{}, apperr.Newf(apperr.Malformed, "not a valid card number", "卡号无效")
		}
		id = Identity{Scheme: SchemeCard, CardNumber: n, Issuer: s.City}
	} else {
		var err error
		if id, err = s.Registry.Verify(ctx, code, at); err != nil {
			return id, resident.Card{}, resident.Resident{}, err
		}
	}
	var card resident.Card
	var err error
	switch {
	case id.Token != "":
		if id.Issuer != s.City {
			return id, card, resident.Resident{}, apperr.Newf(apperr.UnknownIssuer, "codes of "+id.Issuer+" are settled by their home city", "外地码由其发码城市结算")
		}
		card, err = s.cardByToken(ctx, id.Token)
	default:
		card, err = s.card(ctx, id.CardNumber)
	}
	if apperr.CodeOf(err) == apperr.NotFound {
		return id, card, resident.Resident{}, apperr.New(apperr.UnknownHolder)
	}
	if err != nil {
		return id, card, resident.Resident{}, err
	}
	if id.Scheme == SchemeYK1 && card.Status != resident.StatusActive {
		return id, card, resident.Resident{}, apperr.New(apperr.Revoked)
	}
	r, err := s.resident(ctx, card.ResidentID)
	if err != nil {
		return id, card, resident.Resident{}, err
	}
	return id, card, r, nil
}

// evaluate verifies the code, resolves the holder, applies the scenario's
// rules and plans the ledger transfers. It writes nothing (except PIN
// attempts, which count toward the lock-out).
func (s *Service) evaluate(ctx context.Context, sc catalog.Scenario, t terminal.Terminal, code, cardNumber string, amount int64, pin string, at time.Time) (e eval) {
	e.id, e.card, e.res, e.err = s.identify(ctx, code, cardNumber, at)
	if s.foreign(e) {
		// The caller first checks the idempotency key, then asks the home
		// city (evaluateRemote): a reused key must never reach it.
		e.remote = true
		return e
	}
	if e.err != nil {
		return e
	}
	e.age = e.res.Age(at)
	flags := holderFlags(e.id.Flags, e.res)
	e.dec = catalog.Decide(sc, catalog.Holder{Category: e.res.Category, Age: e.age, Flags: flags, CardStatus: e.card.Status, Local: true}, amount)
	if !e.dec.Eligible {
		e.err = e.dec.Err()
		return e
	}
	if e.dec.PINRequired {
		if pin == "" {
			e.err = apperr.New(apperr.PINRequired)
			return e
		}
		if _, err := s.Residents.VerifyPIN(ctx, e.card.Number, pin); err != nil {
			e.err = err
			return e
		}
	}
	e.plan, e.medical, e.wallet, e.err = s.plan(ctx, sc, t, e.res.ID, e.dec.Amount)
	return e
}

func (s *Service) plan(ctx context.Context, sc catalog.Scenario, t terminal.Terminal, residentID string, amount int64) ([]leg, int64, int64, error) {
	if amount <= 0 || !sc.Moves() {
		return nil, 0, 0, nil
	}
	wallet, prv := ledger.WalletID(residentID), ledger.ReceivableID(t.ProviderID)
	switch sc.Kind {
	case catalog.KindCharge:
		return []leg{{Debit: wallet, Credit: prv, Amount: amount, Kind: "scan_charge"}}, 0, amount, nil
	case catalog.KindPayout:
		return []leg{{Debit: prv, Credit: wallet, Amount: amount, Kind: "scan_payout"}}, 0, 0, nil
	case catalog.KindMedical:
		mb, err := s.Ledger.Balance(ctx, ledger.MedicalID(residentID))
		if err != nil {
			return nil, 0, 0, err
		}
		m, w := catalog.SplitMedical(amount, mb.Available)
		var legs []leg
		if m > 0 {
			legs = append(legs, leg{Debit: ledger.MedicalID(residentID), Credit: prv, Amount: m, Kind: "scan_medical"})
		}
		if w > 0 {
			legs = append(legs, leg{Debit: wallet, Credit: prv, Amount: w, Kind: "scan_medical"})
		}
		return legs, m, w, nil
	}
	return nil, 0, 0, nil
}

// facts is everything a provider might be shown about this scan; View
// later keeps only the scenario's fields. No full ID number is ever here.
func (s *Service) facts(sc catalog.Scenario, e eval) map[string]any {
	all := map[string]any{
		"masked_name":      e.res.MaskedName(),
		"name":             e.res.Name,
		"masked_id_number": e.res.IDMasked,
		"category":         e.res.Category,
		"age_band":         catalog.AgeBand(e.age),
		"card_status":      e.card.Status,
		"home_city":        s.City,
	}
	if e.id.Issuer != "" && e.id.Issuer != s.City && (e.id.Scheme == SchemeYK1 || e.id.Scheme == SchemeCard) {
		// Another city's resident: nothing personal is known here. Nor is
		// the age: e.age is what remoteAge assumes for pricing (an adult
		// of 30 without claims), not the holder's, so no age band is shown.
		all["home_city"] = e.id.Issuer
		delete(all, "name")
		delete(all, "masked_name")
		delete(all, "masked_id_number")
		delete(all, "age_band")
	}
	if e.dec.Concession != "" {
		all["concession"] = e.dec.Concession
	}
	switch sc.Kind {
	case catalog.KindCharge:
		all["charged_fen"] = e.dec.Amount
	case catalog.KindMedical:
		all["charged_fen"] = e.dec.Amount
		all["medical_paid_fen"] = e.medical
		all["wallet_paid_fen"] = e.wallet
	case catalog.KindPayout:
		all["payout_fen"] = e.dec.Amount
	}
	return all
}

// finish builds the answer from the facts.
func finish(sc catalog.Scenario, all map[string]any, decision string, reason apperr.Code, _ eval) Response {
	if all == nil {
		all = map[string]any{}
	}
	all["decision"] = decision
	if reason != "" {
		all["reason"] = string(reason)
	}
	resp := Response{Decision: decision, Reason: reason, View: catalog.View(sc, all)}
	if decision == Accepted && sc.Moves() {
		var c int64
		switch v := all["charged_fen"].(type) {
		case int64:
			c = v
		case float64:
			c = int64(v)
		}
		if sc.Kind == catalog.KindPayout {
			c = 0
		}
		resp.ChargedFen = &c
	}
	return resp
}

func (s *Service) aad(rec *record) string { return "scan:" + rec.terminal + ":" + rec.key }

func (s *Service) seal(rec *record, v any) []byte {
	b, _ := json.Marshal(v)
	return s.Vault.Seal(b, s.aad(rec))
}

func (s *Service) unseal(rec *record, v any) error {
	b, err := s.Vault.Unseal(rec.answer, s.aad(rec))
	if err != nil {
		return apperr.Wrap(apperr.Internal, err)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		return apperr.Wrap(apperr.Internal, err)
	}
	return nil
}

// again answers a request whose key is already in the scans table.
func (s *Service) again(ctx context.Context, rec *record, hash, legacy []byte) (Response, error) {
	if !bytes.Equal(rec.hash, hash) && (legacy == nil || !bytes.Equal(rec.hash, legacy)) {
		return Response{}, apperr.New(apperr.IdempotencyConflict)
	}
	if rec.state == stateFinal {
		// Answered from a row the ledger may not have synced yet
		// (SQLite's deferred fsync): make it durable first.
		if err := s.Ledger.Durable(ctx); err != nil {
			return Response{}, err
		}
		var resp Response
		if err := s.unseal(rec, &resp); err != nil {
			return Response{}, err
		}
		normalise(resp.View)
		return resp, nil
	}
	// Pending: the earlier attempt claimed the code but its money may not
	// have moved; re-drive the same plan (the ledger applies it at most once).
	sc, err := s.Catalog.Scenario(ctx, rec.scenario)
	if err != nil {
		return Response{}, err
	}
	var all map[string]any
	if err := s.unseal(rec, &all); err != nil {
		return Response{}, err
	}
	normalise(all)
	var plan []leg
	if err := json.Unmarshal([]byte(rec.plan), &plan); err != nil {
		return Response{}, apperr.Wrap(apperr.Internal, err)
	}
	return s.settle(ctx, rec, sc, plan, all)
}

// normalise turns json.Number values back into int64 (or float64).
func normalise(m map[string]any) {
	for k, v := range m {
		if n, ok := v.(json.Number); ok {
			if i, err := n.Int64(); err == nil {
				m[k] = i
			} else if f, err := n.Float64(); err == nil {
				m[k] = f
			}
		}
	}
}

// decline records and returns a declined answer.
func (s *Service) decline(ctx context.Context, rec *record, sc catalog.Scenario, e eval, reason apperr.Code) (Response, error) {
	rec.state, rec.decision, rec.reason, rec.cti, rec.legacyCTI, rec.charged, rec.plan = stateFinal, Declined, string(reason), "", "", 0, ""
	rec.residentID, rec.card = e.res.ID, e.card
	resp := finish(sc, nil, Declined, reason, e)
	rec.answer = s.seal(rec, resp)
	return s.claim(ctx, rec, sc, resp)
}

// claim writes a final record and returns resp, or the stored answer if
// the key was taken meanwhile, or a replayed decline if the code was.
func (s *Service) claim(ctx context.Context, rec *record, sc catalog.Scenario, resp Response) (Response, error) {
	out, ex, err := s.insert(ctx, rec)
	if err != nil {
		return Response{}, err
	}
	switch out {
	case dupKey:
		return s.again(ctx, ex, rec.hash, rec.legacyHash)
	case dupCTI:
		return s.decline(ctx, rec, sc, eval{}, apperr.Replayed)
	}
	return resp, nil
}

// claimPending writes a pending record; done means the answer is final
// (replayed code, or the key was used meanwhile).
func (s *Service) claimPending(ctx context.Context, rec *record, sc catalog.Scenario) (Response, bool, error) {
	out, ex, err := s.w.insert(ctx, rec)
	if err != nil {
		return Response{}, true, err
	}
	switch out {
	case dupKey:
		r, err := s.again(ctx, ex, rec.hash, rec.legacyHash)
		return r, true, err
	case dupCTI:
		r, err := s.decline(ctx, rec, sc, eval{}, apperr.Replayed)
		return r, true, err
	}
	return Response{}, false, nil
}

// settle applies a pending scan's plan and finalises it.
func (s *Service) settle(ctx context.Context, rec *record, sc catalog.Scenario, plan []leg, all map[string]any) (Response, error) {
	return s.settleOpt(ctx, rec, sc, plan, all, nil)
}

// settleOpt is settle; when keepPending(reason) is true for a refusal, the
// record is left pending for the caller to finish (offline debt).
func (s *Service) settleOpt(ctx context.Context, rec *record, sc catalog.Scenario, plan []leg, all map[string]any, keepPending func(apperr.Code) bool) (Response, error) {
	reqs := make([]ledger.TransferRequest, len(plan))
	for i, l := range plan {
		reqs[i] = l.request(rec, i, true)
	}
	var trs []ledger.Transfer
	var err error
	if len(reqs) == 1 {
		// A single transfer goes through Transfer (same request hash as
		// Ledger.Batch, which offline batches use), so a re-drive matches.
		var tr ledger.Transfer
		if tr, err = s.Ledger.Transfer(ctx, reqs[0]); err == nil {
			trs = []ledger.Transfer{tr}
		}
	} else {
		trs, err = s.Ledger.Linked(ctx, reqs)
	}
	fin := *rec
	fin.state = stateFinal
	if err != nil {
		code := apperr.CodeOf(err)
		switch code {
		case apperr.Unavailable, apperr.Internal, apperr.IdempotencyConflict:
			// Leave the scan pending: a retry with the same key re-drives it.
			return Response{}, apperr.As(err)
		}
		fin.decision, fin.reason, fin.charged = Declined, string(code), 0
		resp := finish(sc, nil, Declined, code, eval{})
		if keepPending != nil && keepPending(code) {
			return resp, nil
		}
		fin.answer = s.seal(&fin, resp)
		if keepPending != nil {
			// Offline: the report says declined, so the row must say so
			// before the batch is answered (a re-send must not re-drive it).
			if err := s.w.finalizeSync(ctx, &fin); err != nil {
				return Response{}, err
			}
			return resp, nil
		}
		s.w.finalize(&fin)
		return resp, nil
	}
	for i, l := range plan {
		switch l.Debit {
		case ledger.MedicalID(rec.residentID):
			all["medical_balance_fen"] = trs[i].DebitAfter
		case ledger.WalletID(rec.residentID):
			all["balance_fen"] = trs[i].DebitAfter
		}
		if l.Credit == ledger.WalletID(rec.residentID) {
			all["balance_fen"] = trs[i].CreditAfter
		}
	}
	resp := finish(sc, all, Accepted, "", eval{})
	fin.decision = Accepted
	fin.answer = s.seal(&fin, resp)
	s.w.finalize(&fin)
	return resp, nil
}
