// Package nodetest starts real city nodes for tests: in-process nodes
// listening on 127.0.0.1 and spoken to over real HTTP, or the real yikatong
// binary as a child process (for crash and multi-process tests).
package nodetest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/node"
)

// Node is an in-process node serving on a loopback port.
type Node struct {
	*node.Node
	URL  string
	Dir  string
	Demo *node.DemoFile

	cancel context.CancelFunc
	done   chan error
}

// Options for Start.
type Options struct {
	DB   string // "" = SQLite in Dir
	Dir  string // "" = t.TempDir()
	City string
	Demo bool
	// DemoResidents overrides the demo's resident count (0 = default).
	DemoResidents int
	Now           func() time.Time
	Logger        *slog.Logger
}

// Start opens a node and serves it on 127.0.0.1:0 until the test ends.
func Start(t testing.TB, o Options) *Node {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		if os.Getenv("YIKATONG_TEST_LOG") != "" {
			o.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
		}
	}
	ctx := context.Background()
	n, err := node.Open(ctx, node.Config{DataDir: o.Dir, DB: o.DB, City: o.City, Logger: o.Logger, Now: o.Now})
	if err != nil {
		t.Fatalf("opening node: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		n.Close()
		t.Fatal(err)
	}
	tn := &Node{Node: n, URL: "http://" + ln.Addr().String(), Dir: o.Dir, done: make(chan error, 1)}
	if o.Demo {
		path := filepath.Join(o.Dir, "demo.json")
		if o.DemoResidents > 0 {
			n.DemoResidents = o.DemoResidents
		}
		if err := n.EnsureDemo(ctx, tn.URL, path); err != nil {
			ln.Close()
			n.Close()
			t.Fatalf("demo: %v", err)
		}
		d, err := node.ReadDemoFile(path)
		if err != nil {
			t.Fatal(err)
		}
		tn.Demo = d
	}
	sctx, cancel := context.WithCancel(ctx)
	tn.cancel = cancel
	go func() { tn.done <- n.Serve(sctx, ln) }()
	t.Cleanup(tn.Stop)
	return tn
}

// Stop shuts the node down (idempotent).
func (tn *Node) Stop() {
	if tn.cancel == nil {
		return
	}
	tn.cancel()
	<-tn.done
	tn.cancel = nil
	tn.Node.Close()
}

// Client speaks JSON to a node.
type Client struct {
	Base  string
	Token string
	HTTP  *http.Client
}

// Client returns a client for the node with the given bearer token.
func (tn *Node) Client(token string) *Client { return NewClient(tn.URL, token) }

// NewClient returns a client for base with token.
func NewClient(base, token string) *Client {
	return &Client{Base: base, Token: token, HTTP: &http.Client{Timeout: 30 * time.Second}}
}

// Response is an HTTP answer.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Problem decodes a problem+json body.
func (r Response) Problem() map[string]any {
	var m map[string]any
	json.Unmarshal(r.Body, &m)
	return m
}

// Code returns the problem code, or "".
func (r Response) Code() string {
	c, _ := r.Problem()["code"].(string)
	return c
}

// Decode decodes the body into v.
func (r Response) Decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("decoding %s: %v", r.Body, err)
	}
}

// Do sends a request; body may be nil, []byte/string (sent as is) or a value (JSON).
func (c *Client) Do(t testing.TB, method, path string, body any) Response {
	t.Helper()
	r, err := c.Try(method, path, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

// Try is Do without failing the test on transport errors.
func (c *Client) Try(method, path string, body any) (Response, error) {
	var rd io.Reader
	ct := "application/json"
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		buf, err := json.Marshal(b)
		if err != nil {
			return Response{}, err
		}
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequest(method, c.Base+path, rd)
	if err != nil {
		return Response{}, err
	}
	if rd != nil {
		req.Header.Set("Content-Type", ct)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return Response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: b}, err
}

// JSON sends a request, requires status want, and decodes the answer into out (if not nil).
func (c *Client) JSON(t testing.TB, method, path string, body any, want int, out any) Response {
	t.Helper()
	r := c.Do(t, method, path, body)
	if r.Status != want {
		t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.Status, want, r.Body)
	}
	if out != nil {
		r.Decode(t, out)
	}
	return r
}

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Binary builds cmd/yikatong once per test binary and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "yikatong-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "yikatong")
		root := moduleRoot()
		cmd := exec.Command("go", "build", "-o", buildPath, "./cmd/yikatong")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..", ".."))
}

// FreeAddr returns a free 127.0.0.1:port.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Process is a yikatong serve child process.
type Process struct {
	Cmd    *exec.Cmd
	URL    string
	Stderr *bytes.Buffer
	mu     sync.Mutex
}

// StartProcess runs `yikatong serve` with args plus --addr, and waits until
// /healthz answers 200 (up to 30 s).
func StartProcess(t testing.TB, dataDir string, extra ...string) *Process {
	t.Helper()
	addr := FreeAddr(t)
	args := append([]string{"serve", "--addr", addr, "--data", dataDir, "--log-level", "warn"}, extra...)
	cmd := exec.Command(Binary(t), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &lockedWriter{w: &stderr}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Process{Cmd: cmd, URL: "http://" + addr, Stderr: &stderr}
	t.Cleanup(func() { p.Kill() })
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(p.URL + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if cmd.ProcessState != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.Kill()
	t.Fatalf("node did not become healthy: %s", stderr.String())
	return nil
}

// Kill sends SIGKILL and waits.
func (p *Process) Kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.Cmd.Process != nil && p.Cmd.ProcessState == nil {
		p.Cmd.Process.Kill()
		p.Cmd.Wait()
	}
}

// Terminate sends SIGTERM and waits for a clean exit, returning its error.
func (p *Process) Terminate() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.Cmd.ProcessState != nil {
		return nil
	}
	p.Cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- p.Cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		p.Cmd.Process.Kill()
		return fmt.Errorf("did not stop within 20 s of SIGINT")
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}
