package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"syscall"
	"time"
)

// wireConn is one worker's own keep-alive HTTP/1.1 connection to the node:
// the timed requests of a run go over it instead of net/http's Transport.
//
// The generator shares the machine with the node it measures, so every
// microsecond it spends is taken from the node. net/http's client hands
// each request to two goroutines per connection (a read loop and a write
// loop) and builds a header map per answer; writing the request bytes
// straight to the socket and parsing only the status line and the three
// headers that frame the answer (Content-Length, Transfer-Encoding,
// Connection) costs a fraction of that (docs/benchmarks.md, session 10).
// The node sees the same requests either way; `yikatong load --client std`
// keeps net/http's client for comparison.
//
// It speaks only plain http:// to one host, one request at a time, which
// is all a closed-loop worker needs.
type wireConn struct {
	addr string // host:port
	host string // Host header
	conn net.Conn
	br   *bufio.Reader
	wbuf []byte
	used bool // a request has completed on conn (it may have gone stale)
}

// errWireScheme is returned for a base URL the wire client does not speak.
var errWireScheme = errors.New("the wire client speaks only http://")

func newWireConn(base string) (*wireConn, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" || u.Host == "" {
		return nil, errWireScheme
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	return &wireConn{addr: addr, host: u.Host}, nil
}

// Close closes the connection (a later request dials again, and reuses
// the read buffer).
func (w *wireConn) Close() {
	if w.conn != nil {
		w.conn.Close()
		w.conn, w.used = nil, false
	}
}

// wireAnswer is an HTTP answer: its status and whole body.
type wireAnswer struct {
	Status int
	Body   []byte
}

// Do sends one request and reads its answer. A request that fails on a
// connection that had served requests before, without a single byte of
// answer (the node closed an idle connection), is sent once more on a new
// connection: every timed request of the generator carries an idempotency
// key or reads nothing, so sending it again is safe.
func (w *wireConn) Do(ctx context.Context, method, path, token string, body []byte) (wireAnswer, error) {
	for try := 0; ; try++ {
		reused := w.used && w.conn != nil
		a, started, err := w.once(ctx, method, path, token, body)
		if err == nil {
			return a, nil
		}
		w.Close()
		if try > 0 || !reused || started || ctx.Err() != nil || !staleConnErr(err) {
			return wireAnswer{}, err
		}
	}
}

func staleConnErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// once is one attempt; started reports whether any answer byte arrived.
func (w *wireConn) once(ctx context.Context, method, path, token string, body []byte) (a wireAnswer, started bool, err error) {
	if w.conn == nil {
		var d net.Dialer
		d.Timeout = 5 * time.Second
		c, err := d.DialContext(ctx, "tcp", w.addr)
		if err != nil {
			return a, false, err
		}
		w.conn = c
		if w.br == nil {
			w.br = bufio.NewReaderSize(c, 16<<10)
		} else {
			w.br.Reset(c)
		}
	}
	// The run's end cancels ctx, which interrupts the request at once (a
	// deadline of the run's end on the socket could fire a moment before
	// ctx reports the end, and the request would count as failed).
	conn := w.conn
	if err := conn.SetDeadline(time.Now().Add(60 * time.Second)); err != nil {
		return a, false, err
	}
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	b := w.wbuf[:0]
	b = append(b, method...)
	b = append(b, ' ')
	b = append(b, path...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, w.host...)
	b = append(b, "\r\nUser-Agent: yikatong-load\r\n"...)
	if token != "" {
		b = append(b, "Authorization: Bearer "...)
		b = append(b, token...)
		b = append(b, "\r\n"...)
	}
	if body != nil {
		b = append(b, "Content-Type: application/json\r\nContent-Length: "...)
		b = strconv.AppendInt(b, int64(len(body)), 10)
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	if len(b)+len(body) <= 16<<10 {
		b = append(b, body...)
		body = nil
	}
	w.wbuf = b
	if _, err := w.conn.Write(b); err != nil {
		return a, false, err
	}
	if len(body) > 0 {
		if _, err := w.conn.Write(body); err != nil {
			return a, false, err
		}
	}
	a, started, closeAfter, err := readAnswer(w.br)
	if err != nil {
		return a, started, err
	}
	w.used = true
	if closeAfter {
		w.Close()
	}
	return a, true, nil
}

// readAnswer reads one HTTP/1.1 answer: the status line, the headers that
// frame the body, and the body (by Content-Length or chunked).
func readAnswer(br *bufio.Reader) (a wireAnswer, started, closeAfter bool, err error) {
	line, err := br.ReadSlice('\n')
	if len(line) > 0 {
		started = true
	}
	if err != nil {
		return a, started, false, err
	}
	// "HTTP/1.1 200 OK\r\n"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return a, true, false, fmt.Errorf("malformed status line %q", bytes.TrimSpace(line))
	}
	a.Status, err = strconv.Atoi(string(line[9:12]))
	if err != nil || a.Status < 100 || a.Status > 999 {
		return a, true, false, fmt.Errorf("malformed status line %q", bytes.TrimSpace(line))
	}
	closeAfter = line[7] == '0' // HTTP/1.0 closes unless told otherwise
	length, chunked := int64(-1), false
	for {
		h, err := br.ReadSlice('\n')
		if err != nil {
			return a, true, false, err
		}
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			break
		}
		k, v, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			return a, true, false, fmt.Errorf("malformed header line %q", h)
		}
		v = bytes.TrimSpace(v)
		switch {
		case asciiEqualFold(k, "Content-Length"):
			n, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil || n < 0 {
				return a, true, false, fmt.Errorf("malformed Content-Length %q", v)
			}
			length = n
		case asciiEqualFold(k, "Transfer-Encoding"):
			chunked = asciiEqualFold(v, "chunked")
			if !chunked {
				return a, true, false, fmt.Errorf("unsupported Transfer-Encoding %q", v)
			}
		case asciiEqualFold(k, "Connection"):
			closeAfter = asciiEqualFold(v, "close")
		}
	}
	switch {
	case a.Status == 204 || a.Status == 304 || a.Status < 200:
		return a, true, closeAfter, nil
	case chunked:
		a.Body, err = readChunked(br)
	case length >= 0:
		if length > 64<<20 {
			return a, true, false, fmt.Errorf("answer of %d bytes is over the 64 MiB bound", length)
		}
		if length <= 64<<10 {
			a.Body = make([]byte, length)
			_, err = io.ReadFull(br, a.Body)
			break
		}
		// Grown as the bytes arrive, not promised by a header.
		a.Body, err = io.ReadAll(io.LimitReader(br, length))
		if err == nil && int64(len(a.Body)) != length {
			err = io.ErrUnexpectedEOF
		}
	default:
		a.Body, err = io.ReadAll(io.LimitReader(br, 64<<20))
		closeAfter = true
	}
	return a, true, closeAfter, err
}

func readChunked(br *bufio.Reader) ([]byte, error) {
	var out []byte
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return nil, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i]
		}
		n, err := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 64)
		if err != nil || n < 0 || int64(len(out))+n > 64<<20 {
			return nil, fmt.Errorf("malformed chunk size %q", line)
		}
		if n == 0 {
			// Trailers, then the blank line.
			for {
				t, err := br.ReadSlice('\n')
				if err != nil {
					return nil, err
				}
				if len(bytes.TrimRight(t, "\r\n")) == 0 {
					return out, nil
				}
			}
		}
		buf := bytes.NewBuffer(out)
		if _, err := io.CopyN(buf, br, n); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		out = buf.Bytes()
		if crlf, err := br.ReadSlice('\n'); err != nil || len(bytes.TrimRight(crlf, "\r\n")) != 0 {
			return nil, fmt.Errorf("chunk not followed by CRLF")
		}
	}
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
