package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// TestRegionUp runs `yikatong region up` for two cities as a real process:
// region.json is written, the nodes trust each other, and SIGTERM stops
// them all.
func TestRegionUp(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three processes")
	}
	bin := nodetest.Binary(t)
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+1))
	if err != nil {
		t.Skip("no two consecutive free ports")
	}
	l2.Close()
	cmd := exec.Command(bin, "region", "up", "--cities", "CN-310000,CN-330100", "--data", dir, "--base-port", strconv.Itoa(port), "--refresh", "200ms")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var rf RegionFile
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "region.json"))
		if err == nil && json.Unmarshal(b, &rf) == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no region.json: %s", out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(rf.Nodes) != 2 || rf.Anchor.Kid == "" || rf.Nodes[0].Demo == "" {
		t.Fatalf("region.json: %+v", rf)
	}
	for _, n := range rf.Nodes {
		if _, err := os.Stat(n.Demo); err != nil {
			t.Fatalf("demo file of %s: %v", n.City, err)
		}
		var st federation.Status
		deadline := time.Now().Add(20 * time.Second)
		for {
			nodetest.NewClient(n.BaseURL, "").JSON(t, "GET", "/v1/federation/status", nil, 200, &st)
			if len(st.Peers) == 1 && st.Peers[0].Trusted {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s does not trust its peer: %+v", n.City, st)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("region up exit: %v\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("region up did not stop")
	}
	for _, n := range rf.Nodes {
		if c, err := net.DialTimeout("tcp", n.BaseURL[len("http://"):], time.Second); err == nil {
			c.Close()
			t.Fatalf("%s still serving after region up stopped", n.City)
		}
	}
}
