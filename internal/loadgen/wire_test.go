package loadgen

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
)

// TestWireConnAgainstNetHTTP: the wire client against Go's own server:
// requests keep one connection, the server sees exactly what was sent, and
// answers framed by Content-Length or chunked, problem answers and a
// server that closes come back right.
func TestWireConnAgainstNetHTTP(t *testing.T) {
	var conns atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Header.Get("Authorization") != "Bearer tok" || r.Header.Get("Content-Type") != "application/json" || r.Host == "" {
			http.Error(w, "bad headers", 400)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	})
	mux.HandleFunc("GET /big", func(w http.ResponseWriter, r *http.Request) {
		// Larger than net/http's buffer and flushed: chunked.
		for i := 0; i < 50; i++ {
			io.WriteString(w, strings.Repeat("x", 1000))
			w.(http.Flusher).Flush()
		}
	})
	mux.HandleFunc("GET /close", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	})
	mux.HandleFunc("POST /problem", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(409)
		io.WriteString(w, `{"code":"idempotency_conflict","detail":"another body"}`)
	})
	mux.HandleFunc("GET /empty", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	w, err := newWireConn(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		body := []byte(`{"n":` + strings.Repeat("1", i+1) + `}`)
		a, err := w.Do(ctx, "POST", "/echo", "tok", body)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if a.Status != 200 || string(a.Body) != string(body) {
			t.Fatalf("request %d: %d %q, want 200 %q", i, a.Status, a.Body, body)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("20 requests used %d connections, want 1 (keep-alive)", n)
	}
	// A body larger than the write buffer goes out in a second write.
	big := []byte(`"` + strings.Repeat("y", 40<<10) + `"`)
	if a, err := w.Do(ctx, "POST", "/echo", "tok", big); err != nil || string(a.Body) != string(big) {
		t.Fatalf("large body: %v, %d bytes back", err, len(a.Body))
	}
	a, err := w.Do(ctx, "GET", "/big", "", nil)
	if err != nil || a.Status != 200 || len(a.Body) != 50_000 || strings.Trim(string(a.Body), "x") != "" {
		t.Fatalf("chunked answer: %v, status %d, %d bytes", err, a.Status, len(a.Body))
	}
	if a, err := w.Do(ctx, "GET", "/empty", "", nil); err != nil || a.Status != 204 || len(a.Body) != 0 {
		t.Fatalf("204: %v %+v", err, a)
	}
	before := conns.Load()
	if a, err := w.Do(ctx, "GET", "/close", "", nil); err != nil || string(a.Body) != "bye" {
		t.Fatalf("Connection: close answer: %v %q", err, a.Body)
	}
	if w.conn != nil {
		t.Fatal("the connection the server closed is kept")
	}
	if a, err := w.Do(ctx, "POST", "/echo", "tok", []byte(`{}`)); err != nil || string(a.Body) != `{}` {
		t.Fatalf("after close: %v %q", err, a.Body)
	}
	if conns.Load() != before+1 {
		t.Fatalf("after Connection: close, %d new connections, want 1", conns.Load()-before)
	}

	// Through the generator's client: a problem answer is its apperr code.
	c := &client{base: srv.URL, wire: true}
	ws := &workerStats{}
	defer ws.closeConn()
	err = c.timed(ctx, ws, "POST", "/problem", "", []byte(`{}`), nil)
	if apperr.CodeOf(err) != apperr.IdempotencyConflict {
		t.Fatalf("problem answer: %v, want idempotency_conflict", err)
	}
	var out map[string]int
	if err := c.timed(ctx, ws, "POST", "/echo", "tok", []byte(`{"a":1}`), &out); err != nil || out["a"] != 1 {
		t.Fatalf("decoded answer: %v %v", err, out)
	}
}

// TestWireConnRetriesOnlyAStaleConnection: a server that drops an idle
// keep-alive connection without a word costs no failed request (the
// request is sent once more on a new connection); a server that drops the
// connection in the middle of an answer is an error, not a second send.
func TestWireConnRetriesOnlyAStaleConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var got atomic.Int64 // requests the server read
	mode := make(chan string, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					got.Add(1)
					switch <-mode {
					case "ok-then-drop": // answer, then close without Connection: close
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
						return
					case "half": // part of an answer, then close
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok")
						return
					default:
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					}
				}
			}(c)
		}
	}()
	w, err := newWireConn("http://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx := context.Background()
	mode <- "ok-then-drop"
	if _, err := w.Do(ctx, "POST", "/s", "", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // the server has closed its end
	mode <- "ok"
	if a, err := w.Do(ctx, "POST", "/s", "", []byte(`{}`)); err != nil || string(a.Body) != "ok" {
		t.Fatalf("request on a dropped keep-alive connection: %v %q, want it sent again and answered", err, a.Body)
	}
	if got.Load() != 2 {
		t.Fatalf("server read %d requests, want 2", got.Load())
	}
	mode <- "half"
	if _, err := w.Do(ctx, "POST", "/s", "", []byte(`{}`)); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("answer cut short: %v, want unexpected EOF", err)
	}
	if got.Load() != 3 {
		t.Fatalf("server read %d requests, want 3 (an answer that had started is not sent again)", got.Load())
	}
}

// TestWireConnStopsWithItsContext: a request waiting for a slow answer
// ends when the run's context ends, not at the socket's 60 s deadline.
func TestWireConnStopsWithItsContext(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer srv.Close()
	defer close(release)
	w, err := newWireConn(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = w.Do(ctx, "GET", "/slow", "", nil)
	if err == nil {
		t.Fatal("a request cut off by its context succeeded")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("the request ended %v after its context", d)
	}
	if _, err := newWireConn("https://127.0.0.1:1"); !errors.Is(err, errWireScheme) {
		t.Fatalf("https base: %v, want errWireScheme", err)
	}
}

// FuzzReadAnswer: any bytes from the other end give an answer or an error,
// never a panic or an unbounded allocation.
func FuzzReadAnswer(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
		"HTTP/1.0 503 Service Unavailable\r\n\r\nbusy",
		"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffff\r\n",
		"garbage\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		a, _, _, err := readAnswer(bufio.NewReader(strings.NewReader(string(b))))
		if err == nil && (a.Status < 100 || a.Status > 999 || len(a.Body) > len(b)) {
			t.Fatalf("answer %d with %d body bytes from %d input bytes", a.Status, len(a.Body), len(b))
		}
	})
}
