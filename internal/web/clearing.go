package web

import (
	"bytes"
	"context"
	"encoding/csv"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/federation"
)

// Cross-city clearing (跨城清算) for finance and operator staff: per peer
// city of the region, what it owes us and we owe it (the clearing
// account's balance), messages still in our outbox, the differences found
// by reconciling our messages with the peer's, and what our providers took
// from the peer's residents (a chart and a CSV). Finance alone may run the
// day's settlement (a POST, CSRF-checked and audited); the page then shows
// each peer's statement and whether the peer countersigned it.
//
// Everything comes from the node's federation service through Deps
// (ClearingPositions, ClearingReconcile, ClearingSettle); a node that is
// not in a region leaves them nil and the page says so plainly. Takings
// per peer are read from the ledger journal (read-only): what the scan
// path booked from the clearing account clr:<peer> to providers'
// receivables, less reversals.

var (
	clearingRoles = []auth.Role{auth.RoleFinance, auth.RoleOperator}
	// reconcileTimeout bounds asking all peers for their lists when the
	// page is drawn: a peer that is down shows an error, not a hung page.
	reconcileTimeout = 8 * time.Second
)

func (w *Web) clearingRoutes(mux *http.ServeMux) {
	staff := func(roles []auth.Role, h handlerFunc) http.HandlerFunc {
		return w.withSession(auth.KindStaff, "/console/login", roles, h)
	}
	mux.HandleFunc("GET /console/clearing", staff(clearingRoles, w.consoleClearing))
	mux.HandleFunc("GET /console/clearing/takings.svg", staff(clearingRoles, w.consoleClearingChart))
	mux.HandleFunc("GET /console/clearing/export", staff(clearingRoles, w.consoleClearingExport))
	mux.HandleFunc("POST /console/clearing/settle", staff(financeOnly, w.consoleClearingSettle))
}

// clearingPeer is one peer city's row on the page.
type clearingPeer struct {
	federation.Position
	// TakingsFen is what our providers took from the peer's residents.
	TakingsFen int64
	// Reconciled is set when the peer answered; Rec is its outcome.
	Reconciled bool
	Rec        federation.Reconciliation
	RecErr     *apperr.Error
}

// settledRow is one statement of a settlement, from this city's side.
type settledRow struct {
	Peer, Day     string
	OwedToUsFen   int64
	WeOweFen      int64
	NetToUsFen    int64
	Messages      string
	Digest        string
	Agreed        bool
	Countersigned bool
	Error         string
	// Differs is set when the peer answered with other figures (from its
	// side, as seen from ours): PeerOwedToUsFen, PeerWeOweFen, PeerMessages.
	Differs                       bool
	PeerOwedToUsFen, PeerWeOweFen int64
	PeerMessages                  string
}

// SettleError explains, in the page's language, why a peer did not
// countersign: its own figures in yuan, or that it could not be asked
// (the federation's technical text only on the English page).
func (rq *req) SettleError(r settledRow) string {
	if r.Error == "" {
		return ""
	}
	if r.Differs {
		return rq.Msg("the peer's figures: owed to us "+money(r.PeerOwedToUsFen)+", we owe "+money(r.PeerWeOweFen)+", "+r.PeerMessages+" messages",
			"对方计：对方应付我方 "+money(r.PeerOwedToUsFen)+"，我方应付对方 "+money(r.PeerWeOweFen)+"，共 "+r.PeerMessages+" 条报文")
	}
	return rq.Msg("the peer could not be asked: "+r.Error, "无法取得对方城市的会签，请稍后重试")
}

type clearingData struct {
	InRegion bool
	City     string
	From, To string // reconciliation window, YYYY-MM-DD (CST)
	Day      string // settlement day, YYYY-MM-DD (UTC)
	Peers    []clearingPeer
	// Totals over all peers.
	OwedToUs, WeOwe, Takings, Pending int64
	Differences                       int
	Settled                           []settledRow
	SettledDay                        string
}

func (w *Web) inRegion() bool { return w.d.ClearingPositions != nil }

// clearingData gathers positions, takings and (if reconcile) every peer's
// reconciliation over [from, to].
func (w *Web) clearingData(ctx context.Context, from, to string, reconcile bool) (clearingData, error) {
	now := w.d.Now()
	d := clearingData{InRegion: w.inRegion(), City: w.d.City, From: from, To: to,
		Day: now.UTC().Add(-24 * time.Hour).Format(time.DateOnly)}
	if !d.InRegion {
		return d, nil
	}
	ps, err := w.d.ClearingPositions(ctx)
	if err != nil {
		return d, err
	}
	takings, err := w.clearingTakings(ctx)
	if err != nil {
		return d, err
	}
	lo, hi, err := dayRange(from, to)
	if err != nil {
		return d, err
	}
	d.Peers = make([]clearingPeer, len(ps))
	for i, p := range ps {
		d.Peers[i] = clearingPeer{Position: p, TakingsFen: takings[p.Peer]}
		delete(takings, p.Peer)
	}
	// Takings booked from a peer no longer listed still show.
	for peer, v := range takings {
		d.Peers = append(d.Peers, clearingPeer{Position: federation.Position{Peer: peer}, TakingsFen: v})
	}
	sort.Slice(d.Peers, func(i, j int) bool { return d.Peers[i].Peer < d.Peers[j].Peer })
	if reconcile && w.d.ClearingReconcile != nil {
		rctx, cancel := context.WithTimeout(ctx, reconcileTimeout)
		var wg sync.WaitGroup
		for i := range d.Peers {
			wg.Add(1)
			go func(p *clearingPeer) {
				defer wg.Done()
				rec, err := w.d.ClearingReconcile(rctx, p.Peer, lo, hi)
				if err != nil {
					p.RecErr = apperr.As(err)
					return
				}
				p.Rec, p.Reconciled = rec, true
			}(&d.Peers[i])
		}
		wg.Wait()
		cancel()
	}
	for _, p := range d.Peers {
		d.OwedToUs += p.OwedToUsFen
		d.WeOwe += p.WeOweFen
		d.Takings += p.TakingsFen
		d.Pending += p.PendingMessages
		d.Differences += len(p.Rec.Discrepancies)
	}
	return d, nil
}

// dayRange turns two dates (China time, inclusive) into [from, to).
// Empty means unbounded on that side.
func dayRange(from, to string) (time.Time, time.Time, error) {
	var lo, hi time.Time
	if from != "" {
		t, err := time.ParseInLocation(time.DateOnly, from, cst)
		if err != nil {
			return lo, hi, apperr.Invalid("from", "write the start date as year-month-day, e.g. 2026-11-01", "开始日期格式应为 年-月-日，例如 2026-11-01")
		}
		lo = t
	}
	if to != "" {
		t, err := time.ParseInLocation(time.DateOnly, to, cst)
		if err != nil {
			return lo, hi, apperr.Invalid("to", "write the end date as year-month-day, e.g. 2026-11-01", "结束日期格式应为 年-月-日，例如 2026-11-01")
		}
		hi = t.Add(24 * time.Hour)
	}
	if !lo.IsZero() && !hi.IsZero() && !lo.Before(hi) {
		return lo, hi, apperr.Invalid("to", "the end date is before the start date", "结束日期早于开始日期")
	}
	return lo, hi, nil
}

// clearingTakings sums, per peer city, what the scan path booked from the
// peer's clearing account to our providers, less reversals of it.
func (w *Web) clearingTakings(ctx context.Context) (map[string]int64, error) {
	m := map[string]int64{}
	add := func(q string, sign int64) error {
		rows, err := w.d.DB.R.QueryContext(ctx, q)
		if err != nil {
			return apperr.Wrap(apperr.Internal, err)
		}
		defer rows.Close()
		for rows.Next() {
			var k string
			var v int64
			if err := rows.Scan(&k, &v); err != nil {
				return apperr.Wrap(apperr.Internal, err)
			}
			m[strings.TrimPrefix(k, "clr:")] += sign * v
		}
		return rows.Err()
	}
	if err := add(`SELECT debit, SUM(amount) FROM ledger_journal WHERE type IN ('transfer','post') AND debit LIKE 'clr:%' AND credit LIKE 'prv:%' GROUP BY debit`, 1); err != nil {
		return nil, err
	}
	if err := add(`SELECT credit, SUM(amount) FROM ledger_journal WHERE type = 'reversal' AND credit LIKE 'clr:%' AND debit LIKE 'prv:%' GROUP BY credit`, -1); err != nil {
		return nil, err
	}
	return m, nil
}

// clearingWindow is the page's reconciliation window: ?from=&to= or the
// last seven days (China time).
func (w *Web) clearingWindow(rq *req) (string, string) {
	q := rq.r.URL.Query()
	from, to := strings.TrimSpace(q.Get("from")), strings.TrimSpace(q.Get("to"))
	if from == "" && to == "" {
		today := w.d.Now().In(cst)
		from, to = today.AddDate(0, 0, -6).Format(time.DateOnly), today.Format(time.DateOnly)
	}
	return from, to
}

func (w *Web) consoleClearing(rq *req) error {
	from, to := w.clearingWindow(rq)
	d, err := w.clearingData(rq.r.Context(), from, to, true)
	if err != nil {
		if apperr.CodeOf(err) == apperr.ValidationFailed {
			return rq.renderWithError(err, "c_clearing.html", "c.clearing.title", d)
		}
		return err
	}
	return rq.render(200, "c_clearing.html", "c.clearing.title", d)
}

// consoleClearingSettle runs the settlement of one day (UTC) with every
// peer and shows each statement: finance only, audited.
func (w *Web) consoleClearingSettle(rq *req) error {
	ctx := rq.r.Context()
	from, to := w.clearingWindow(rq)
	d, err := w.clearingData(ctx, from, to, false)
	if err != nil {
		return err
	}
	if !d.InRegion || w.d.ClearingSettle == nil {
		return notInRegion()
	}
	day := strings.TrimSpace(rq.r.PostFormValue("day"))
	if day == "" {
		day = d.Day
	}
	d.Day = day // kept on the form if it is refused
	if _, err := time.Parse(time.DateOnly, day); err != nil {
		return rq.renderWithError(apperr.Invalid("day", "write the day as year-month-day, e.g. 2026-11-01", "日期格式应为 年-月-日，例如 2026-11-01"), "c_clearing.html", "c.clearing.title", d)
	}
	sts, err := w.d.ClearingSettle(ctx, day)
	if err != nil {
		return rq.renderWithError(err, "c_clearing.html", "c.clearing.title", d)
	}
	d.Settled, d.SettledDay = settledRows(w.d.City, sts), day
	agreed := 0
	for _, s := range d.Settled {
		if s.Agreed {
			agreed++
		}
	}
	if err := w.d.Auth.Audit(ctx, rq.S.P, "clearing_settle", day, "web peers="+strconv.Itoa(len(sts))+" agreed="+strconv.Itoa(agreed)); err != nil {
		return err
	}
	return rq.render(200, "c_clearing.html", "c.clearing.title", d)
}

// settledRows turns statements (cities A < B) into this city's view.
func settledRows(city string, sts []federation.SignedStatement) []settledRow {
	out := make([]settledRow, 0, len(sts))
	for _, s := range sts {
		st := s.Statement
		aOwes, _ := strconv.ParseInt(st.AOwesB, 10, 64)
		bOwes, _ := strconv.ParseInt(st.BOwesA, 10, 64)
		r := settledRow{Peer: st.B, Day: st.Day, Messages: st.Messages, Digest: st.Digest, Agreed: s.Agreed, Countersigned: s.Peer != nil, Error: s.Error}
		r.OwedToUsFen, r.WeOweFen = bOwes, aOwes // we are A
		if st.A != city {
			r.Peer, r.OwedToUsFen, r.WeOweFen = st.A, aOwes, bOwes
		}
		r.NetToUsFen = r.OwedToUsFen - r.WeOweFen
		if th := s.Theirs; th != nil {
			pa, err1 := strconv.ParseInt(th.AOwesB, 10, 64)
			pb, err2 := strconv.ParseInt(th.BOwesA, 10, 64)
			if err1 == nil && err2 == nil {
				r.Differs, r.PeerMessages = true, th.Messages
				r.PeerOwedToUsFen, r.PeerWeOweFen = pb, pa // we are A
				if th.A != city {
					r.PeerOwedToUsFen, r.PeerWeOweFen = pa, pb
				}
			}
		}
		if len(r.Digest) > 16 {
			r.Digest = r.Digest[:16] + "…"
		}
		out = append(out, r)
	}
	return out
}

func notInRegion() error {
	return apperr.Newf(apperr.Conflict, "this node is not in a region: there is no cross-city clearing", "本节点未加入区域，没有跨城清算")
}

func (w *Web) consoleClearingChart(rq *req) error {
	var buf bytes.Buffer
	title := rq.T("chart.clearing")
	if !w.inRegion() {
		emptySVG(&buf, title, rq.T("c.clearing.noregion"))
	} else {
		m, err := w.clearingTakings(rq.r.Context())
		if err != nil {
			return err
		}
		if err := barSVG(&buf, title, sortedKV(m), true); err != nil {
			return apperr.Wrap(apperr.Internal, err)
		}
	}
	rq.w.Header().Set("Content-Type", "image/svg+xml")
	_, err := rq.w.Write(buf.Bytes())
	return err
}

// consoleClearingExport writes the positions and takings per peer as CSV
// (UTF-8 with BOM, like the other exports). It does not ask the peers.
func (w *Web) consoleClearingExport(rq *req) error {
	if !w.inRegion() {
		return notInRegion()
	}
	d, err := w.clearingData(rq.r.Context(), "", "", false)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	buf.WriteString("\ufeff")
	cw := csv.NewWriter(&buf)
	cw.Write([]string{rq.T("c.clearing.peer"), rq.T("c.clearing.owed"), rq.T("c.clearing.weowe"), rq.T("c.clearing.balance"),
		rq.T("c.clearing.pending"), rq.T("c.clearing.takings")})
	for _, p := range d.Peers {
		cw.Write([]string{p.Peer, yuan(p.OwedToUsFen), yuan(p.WeOweFen), yuan(p.BalanceFen), strconv.FormatInt(p.PendingMessages, 10), yuan(p.TakingsFen)})
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return apperr.Wrap(apperr.Internal, err)
	}
	name := "clearing-" + safeFile(w.d.City) + "-" + w.d.Now().In(cst).Format("20060102") + ".csv"
	rq.w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	rq.w.Header().Set("Content-Disposition", `attachment; filename="`+name+`"`)
	w.d.Auth.Audit(rq.r.Context(), rq.S.P, "clearing_export", "", "web")
	_, err = rq.w.Write(buf.Bytes())
	return err
}
