package caddymodule

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"golang.org/x/sync/semaphore"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// tlsServer serves g over TLS 1.3 on loopback, as Caddy would: a real
// connection, so read deadlines apply.
func tlsServer(t *testing.T, g *Gateway) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caddyhttp.NewTestReplacer(r)
		g.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })) //nolint:errcheck
	}))
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// stallOpen sends the head of a POST announcing size bytes and only part
// of the body, and returns the connection, for the answer.
func stallOpen(t *testing.T, srv *httptest.Server, path string, size, send int) net.Conn {
	t.Helper()
	conn, err := tls.Dial("tcp", srv.Listener.Addr().String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	// Only against a hang: the answers come after a deadline under a second.
	if err := conn.SetDeadline(time.Now().Add(60 * time.Second)); err != nil {
		conn.Close()
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%s",
		path, size, strings.Repeat("\x00", send))
	return conn
}

// stall sends the head of a POST announcing size bytes and only part of
// the body, then waits for the answer, which it returns with its DSError
// code.
func stall(t *testing.T, srv *httptest.Server, path string, size, send int) (int, moh.Code, time.Duration) {
	t.Helper()
	start := time.Now()
	conn := stallOpen(t, srv, path, size, send)
	defer conn.Close()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var r moh.DSResponse
	if err := wire.Unmarshal(body, &r, "DSResponse"); err != nil {
		t.Fatalf("answer %d is not a DSResponse: %v", resp.StatusCode, err)
	}
	return resp.StatusCode, r.Error.Code, time.Since(start)
}

// TestStalledBodies checks the two bounds on bodies in flight: a body that
// stops arriving is answered body_timeout when its deadline passes, and
// bodies held at once never exceed the budget: a request that cannot get
// its share before its deadline is answered backend_unavailable.
func TestStalledBodies(t *testing.T) {
	oldTimeout, oldBudget := bodyTimeout, bodies
	t.Cleanup(func() { bodyTimeout, bodies = oldTimeout, oldBudget })
	bodyTimeout = 300 * time.Millisecond
	g := provisioned(t, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com"})
	srv := tlsServer(t, g)

	t.Run("deadline", func(t *testing.T) {
		status, code, took := stall(t, srv, "/group_operation", 1000, 10)
		// The rest of the body never comes: only the deadline answers
		// 408 body_timeout, however long a loaded machine took.
		if status != http.StatusRequestTimeout || code != moh.CodeBodyTimeout || took < bodyTimeout/2 {
			t.Fatalf("stalled body answered %d %s after %s, want 408 body_timeout after the deadline", status, code, took)
		}
	})

	t.Run("deadline over HTTP/2", func(t *testing.T) {
		// The stream's deadline, not the connection's: set only when the
		// body is late, it wakes the handler's blocked Read.
		h2 := httptest.NewUnstartedServer(srv.Config.Handler)
		h2.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
		h2.EnableHTTP2 = true
		h2.StartTLS()
		t.Cleanup(h2.Close)
		pr, pw := io.Pipe()
		t.Cleanup(func() { pw.Close() })
		go pw.Write(make([]byte, 10)) //nolint:errcheck // the rest never comes
		req, err := http.NewRequest(http.MethodPost, h2.URL+"/group_operation", pr)
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = 1000
		req.Header.Set("Content-Type", "application/octet-stream")
		start := time.Now()
		resp, err := h2.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var r moh.DSResponse
		if err := wire.Unmarshal(body, &r, "DSResponse"); err != nil {
			t.Fatalf("answer %d is not a DSResponse: %v", resp.StatusCode, err)
		}
		if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusRequestTimeout || r.Error.Code != moh.CodeBodyTimeout {
			t.Fatalf("stalled HTTP/%d body answered %d %s, want HTTP/2 408 body_timeout", resp.ProtoMajor, resp.StatusCode, r.Error.Code)
		}
		if took := time.Since(start); took < bodyTimeout/2 {
			t.Fatalf("stalled body answered after %s, before its deadline %s", took, bodyTimeout)
		}
	})

	t.Run("budget", func(t *testing.T) {
		// Other requests hold the whole budget: a request must wait for
		// its share and is refused when its deadline passes, then served
		// once memory is free again.
		bodies = semaphore.NewWeighted(2000)
		if err := bodies.Acquire(context.Background(), 2000); err != nil {
			t.Fatal(err)
		}
		status, code, took := stall(t, srv, "/deliver_message", 10, 10)
		if status != http.StatusServiceUnavailable || code != moh.CodeBackendUnavailable || took < bodyTimeout/2 {
			t.Fatalf("with no memory free: %d %s after %s, want 503 backend_unavailable after the deadline", status, code, took)
		}
		bodies.Release(2000)
		// A complete body is read within any deadline a loaded machine
		// lets pass; only the stalled ones below need the short one.
		bodyTimeout = time.Minute
		if _, code, _ := stall(t, srv, "/deliver_message", 10, 10); code != moh.CodeUnsupportedVersion {
			t.Fatalf("with memory free: %s, want the body read and refused (ten zero bytes: unsupported_version)", code)
		}
		bodyTimeout = 300 * time.Millisecond
		// Stalled bodies return their share when they end.
		var wg sync.WaitGroup
		for i := 0; i < 2; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				stall(t, srv, "/deliver_message", 1000, 10)
			}()
		}
		wg.Wait()
		if !bodies.TryAcquire(2000) {
			t.Fatal("the budget was not returned after the requests ended")
		}
	})

	t.Run("budget held as bytes arrive", func(t *testing.T) {
		// A body that announces 1,000,000 bytes and stalls after 10
		// holds its first chunk, not what it announced: a complete body
		// of 100,000 bytes still finds its share of a budget of
		// 1,050,000 bytes.
		const budget = 1_050_000
		bodies = semaphore.NewWeighted(budget)
		// The stalled request holds its share until its client goes
		// away (below), not until a deadline a loaded machine could let
		// pass before the share is seen.
		bodyTimeout = time.Minute
		defer func() { bodyTimeout = 300 * time.Millisecond }()
		conn := stallOpen(t, srv, "/group_operation", 1_000_000, 10)
		defer conn.Close()
		deadline := time.Now().Add(30 * time.Second)
		for bodies.TryAcquire(budget - bodyChunk + 1) {
			// The stalled request has not taken its share yet.
			bodies.Release(budget - bodyChunk + 1)
			if time.Now().After(deadline) {
				t.Fatal("the stalled request took nothing from the budget within 30 s")
			}
			time.Sleep(time.Millisecond)
		}
		if !bodies.TryAcquire(budget - bodyChunk) {
			t.Fatal("the stalled request holds more of the budget than its first chunk")
		}
		bodies.Release(budget - bodyChunk)
		if status, code, _ := stall(t, srv, "/group_operation", 100_000, 100_000); status == http.StatusServiceUnavailable {
			t.Fatalf("a complete body beside a stalled one: %d %s, want it read (the budget held for the stalled body is its first chunk)", status, code)
		}
		conn.Close()
		for !bodies.TryAcquire(budget) {
			if time.Now().After(deadline) {
				t.Fatal("the stalled request kept its share after its client went away")
			}
			time.Sleep(time.Millisecond)
		}
		bodies.Release(budget)
	})
}

// TestBodyDeadlineDoesNotOutliveRequest checks that the read deadline of a
// body read whole is not left on an HTTP/1 keep-alive connection: the next
// request on it, later than the deadline, is served.
func TestBodyDeadlineDoesNotOutliveRequest(t *testing.T) {
	oldTimeout := bodyTimeout
	t.Cleanup(func() { bodyTimeout = oldTimeout })
	// Long enough for a complete 4-byte body to be read on a loaded
	// machine; the second request comes three deadlines later.
	bodyTimeout = time.Second
	g := provisioned(t, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com"})
	srv := tlsServer(t, g)
	conn, err := tls.Dial("tcp", srv.Listener.Addr().String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	for i := 0; i < 2; i++ {
		if i == 1 {
			time.Sleep(3 * bodyTimeout)
		}
		fmt.Fprintf(conn, "POST /deliver_message HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 4\r\n\r\n\x00\x01\x00\x00")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d on one connection: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("request %d: status %d, want 400 (a malformed ProviderRequest)", i, resp.StatusCode)
		}
	}
}
