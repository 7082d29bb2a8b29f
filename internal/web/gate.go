package web

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	_ "image/gif" // photos of codes
	_ "image/jpeg"
	_ "image/png"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/makiuchi-d/gozxing"
	zxqr "github.com/makiuchi-d/gozxing/qrcode"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/catalog"
)

// The gate simulator: pick one of the node's terminals, paste a code (or a
// card number) or upload a photo of a QR code, and see the decision exactly
// as the terminal would get it from POST /v1/scans, including the minimal
// view the scenario allows. The photo is decoded here, on the server.

// A scan moves real money, so the gate is open to anyone only on a demo
// node (Deps.GatePublic); on a real city's node it needs an operator or
// provider session.
func (w *Web) gateRoutes(mux *http.ServeMux) {
	public := w.page
	staff := func(h handlerFunc) http.HandlerFunc {
		return w.withSession(auth.KindStaff, "/console/login", terminalRoles, h)
	}
	route := func(h handlerFunc) http.HandlerFunc {
		pub, st := public(h), staff(h)
		return func(rw http.ResponseWriter, r *http.Request) {
			if w.d.GatePublic != nil && w.d.GatePublic() {
				pub(rw, r)
				return
			}
			st(rw, r)
		}
	}
	mux.HandleFunc("GET /gate", route(w.gateForm))
	mux.HandleFunc("POST /gate", route(w.gateScan))
}

type gateData struct {
	Pre       string
	Terminals []Terminal
	Terminal  string
	Code      string
	Card      string
	Amount    string
	Result    *ScanResult
	Decoded   bool
	Scenario  string
	// View is the result's view as labelled rows.
	View []viewRow
}

func (w *Web) gateData(rq *req) (gateData, error) {
	d := gateData{}
	if rq.S != nil {
		d.Pre = rq.S.CSRF
	} else {
		d.Pre = rq.preCSRF()
	}
	if w.d.Terminals == nil || w.d.Scan == nil {
		return d, nil
	}
	ts, err := w.d.Terminals(rq.r.Context())
	if err != nil {
		return d, err
	}
	for _, t := range ts {
		if rq.S != nil && rq.S.P.Role == auth.RoleProvider && t.Provider != rq.S.P.ProviderID {
			continue // providers try their own terminals only
		}
		if rq.S == nil && w.d.Catalog != nil {
			if sc, err := w.d.Catalog.Scenario(rq.r.Context(), t.Scenario); err != nil || sc.Kind == catalog.KindPayout {
				continue // an anonymous visitor never pays anybody out
			}
		}
		d.Terminals = append(d.Terminals, t)
	}
	return d, nil
}

func (w *Web) gateForm(rq *req) error {
	d, err := w.gateData(rq)
	if err != nil {
		return err
	}
	d.Terminal = rq.r.URL.Query().Get("terminal")
	return rq.render(200, "gate.html", "gate.title", d)
}

const (
	maxPhotoBytes = 8 << 20
	// maxPhotoPixels bounds the decoded picture: a small file can declare
	// a huge image (a PNG of zeros compresses a thousandfold), and decoding
	// it would take gigabytes. 16 megapixels is more than a phone sends.
	maxPhotoPixels = 16_000_000
)

// decodeQR reads the text of a QR code in a photo.
func decodeQR(r io.Reader) (string, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxPhotoBytes))
	if err != nil {
		return "", apperr.Newf(apperr.Malformed, "the picture could not be read", "无法读取图片")
	}
	cfg, _, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return "", apperr.Newf(apperr.Malformed, "the file is not a PNG, JPEG or GIF picture", "文件不是 PNG、JPEG 或 GIF 图片")
	}
	if cfg.Width <= 0 || cfg.Height <= 0 || int64(cfg.Width)*int64(cfg.Height) > maxPhotoPixels {
		return "", apperr.Newf(apperr.Malformed, fmt.Sprintf("the picture is too large (%d×%d); send one of at most 16 megapixels", cfg.Width, cfg.Height),
			fmt.Sprintf("图片过大（%d×%d），请发送不超过1600万像素的图片", cfg.Width, cfg.Height))
	}
	img, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return "", apperr.Newf(apperr.Malformed, "the file is not a PNG, JPEG or GIF picture", "文件不是 PNG、JPEG 或 GIF 图片")
	}
	bmp, err := gozxing.NewBinaryBitmapFromImage(img)
	if err != nil {
		return "", apperr.Newf(apperr.Malformed, "the picture could not be read", "无法读取图片")
	}
	// A photo needs the finder-pattern search (TRY_HARDER); a clean
	// picture of the code (a screenshot, the resident page's own image)
	// is read whole if that search fails, as zxing's own web decoder does:
	// the search misses about one symbol in fifty of the e-codes' size.
	res, err := zxqr.NewQRCodeReader().Decode(bmp, map[gozxing.DecodeHintType]any{gozxing.DecodeHintType_TRY_HARDER: true})
	if err != nil {
		res, err = zxqr.NewQRCodeReader().Decode(bmp, map[gozxing.DecodeHintType]any{gozxing.DecodeHintType_PURE_BARCODE: true})
	}
	if err != nil {
		return "", apperr.Newf(apperr.Malformed, "no QR code was found in the picture; take the photo closer and straight on", "图片中未找到二维码，请靠近并正对二维码拍摄")
	}
	return res.GetText(), nil
}

func (w *Web) gateScan(rq *req) error {
	rq.r.Body = http.MaxBytesReader(rq.w, rq.r.Body, maxPhotoBytes+64<<10)
	if err := rq.r.ParseMultipartForm(1 << 20); err != nil && !errors.Is(err, http.ErrNotMultipart) {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return rq.renderWithError(apperr.New(apperr.BodyTooLarge), "gate.html", "gate.title", gateData{Pre: rq.preCSRF()})
		}
		return rq.renderWithError(apperr.Newf(apperr.ValidationFailed, "the form could not be read; send it again", "表单无法读取，请重新提交"),
			"gate.html", "gate.title", gateData{Pre: rq.preCSRF()})
	}
	d, err := w.gateData(rq)
	if err != nil {
		return err
	}
	d.Terminal = rq.r.FormValue("terminal")
	d.Code = strings.TrimSpace(rq.r.FormValue("code"))
	d.Card = strings.TrimSpace(rq.r.FormValue("card_number"))
	d.Amount = strings.TrimSpace(rq.r.FormValue("amount"))
	fail := func(err error) error { return rq.renderWithError(err, "gate.html", "gate.title", d) }
	if err := rq.checkCSRF(); err != nil {
		return fail(err)
	}
	if w.d.Scan == nil {
		return fail(unavailable("scans"))
	}
	var term *Terminal
	for i := range d.Terminals {
		if term == nil && (d.Terminals[i].Key() == d.Terminal || d.Terminals[i].ID == d.Terminal) {
			term = &d.Terminals[i]
		}
	}
	if term == nil {
		return fail(apperr.Invalid("terminal", "pick a terminal", "请选择终端"))
	}
	d.Scenario = term.Scenario
	if f, _, err := rq.r.FormFile("photo"); err == nil {
		text, err := decodeQR(f)
		f.Close()
		if err != nil {
			return fail(err)
		}
		d.Code, d.Decoded = text, true
	}
	if d.Code == "" && d.Card == "" {
		return fail(apperr.Invalid("code", "paste a code, type a card number or upload a photo of a QR code", "请粘贴电子码、输入卡号或上传二维码照片"))
	}
	var amount int64
	if d.Amount != "" {
		amount, err = parseYuan(d.Amount)
		if err != nil {
			return fail(err)
		}
	}
	// The form asks for yuan, so a missing or bad amount is explained in
	// yuan (the scan service's own text speaks of fen, for the API).
	amountErr := apperr.Invalid("amount", "this scenario needs the amount in yuan, e.g. 2.00", "此场景需要填写金额（元），例如 2.00")
	if amount == 0 && w.d.Catalog != nil {
		if sc, err := w.d.Catalog.Scenario(rq.r.Context(), term.Scenario); err == nil && sc.AmountFromTerminal {
			return fail(amountErr)
		}
	}
	res, err := w.d.Scan(rq.r.Context(), ScanRequest{TerminalID: term.ID, Scenario: term.Scenario, Code: d.Code, CardNumber: d.Card,
		AmountFen: amount, IdempotencyKey: "gate-" + auth.RandomID("")})
	if apperr.CodeOf(err) == apperr.InvalidAmount {
		return fail(amountErr)
	}
	if err != nil {
		return fail(err)
	}
	if res.Reason == string(apperr.InvalidAmount) {
		res.Message, res.MessageZh = amountErr.Text()
	}
	d.Result = &res
	d.View = rq.viewRows(res.View, term.Scenario)
	d.Code = "" // a used code is not shown again
	return rq.render(200, "gate.html", "gate.title", d)
}

// normalizeAmount turns full-width characters into ASCII and drops a
// currency sign, a trailing 元 and thousands separators (groups of three).
func normalizeAmount(s string) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r >= '０' && r <= '９':
			return '0' + (r - '０')
		case r == '．' || r == '。':
			return '.'
		case r == '，':
			return ','
		case r == '－':
			return '-'
		case r == '　':
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(strings.TrimPrefix(strings.TrimPrefix(s, "¥"), "￥"), "RMB")
	s = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "元"))
	if whole, frac, ok := strings.Cut(s, "."); strings.Contains(whole, ",") {
		groups := strings.Split(whole, ",")
		for i, g := range groups {
			if g == "" || len(g) > 3 || (i > 0 && len(g) != 3) {
				return s // not thousands separators: refused as it is
			}
		}
		s = strings.Join(groups, "")
		if ok {
			s += "." + frac
		}
	}
	return s
}

// viewRow is one line of "what the terminal sees": the field's label and
// its value written for people (money in yuan, categories in words).
type viewRow struct{ Key, Label, Value string }

// viewRows labels a scan's view in the order of the view vocabulary.
func (rq *req) viewRows(view map[string]any, scenario string) []viewRow {
	var out []viewRow
	seen := map[string]bool{}
	add := func(k string) {
		v, ok := view[k]
		if !ok || seen[k] {
			return
		}
		seen[k] = true
		out = append(out, viewRow{Key: k, Label: rq.T("view." + k), Value: rq.viewValue(k, v, scenario)})
	}
	for _, f := range catalog.Fields() {
		add(f.Name)
	}
	var rest []string
	for k := range view {
		if !seen[k] {
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	for _, k := range rest {
		add(k)
	}
	return out
}

func (rq *req) viewValue(key string, v any, scenario string) string {
	s := fmt.Sprint(v)
	if strings.HasSuffix(key, "_fen") {
		var fen int64
		switch n := v.(type) {
		case int64:
			fen = n
		case int:
			fen = int64(n)
		case float64:
			fen = int64(n)
		case json.Number:
			fen, _ = n.Int64()
		default:
			return s
		}
		return money(fen)
	}
	switch key {
	case "decision":
		return rq.T("gate." + s)
	case "reason":
		return rq.ReasonText(s)
	case "category":
		return rq.T("cat." + s)
	case "card_status":
		return rq.T("status." + s)
	case "home_city":
		if s == rq.web.d.City {
			return rq.Msg("this city", "本市") + "（" + s + "）"
		}
		return rq.Msg("another city", "外地") + "（" + s + "）"
	case "age_band":
		return rq.Msg(s+" years", s+" 岁")
	case "concession":
		if rq.web.d.Catalog != nil {
			if sc, err := rq.web.d.Catalog.Scenario(rq.r.Context(), scenario); err == nil {
				for _, c := range sc.Concessions {
					if c.ID == s {
						return rq.Msg(c.NameEn, c.NameZh)
					}
				}
			}
		}
	}
	return s
}

// parseYuan reads an amount in yuan ("2", "2.5", "2.50") as fen. It
// accepts the ways people write one: thousands separators ("10,000.00"),
// full-width digits ("６０"), a ¥ or 元 ("¥60", "60元").
func parseYuan(s string) (int64, error) {
	bad := apperr.Invalid("amount", "write the amount in yuan, e.g. 2.50", "金额请以元填写，例如 2.50")
	s = normalizeAmount(s)
	if strings.HasPrefix(s, "-") && len(s) > 1 {
		return 0, apperr.Invalid("amount", "the amount cannot be below zero", "金额不能为负数")
	}
	whole, frac, _ := strings.Cut(s, ".")
	if whole == "" || len(frac) > 2 || len(whole) > 9 || !allDigits(whole) || !allDigits(frac) {
		return 0, bad // strconv would take a sign: "2.+5" is not 2.05
	}
	y, err := strconv.ParseInt(whole, 10, 64)
	if err != nil || y < 0 {
		return 0, bad
	}
	for len(frac) < 2 {
		frac += "0"
	}
	f, err := strconv.ParseInt(frac, 10, 64)
	if err != nil || f < 0 {
		return 0, bad
	}
	return y*100 + f, nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
