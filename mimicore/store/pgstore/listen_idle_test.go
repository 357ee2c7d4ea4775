package pgstore

import (
	"context"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
)

// quickListenChecks makes the listeners that start during t ping their
// connection after idle, waiting pingTimeout for the answer.
func quickListenChecks(t *testing.T, idle, pingTimeout time.Duration) {
	saved, savedPing := listenIdle, listenPingTimeout
	listenIdle, listenPingTimeout = idle, pingTimeout
	t.Cleanup(func() { listenIdle, listenPingTimeout = saved, savedPing })
}

// TestListenerPingsWhenIdle has a listener wait longer than listenIdle
// without a notification: it pings its connection, keeps it, and the
// other Store's writes still wake its waiters.
func TestListenerPingsWhenIdle(t *testing.T) {
	quickListenChecks(t, 20*time.Millisecond, wakeTimeout)
	s1, s2 := openPair(t, 4)
	ctx := context.Background()
	pid := s1.listenPID()
	if pid == 0 {
		t.Fatal("store 1 has no listener connection after Open")
	}
	deadline := time.Now().Add(wakeTimeout)
	for {
		var query string
		if err := s2.pool.QueryRow(ctx, `SELECT query FROM pg_stat_activity WHERE pid = $1`, int32(pid)).Scan(&query); err != nil {
			t.Fatalf("reading the listener's session: %v", err)
		}
		if query == "-- ping" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the idle listener sent %q last, no ping", query)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if p := s1.listenPID(); p != pid {
		t.Fatalf("listener connection %d, was %d: a healthy connection was replaced", p, pid)
	}
	ready, _ := watch(t, s1, wakeAlice, 0)
	if _, err := s2.Append(ctx, delivery("after the pings", wakeAlice)); err != nil {
		t.Fatalf("Append: %v", err)
	}
	waitWoken(t, "waiter of the idle listener", ready)
	wantFetched(t, s1, wakeAlice, "after the pings")
}

// freezingProxy forwards TCP connections to a PostgreSQL server. Once
// frozen, the connections it carries forward nothing more and stay open,
// as a connection whose peer vanished (half-open) does, while the
// connections it accepts later are forwarded.
type freezingProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	frozen []*atomic.Bool
	conns  []net.Conn
}

// startFreezingProxy starts a proxy to the server of dsn and returns it
// with dsn through it. t's end closes it.
func startFreezingProxy(t *testing.T, dsn string) (*freezingProxy, string) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("parsing the DSN: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listening: %v", err)
	}
	p := &freezingProxy{ln: ln, target: u.Host}
	go p.serve()
	t.Cleanup(p.close)
	u.Host = ln.Addr().String()
	return p, u.String()
}

func (p *freezingProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		frozen := new(atomic.Bool)
		p.mu.Lock()
		p.frozen = append(p.frozen, frozen)
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go forward(up, c, frozen)
		go forward(c, up, frozen)
	}
}

// forward copies src to dst until either fails, dropping what it reads
// once frozen.
func forward(dst, src net.Conn, frozen *atomic.Bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !frozen.Load() {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF || !frozen.Load() {
				dst.Close()
			}
			return
		}
	}
}

// freeze freezes the connections the proxy carries now.
func (p *freezingProxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.frozen {
		f.Store(true)
	}
}

func (p *freezingProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}

// TestListenerHalfOpen freezes the listener's connection, as a connection
// whose peer vanished without a word: the listener's ping finds it out,
// it connects again and wakes the waiters it had, and a later write
// through another Store wakes a new waiter.
func TestListenerHalfOpen(t *testing.T) {
	quickListenChecks(t, 50*time.Millisecond, 500*time.Millisecond)
	dsn := pgtest.NewDB(t)
	proxy, proxied := startFreezingProxy(t, dsn)
	ctx := context.Background()
	s1, err := Open(ctx, proxied, Options{MaxConns: 2})
	if err != nil {
		t.Fatalf("Open through the proxy: %v", err)
	}
	t.Cleanup(func() { s1.Close() })
	s2, err := Open(ctx, dsn, Options{MaxConns: 2})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s2.Close() })
	pid := s1.listenPID()
	if pid == 0 {
		t.Fatal("store 1 has no listener connection after Open")
	}
	// The waiters do not fetch: store 1's pool is frozen too.
	before, stop := s1.WatchQueue(wakeBob, 0)
	t.Cleanup(stop)
	proxy.freeze()
	waitWoken(t, "waiter from before the freeze", before)
	deadline := time.Now().Add(wakeTimeout)
	for p := s1.listenPID(); p == 0 || p == pid; p = s1.listenPID() {
		if time.Now().After(deadline) {
			t.Fatalf("listener not connected again within %v", wakeTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ready, stop := s1.WatchQueue(wakeAlice, 0)
	t.Cleanup(stop)
	if _, err := s2.Append(ctx, delivery("after", wakeAlice)); err != nil {
		t.Fatalf("Append: %v", err)
	}
	waitWoken(t, "waiter after the reconnect", ready)
}
