package federation

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"sort"
	"strconv"
	"time"

	"github.com/emmansun/gmsm/sm3"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/trust"
)

// Position is what a peer owes this city and the reverse, as booked here
// (CONTRACT.md GET /v1/clearing/positions).
type Position struct {
	Peer            string `json:"peer"`
	OwedToUsFen     int64  `json:"owed_to_us_fen"`
	WeOweFen        int64  `json:"we_owe_fen"`
	PendingMessages int64  `json:"pending_messages"`
	// BalanceFen is our clearing account for the peer (credits − debits):
	// negative when the peer owes us. Mirrors the peer's account for us.
	BalanceFen int64 `json:"balance_fen"`
}

// Positions lists every peer with a clearing account or messages.
func (s *Service) Positions(ctx context.Context) ([]Position, error) {
	peers := map[string]bool{}
	for _, c := range s.peerCities() {
		peers[c] = true
	}
	rows, err := s.DB.R.QueryContext(ctx, `SELECT DISTINCT peer FROM fed_messages`)
	if err != nil {
		return nil, unavailable(err)
	}
	for rows.Next() {
		var p string
		if rows.Scan(&p) == nil {
			peers[p] = true
		}
	}
	rows.Close()
	out := []Position{}
	for p := range peers {
		pos := Position{Peer: p}
		bal, err := s.Ledger.Balance(ctx, ledger.ClearingID(p))
		if err != nil && apperr.CodeOf(err) != apperr.UnknownAccount && apperr.CodeOf(err) != apperr.NotFound {
			return nil, err
		}
		pos.BalanceFen = bal.Balance
		if bal.Balance < 0 {
			pos.OwedToUsFen = -bal.Balance
		} else {
			pos.WeOweFen = bal.Balance
		}
		if err := s.DB.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM fed_messages WHERE direction = 'out' AND peer = $1 AND state IN ('sending', 'pending', 'voiding')`, p).
			Scan(&pos.PendingMessages); err != nil {
			return nil, unavailable(err)
		}
		out = append(out, pos)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Peer < out[j].Peer })
	return out, nil
}

// Pending counts outbox messages not yet acknowledged (all peers).
func (s *Service) Pending(ctx context.Context) (int64, error) {
	var n int64
	err := s.DB.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM fed_messages WHERE direction = 'out' AND state IN ('sending', 'pending', 'voiding')`).Scan(&n)
	return n, err
}

// MessageInfo is one message as a side books it, for reconciliation.
type MessageInfo struct {
	ID string `json:"id"`
	// Debtor owes Creditor AmountFen once the message is booked.
	Debtor    string `json:"debtor"`
	Creditor  string `json:"creditor"`
	AmountFen int64  `json:"amount_fen"`
	Booked    bool   `json:"booked"`
	State     string `json:"state"`
	CreatedAt int64  `json:"created_ms"`
}

type listRequest struct {
	From int64 `json:"from_ms"`
	To   int64 `json:"to_ms"`
}

type listAnswer struct {
	Messages []MessageInfo `json:"messages"`
}

// messagesWith lists our messages with peer created in [from, to).
//
// A charge counts on the day it was created for as long as it stands:
// a void (before its day is settled) takes it out; once the day is
// settled a void is refused, and the charge stays in the day (on the
// sender's side "refunded") while a refund, a message of its own dated
// when it was made, counts on that day the other way round.
func (s *Service) messagesWith(ctx context.Context, peer string, from, to int64) ([]MessageInfo, error) {
	rows, err := s.DB.R.QueryContext(ctx, `SELECT id, direction, kind, amount_fen, state, created_at FROM fed_messages
		WHERE peer = $1 AND created_at >= $2 AND created_at < $3 ORDER BY id`, peer, from, to)
	if err != nil {
		return nil, unavailable(err)
	}
	defer rows.Close()
	out := []MessageInfo{}
	for rows.Next() {
		var m MessageInfo
		var dir, kind string
		if err := rows.Scan(&m.ID, &dir, &kind, &m.AmountFen, &m.State, &m.CreatedAt); err != nil {
			return nil, unavailable(err)
		}
		refund := kind == kindRefund
		if dir == "out" {
			// We sent it: the peer's resident owes us (a refund: we owe
			// the peer).
			m.Debtor, m.Creditor = peer, s.City
			m.Booked = m.State == "acked" || m.State == "pending" || m.State == "refunded"
		} else {
			m.Debtor, m.Creditor = s.City, peer
			m.Booked = m.State == StateApplied
		}
		if refund {
			m.Debtor, m.Creditor = m.Creditor, m.Debtor
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// HandleList answers a peer's reconciliation request with our messages
// with it.
func (s *Service) HandleList(ctx context.Context, data []byte) ([]byte, error) {
	env, r, err := openRequest[listRequest](s, data, KindList)
	if err != nil {
		return nil, err
	}
	ms, err := s.messagesWith(ctx, env.From, r.From, r.To)
	if err != nil {
		return nil, err
	}
	return Seal(s.City, env.From, KindAnswer, s.Now(), listAnswer{Messages: ms}, s.Node())
}

// Discrepancy is a message the two sides do not book alike.
type Discrepancy struct {
	ID     string       `json:"id"`
	Here   *MessageInfo `json:"here,omitempty"`
	There  *MessageInfo `json:"there,omitempty"`
	Reason string       `json:"reason" doc:"only_here | only_there | differs"`
}

// Reconciliation is the comparison of both sides' messages with a peer.
type Reconciliation struct {
	Peer          string        `json:"peer"`
	Here          int           `json:"here"`
	There         int           `json:"there"`
	Discrepancies []Discrepancy `json:"discrepancies"`
}

// Reconcile compares our messages with peer's (created in [from, to);
// zero times mean everything).
func (s *Service) Reconcile(ctx context.Context, peer string, from, to time.Time) (Reconciliation, error) {
	m, err := s.member(peer)
	if err != nil {
		return Reconciliation{}, apperr.Newf(apperr.UnknownPeer, peer+" is not a member of this region", "该城市不是本区域成员")
	}
	f, t := int64(0), int64(1)<<52
	if !from.IsZero() {
		f = from.UnixMilli()
	}
	if !to.IsZero() {
		t = to.UnixMilli()
	}
	here, err := s.messagesWith(ctx, peer, f, t)
	if err != nil {
		return Reconciliation{}, err
	}
	var ans listAnswer
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := s.call(cctx, m, KindList, listRequest{From: f, To: t}, &ans); err != nil {
		return Reconciliation{}, apperr.Newf(apperr.Unavailable, "the peer could not be asked: "+err.Error(), "无法联系对方城市")
	}
	return compare(peer, here, ans.Messages), nil
}

func compare(peer string, here, there []MessageInfo) Reconciliation {
	r := Reconciliation{Peer: peer, Here: len(here), There: len(there), Discrepancies: []Discrepancy{}}
	th := map[string]*MessageInfo{}
	for i := range there {
		th[there[i].ID] = &there[i]
	}
	seen := map[string]bool{}
	for i := range here {
		h := &here[i]
		seen[h.ID] = true
		t, ok := th[h.ID]
		switch {
		case !ok:
			if h.Booked {
				r.Discrepancies = append(r.Discrepancies, Discrepancy{ID: h.ID, Here: h, Reason: "only_here"})
			}
		case t.Booked != h.Booked || t.AmountFen != h.AmountFen || t.Debtor != h.Debtor || t.Creditor != h.Creditor:
			r.Discrepancies = append(r.Discrepancies, Discrepancy{ID: h.ID, Here: h, There: t, Reason: "differs"})
		}
	}
	for i := range there {
		if !seen[there[i].ID] && there[i].Booked {
			r.Discrepancies = append(r.Discrepancies, Discrepancy{ID: there[i].ID, There: &there[i], Reason: "only_there"})
		}
	}
	return r
}

// Statement is the daily settlement of a pair of cities (A < B by id):
// what each owes the other for the messages created that day (UTC), both
// sides' identical computation, signed by both.
type Statement struct {
	Day      string `json:"day"`
	A        string `json:"a"`
	B        string `json:"b"`
	AOwesB   string `json:"a_owes_b_fen"`
	BOwesA   string `json:"b_owes_a_fen"`
	Net      string `json:"net_a_to_b_fen"`
	Messages string `json:"messages"`
	Digest   string `json:"digest"`
}

// SignedStatement is a statement with both node signatures.
type SignedStatement struct {
	Statement Statement        `json:"statement"`
	Signer    string           `json:"signer"`
	Signature *trust.Signature `json:"signature"`
	Peer      *trust.Signature `json:"peer_signature,omitempty"`
	Agreed    bool             `json:"agreed"`
	Error     string           `json:"error,omitempty"`
	// Theirs is the peer's own statement of the day when it answered with
	// other figures (Error says so in words).
	Theirs *Statement `json:"theirs,omitempty"`
}

// statement computes our view of the day's statement with peer.
func (s *Service) statement(ctx context.Context, peer, day string) (Statement, error) {
	d, err := time.Parse("2006-01-02", day)
	if err != nil {
		return Statement{}, apperr.Invalid("day", "day must be YYYY-MM-DD", "日期格式须为 YYYY-MM-DD")
	}
	ms, err := s.messagesWith(ctx, peer, d.UnixMilli(), d.Add(24*time.Hour).UnixMilli())
	if err != nil {
		return Statement{}, err
	}
	a, b := s.City, peer
	if b < a {
		a, b = b, a
	}
	var aOwes, bOwes int64
	h := sm3.New()
	n := 0
	for _, m := range ms {
		if !m.Booked {
			continue
		}
		n++
		h.Write([]byte(m.ID + ":" + m.Debtor + ":" + strconv.FormatInt(m.AmountFen, 10) + "\n"))
		if m.Debtor == a {
			aOwes += m.AmountFen
		} else {
			bOwes += m.AmountFen
		}
	}
	return Statement{Day: day, A: a, B: b, AOwesB: strconv.FormatInt(aOwes, 10), BOwesA: strconv.FormatInt(bOwes, 10),
		Net: strconv.FormatInt(aOwes-bOwes, 10), Messages: strconv.Itoa(n), Digest: hex.EncodeToString(h.Sum(nil))}, nil
}

func signStatement(st Statement, signer ecode.Signer) (*trust.Signature, error) {
	b, _ := json.Marshal(st)
	canon, err := trust.Canonical(b, "")
	if err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	sig, err := signer.Sign(canon)
	if err != nil {
		return nil, apperr.Wrap(apperr.Internal, err)
	}
	return &trust.Signature{Alg: signer.Alg().String(), Kid: signer.Public().KidString(), Value: base64.RawURLEncoding.EncodeToString(sig)}, nil
}

// VerifyStatement checks a statement signature with a node key.
func VerifyStatement(st Statement, sig *trust.Signature, key ecode.PublicKey) bool {
	if sig == nil || sig.Kid != key.KidString() {
		return false
	}
	v, err := base64.RawURLEncoding.DecodeString(sig.Value)
	if err != nil {
		return false
	}
	b, _ := json.Marshal(st)
	canon, err := trust.Canonical(b, "")
	return err == nil && key.Verify(canon, v)
}

type statementRequest struct {
	Statement Statement        `json:"statement"`
	Signature *trust.Signature `json:"signature"`
}

// HandleStatement countersigns a peer's statement if our own computation
// for the same day is identical; otherwise it answers with ours, unsigned.
func (s *Service) HandleStatement(ctx context.Context, data []byte) ([]byte, error) {
	env, r, err := openRequest[statementRequest](s, data, KindStatement)
	if err != nil {
		return nil, err
	}
	_, key, _ := s.Members().Member(env.From)
	if !VerifyStatement(r.Statement, r.Signature, key) {
		return nil, apperr.Newf(apperr.BadSignature, "the statement is not signed by "+env.From, "结算单签名无效")
	}
	ours, err := s.statement(ctx, env.From, r.Statement.Day)
	if err != nil {
		return nil, err
	}
	s.at(ctx, "statement_computed", r.Statement.Day)
	out := SignedStatement{Statement: ours, Signer: s.City}
	if ours == r.Statement {
		sig, err := signStatement(ours, s.Node())
		if err != nil {
			return nil, err
		}
		if err := s.saveStatement(ctx, env.From, ours, r.Signature, sig, false); err != nil {
			return nil, err
		}
		now, held, err := s.stillHolds(ctx, env.From, ours)
		if err != nil {
			return nil, err
		}
		if held {
			out.Signature, out.Agreed = sig, true
		} else {
			out.Statement = now
		}
	}
	return Seal(s.City, env.From, KindAnswer, s.Now(), out, s.Node())
}

// stillHolds re-reads the books after a statement of a day that is over
// (a final one, daySettled) was saved. A void checks whether the day is
// settled after marking its message (void); a statement computed before
// that mark and saved after the check would count a charge the void then
// reverses. Whichever of the two comes second sees the other: if the
// books no longer give st, the saved statement is withdrawn (the day is
// not settled; settling it again signs what the books say) and the
// current figures are returned.
func (s *Service) stillHolds(ctx context.Context, peer string, st Statement) (Statement, bool, error) {
	if st.Day >= s.Now().UTC().Format("2006-01-02") {
		return st, true, nil // a statement of a running day is not final anyway
	}
	now, err := s.statement(ctx, peer, st.Day)
	if err != nil || now == st {
		return st, err == nil, err
	}
	s.Log.Warn("federation: the books changed while a day's statement was being saved; withdrawn", "peer", peer, "day", st.Day,
		"signed", st.Net, "now", now.Net)
	return now, false, s.withdraw(ctx, peer, st)
}

// withdraw makes a saved statement of st's day no longer count as
// settled (the peer's signature is dropped), if it is still st.
func (s *Service) withdraw(ctx context.Context, peer string, st Statement) error {
	b, _ := json.Marshal(st)
	if _, err := s.DB.W.ExecContext(ctx, `UPDATE fed_statements SET theirs = '' WHERE peer = $1 AND day = $2 AND statement = $3`, peer, st.Day, b); err != nil {
		return unavailable(err)
	}
	s.settled.Delete(peer + "|" + st.Day)
	return nil
}

// finalStatement returns the statement of day with peer that both cities
// signed after the day was over (daySettled), if there is one.
func (s *Service) finalStatement(ctx context.Context, peer string, day time.Time) (Statement, bool, error) {
	d := day.UTC().Truncate(24 * time.Hour)
	var b []byte
	err := s.DB.R.QueryRowContext(ctx, `SELECT statement FROM fed_statements WHERE peer = $1 AND day = $2 AND created_at >= $3
		AND ours <> '' AND theirs <> '' AND theirs <> 'null' AND ours <> 'null'`, peer, d.Format("2006-01-02"), d.Add(24*time.Hour).UnixMilli()).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return Statement{}, false, nil
	}
	if err != nil {
		return Statement{}, false, unavailable(err)
	}
	var st Statement
	if err := json.Unmarshal(b, &st); err != nil {
		return Statement{}, false, apperr.Wrap(apperr.Internal, err)
	}
	return st, true, nil
}

// daySettled reports whether the day (UTC) of at has a statement with
// peer that both cities signed after the day ended. A charge (or refund)
// dated on such a day is refused, and so is a void of a charge of it that
// the statement counts (void): the day's statement is final (a day
// settled once it was over means every message of it had been delivered,
// so only a back-dated message, or a void the sender decided later, can
// arrive later). A statement signed while its day was still running
// (settle accepts today; a peer may ask for any day) covers only the
// messages created before it and is not final: a charge created later
// that day, delivered after midnight, is still booked.
func (s *Service) daySettled(ctx context.Context, peer string, at time.Time) (bool, error) {
	day := at.UTC().Format("2006-01-02")
	if day >= s.Now().UTC().Format("2006-01-02") {
		return false, nil // today is never settled
	}
	k := peer + "|" + day
	if _, ok := s.settled.Load(k); ok {
		return true, nil
	}
	end := at.UTC().Truncate(24 * time.Hour).Add(24 * time.Hour).UnixMilli()
	var n int
	err := s.DB.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM fed_statements WHERE peer = $1 AND day = $2 AND created_at >= $3
		AND ours <> '' AND theirs <> '' AND theirs <> 'null' AND ours <> 'null'`, peer, day, end).Scan(&n)
	if err != nil {
		return false, unavailable(err)
	}
	if n > 0 {
		s.settled.Store(k, true)
	}
	return n > 0, nil
}

func (s *Service) saveStatement(ctx context.Context, peer string, st Statement, ours, theirs *trust.Signature, mine bool) error {
	b, _ := json.Marshal(st)
	o, _ := json.Marshal(ours)
	t, _ := json.Marshal(theirs)
	if !mine {
		o, t = t, o
	}
	_, err := s.DB.W.ExecContext(ctx, `INSERT INTO fed_statements(peer, day, statement, ours, theirs, created_at) VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (peer, day) DO UPDATE SET statement = EXCLUDED.statement, ours = EXCLUDED.ours, theirs = EXCLUDED.theirs, created_at = EXCLUDED.created_at`,
		peer, st.Day, b, string(o), string(t), s.Now().UnixMilli())
	if err != nil {
		return unavailable(err)
	}
	return nil
}

// Settle runs the daily settlement for day (YYYY-MM-DD, UTC) with every
// peer: computes our statement, signs it, and asks the peer to countersign.
// A peer that disagrees (messages still in an outbox, or a discrepancy)
// returns its own figures; the result says so.
func (s *Service) Settle(ctx context.Context, day string) ([]SignedStatement, error) {
	if _, err := time.Parse("2006-01-02", day); err != nil {
		return nil, apperr.Invalid("day", "day must be YYYY-MM-DD", "日期格式须为 YYYY-MM-DD")
	}
	out := []SignedStatement{}
	for _, peer := range s.peerCities() {
		st, err := s.statement(ctx, peer, day)
		if err != nil {
			return nil, err
		}
		sig, err := signStatement(st, s.Node())
		if err != nil {
			return nil, err
		}
		res := SignedStatement{Statement: st, Signer: s.City, Signature: sig}
		m, _ := s.member(peer)
		var ans SignedStatement
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err = s.call(cctx, m, KindStatement, statementRequest{Statement: st, Signature: sig}, &ans)
		cancel()
		_, key, _ := s.Members().Member(peer)
		switch {
		case err != nil:
			res.Error = err.Error()
		case ans.Agreed && ans.Statement == st && VerifyStatement(st, ans.Signature, key):
			if err := s.saveStatement(ctx, peer, st, sig, ans.Signature, true); err != nil {
				return nil, err
			}
			now, held, err := s.stillHolds(ctx, peer, st)
			if err != nil {
				return nil, err
			}
			res.Peer, res.Agreed = ans.Signature, held
			if !held {
				res.Error = "the books changed while the day was being settled (a void came in): now " + now.AOwesB + "/" + now.BOwesA +
					" over " + now.Messages + " messages; settle the day again"
			}
		default:
			theirs := ans.Statement
			res.Theirs = &theirs
			res.Error = "the peer's figures differ: " + ans.Statement.AOwesB + "/" + ans.Statement.BOwesA + " over " + ans.Statement.Messages + " messages"
		}
		out = append(out, res)
	}
	return out, nil
}
