package forward_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/forward"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/forward/forwardtest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/storagetest"
)

var ctx = context.Background()

var key = []byte("0123456789abcdef0123456789abcdef")

// startLegacy runs a legacy backend over plain HTTP/1.1, or over TLS with
// HTTP/2, and returns a Store of it.
func startLegacy(t *testing.T, overTLS bool) (*forward.Store, *forwardtest.Backend) {
	t.Helper()
	b := &forwardtest.Backend{Dir: t.TempDir(), Key: key}
	srv := httptest.NewUnstartedServer(b)
	if overTLS {
		srv.EnableHTTP2 = true
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	tr := srv.Client().Transport.(*http.Transport).Clone()
	tr.ExpectContinueTimeout = 5 * time.Second
	if overTLS {
		tr.ForceAttemptHTTP2 = true
	}
	s, err := forward.New(forward.Config{BaseURL: srv.URL + "/att/", Key: key, Transport: tr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); tr.CloseIdleConnections() })
	return s, b
}

// TestContract runs the storage contract against the legacy backend above,
// over HTTP/1.1 and over TLS with HTTP/2.
func TestContract(t *testing.T) {
	for _, tc := range []struct {
		name string
		tls  bool
	}{{"http1", false}, {"h2", true}} {
		t.Run(tc.name, func(t *testing.T) {
			storagetest.Run(t, func(t *testing.T) storage.Backend {
				s, _ := startLegacy(t, tc.tls)
				return s
			})
		})
	}
}

// TestNoTemporaryData checks what the legacy backend holds after uploads
// that end in every way: only committed objects, and no temporary file
// once the connections are gone (which is why Sweep has nothing to do).
func TestNoTemporaryData(t *testing.T) {
	s, b := startLegacy(t, false)
	committed := storagetest.Name(t)
	for i, end := range []func(storage.Writer) error{
		func(w storage.Writer) error { return w.Commit(ctx) },
		func(w storage.Writer) error { return w.Abort() },
		func(w storage.Writer) error { w.Write([]byte("x")); return w.Abort() },
	} {
		name := storagetest.Name(t)
		if i == 0 {
			name = committed
		}
		w, err := s.Create(ctx, name, 1001)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			w.Write([]byte{1})
		}
		if err := end(w); err != nil && i != 2 {
			t.Fatal(err)
		}
	}
	if n, err := s.Sweep(ctx, time.Now().Add(time.Hour)); n != 0 || err != nil {
		t.Fatalf("Sweep = %d, %v; want 0, nil", n, err)
	}
	// The backend notices a cut-off body when its connection fails.
	deadline := time.Now().Add(30 * time.Second)
	for {
		entries, err := os.ReadDir(b.Dir)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if len(names) == 1 && names[0] == committed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the legacy backend holds %q, want only %s", names, committed)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestWrongKey checks that a backend with another key refuses every
// request and that the error says why without quoting the key.
func TestWrongKey(t *testing.T) {
	_, b := startLegacy(t, false)
	srv := httptest.NewServer(b)
	defer srv.Close()
	other := []byte(strings.Repeat("z", 32))
	s, err := forward.New(forward.Config{BaseURL: srv.URL + "/att/", Key: other})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	name := storagetest.Name(t)
	_, createErr := s.Create(ctx, name, 10)
	_, openErr := s.Open(ctx, name)
	delErr := s.Delete(ctx, name)
	for op, err := range map[string]error{"Create": createErr, "Open": openErr, "Delete": delErr} {
		if err == nil || !strings.Contains(err.Error(), "refused the signature") || strings.Contains(err.Error(), string(other)) {
			t.Errorf("%s: %v, want a refused signature", op, err)
		}
	}
}

// TestVerify checks the backend side of the signature.
func TestVerify(t *testing.T) {
	name := storagetest.Name(t)
	now := time.Unix(1767225600, 0)
	type sig struct {
		ts, value string
	}
	sign := func(method, n string, length, unix int64, k []byte) sig {
		return sig{strconv.FormatInt(unix, 10), forward.Signature(k, unix, method, n, length)}
	}
	good := sign(http.MethodPut, name, 100, now.Unix(), key)
	for _, tc := range []struct {
		name   string
		method string
		sig    sig
		length int64
		want   error
	}{
		{"good", http.MethodPut, good, 100, nil},
		{"skew within limit", http.MethodPut, sign(http.MethodPut, name, 100, now.Unix()-299, key), 100, nil},
		{"other method", http.MethodDelete, good, 100, forward.ErrUnauthorized},
		{"other length", http.MethodPut, good, 101, forward.ErrUnauthorized},
		{"other name", http.MethodPut, sign(http.MethodPut, storagetest.Name(t), 100, now.Unix(), key), 100, forward.ErrUnauthorized},
		{"other key", http.MethodPut, sign(http.MethodPut, name, 100, now.Unix(), []byte(strings.Repeat("y", 32))), 100, forward.ErrUnauthorized},
		{"other timestamp", http.MethodPut, sig{strconv.FormatInt(now.Unix()+1, 10), good.value}, 100, forward.ErrUnauthorized},
		{"timestamp with a plus", http.MethodPut, sig{"+" + good.ts, good.value}, 100, forward.ErrUnauthorized},
		{"old", http.MethodPut, sign(http.MethodPut, name, 100, now.Unix()-301, key), 100, forward.ErrStale},
		{"future", http.MethodPut, sign(http.MethodPut, name, 100, now.Unix()+301, key), 100, forward.ErrStale},
		{"missing", http.MethodPut, sig{}, 100, forward.ErrUnauthorized},
		{"no timestamp", http.MethodPut, sig{"", good.value}, 100, forward.ErrUnauthorized},
		{"short signature", http.MethodPut, sig{good.ts, good.value[:len(good.value)-2]}, 100, forward.ErrUnauthorized},
		{"uppercase hex", http.MethodPut, sig{good.ts, "v1=" + strings.ToUpper(good.value[3:])}, 100, forward.ErrUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, "/att/"+name, nil)
			if tc.sig.ts != "" {
				r.Header.Set(forward.HeaderTimestamp, tc.sig.ts)
			}
			if tc.sig.value != "" {
				r.Header.Set(forward.HeaderSignature, tc.sig.value)
			}
			if err := forward.Verify(r, key, name, tc.length, now); !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestSignatureExample pins the worked example of docs/protocol.md §6.2.
func TestSignatureExample(t *testing.T) {
	doc, err := os.ReadFile("../../../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	const name = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	sig := forward.Signature([]byte("0123456789abcdef0123456789abcdef"), 1790000060, http.MethodPut, name, 1048576)
	want := "Mimi-Timestamp: 1790000060\nMimi-Signature: " + sig + "\n"
	if !strings.Contains(string(doc), want) {
		t.Fatalf("docs/protocol.md lacks the worked example's headers\n%s", want)
	}
}

// TestNew checks the configuration New refuses.
func TestNew(t *testing.T) {
	for _, tc := range []struct {
		name, url string
		key       []byte
		want      string
	}{
		{"no slash", "https://legacy.example/att", key, "ending in '/'"},
		{"query", "https://legacy.example/att/?x=1", key, "query"},
		{"user", "https://u:p@legacy.example/att/", key, "user"},
		{"scheme", "ftp://legacy.example/att/", key, "http(s)"},
		{"no host", "https:///att/", key, "http(s)"},
		{"short key", "https://legacy.example/att/", key[:31], "at least 32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := forward.New(forward.Config{BaseURL: tc.url, Key: tc.key})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
	if _, err := forward.New(forward.Config{BaseURL: "https://legacy.example/att/", Key: key}); err != nil {
		t.Fatalf("good config refused: %v", err)
	}
}

// TestMisbehavingBackends checks the gateway's side against backends
// that break the protocol or fail: each is caught, and none leaves an
// upload half-done behind the gateway's back.
func TestMisbehavingBackends(t *testing.T) {
	name := storagetest.Name(t)
	data := []byte(strings.Repeat("c", 5000))
	for _, tc := range []struct {
		name    string
		handler func(deletes *atomic.Int32) http.HandlerFunc
		run     func(t *testing.T, s *forward.Store) error
		want    string
		deletes int32
	}{
		{
			name: "2xx before the body",
			handler: func(*atomic.Int32) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusCreated) }
			},
			run: func(t *testing.T, s *forward.Store) error {
				_, err := s.Create(ctx, name, int64(len(data)))
				return err
			},
			want: "before the body",
		},
		{
			name: "500 after the body",
			handler: func(deletes *atomic.Int32) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodDelete {
						deletes.Add(1)
						w.WriteHeader(http.StatusNoContent)
						return
					}
					io.Copy(io.Discard, r.Body)
					w.WriteHeader(http.StatusInternalServerError)
				}
			},
			run: func(t *testing.T, s *forward.Store) error {
				w, err := s.Create(ctx, name, int64(len(data)))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := w.Write(data); err != nil {
					t.Fatal(err)
				}
				err = w.Commit(ctx)
				// Whatever the backend kept of a complete body goes.
				if aerr := w.Abort(); aerr != nil {
					t.Fatal(aerr)
				}
				return err
			},
			want:    "500",
			deletes: 1,
		},
		{
			name: "refusal in the middle of the body",
			handler: func(*atomic.Int32) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					io.CopyN(io.Discard, r.Body, 1000)
					w.WriteHeader(http.StatusInsufficientStorage)
				}
			},
			run: func(t *testing.T, s *forward.Store) error {
				w, err := s.Create(ctx, name, 1<<30)
				if err != nil {
					t.Fatal(err)
				}
				defer w.Abort()
				chunk := make([]byte, 64<<10)
				for range 1 << 14 {
					if _, err := w.Write(chunk); err != nil {
						return err
					}
				}
				return w.Commit(ctx)
			},
			// The backend answers 507 and closes the connection while
			// the body is still being sent: whether the client reads
			// the answer before its write meets the closed connection
			// is a race of the network, so either failure is right.
			// What matters is that the upload fails and is not sent on.
			want: "forward PUT",
		},
		{
			name: "redirect",
			handler: func(*atomic.Int32) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					http.Redirect(w, r, "http://elsewhere.invalid/", http.StatusTemporaryRedirect)
				}
			},
			run: func(t *testing.T, s *forward.Store) error {
				_, err := s.Open(ctx, name)
				return err
			},
			want: "307",
		},
		{
			name: "Range ignored",
			handler: func(*atomic.Int32) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Length", strconv.Itoa(len(data)))
					if r.Method == http.MethodGet {
						w.Write(data)
					}
				}
			},
			run: func(t *testing.T, s *forward.Store) error {
				o, err := s.Open(ctx, name)
				if err != nil {
					t.Fatal(err)
				}
				defer o.Close()
				_, err = o.ReadAt(make([]byte, 10), 100)
				return err
			},
			want: "ignored the Range",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var deletes atomic.Int32
			srv := httptest.NewServer(tc.handler(&deletes))
			defer srv.Close()
			tr := http.DefaultTransport.(*http.Transport).Clone()
			defer tr.CloseIdleConnections()
			s, err := forward.New(forward.Config{BaseURL: srv.URL + "/", Key: key, Transport: tr, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			err = tc.run(t, s)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
			if got := deletes.Load(); got != tc.deletes {
				t.Fatalf("%d DELETEs, want %d", got, tc.deletes)
			}
		})
	}
}

// TestForwardEarly201: a legacy backend (not Go's net/http) that answers
// 201 right after a PUT's headers, keeping the connection alive and never
// storing the body: Go's transport then sends the body anyway, so the
// answer may arrive after the last byte went out. Commit must not count
// that 201 (it used to, in some of the rounds).
func TestForwardEarly201(t *testing.T) {
	for _, answer := range []string{
		"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
	} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					br := bufio.NewReader(c)
					for {
						req, err := http.ReadRequest(br)
						if err != nil {
							return
						}
						c.Write([]byte(answer))
						// keep-alive: discard the body the client sends anyway
						if _, err := io.CopyN(io.Discard, br, req.ContentLength); err != nil {
							return
						}
					}
				}()
			}
		}()
		s, err := forward.New(forward.Config{BaseURL: "http://" + l.Addr().String() + "/att/", Key: key, Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		committed := 0
		for range 200 {
			w, err := s.Create(ctx, storagetest.Name(t), 2)
			if err != nil {
				continue
			}
			if _, err := w.Write([]byte("xy")); err == nil {
				if err := w.Commit(ctx); err == nil {
					committed++
					continue
				}
			}
			w.Abort()
		}
		s.Close()
		if committed > 0 {
			t.Errorf("answer %q: Commit succeeded %d times of 200 although the backend answered 201 before reading the body", answer, committed)
		}
	}
}

// TestCommitStalledBackend: a legacy backend over HTTP/2 that takes the
// PUT's body (100 Continue), reads one byte and then stops reading. The
// gateway's writes fill the stream's flow-control window, and the
// transport holds the last part of the body, waiting for a window that
// never opens: Commit's write of the held-back last byte waited for the
// transport for ever, whatever its ctx (the upload deadline) said. It
// must return once ctx ends, as a failure that is certain (the backend
// never had the last byte).
func TestCommitStalledBackend(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		var one [1]byte
		io.ReadFull(r.Body, one[:])
		<-release
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	defer close(release)
	tr := srv.Client().Transport.(*http.Transport).Clone()
	tr.ForceAttemptHTTP2 = true
	defer tr.CloseIdleConnections()
	s, err := forward.New(forward.Config{BaseURL: srv.URL + "/att/", Key: key, Transport: tr, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// The server's stream and connection windows are 1 MiB, and one byte
	// read does not reopen them: the first Write fills them; the
	// transport takes the second (but its last byte, held back for
	// Commit) and cannot send it.
	const window, rest = 1 << 20, 4 << 10
	w, err := s.Create(ctx, storagetest.Name(t), window+rest)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	for _, n := range []int{window, rest} {
		if _, err := w.Write(make([]byte, n)); err != nil {
			t.Fatal(err)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Commit(cctx) }()
	cancel()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, storage.ErrUncertain) {
			t.Fatalf("Commit = %v, want a certain failure", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Commit did not return after its ctx ended")
	}
}

// TestEmptyPutHeaders: the PUT of an empty object carries Content-Type
// like any other and no Expect: 100-continue (docs §6.2), after the HEAD
// of Create.
func TestEmptyPutHeaders(t *testing.T) {
	b := &forwardtest.Backend{Dir: t.TempDir(), Key: key}
	var mu sync.Mutex
	var methods []string
	var put http.Header
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		methods = append(methods, r.Method)
		if r.Method == http.MethodPut {
			put = r.Header.Clone()
		}
		mu.Unlock()
		b.ServeHTTP(w, r)
	}))
	defer srv.Close()
	s, err := forward.New(forward.Config{BaseURL: srv.URL + "/att/", Key: key})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	w, err := s.Create(ctx, storagetest.Name(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(methods, " ") != "HEAD PUT" {
		t.Errorf("requests %v, want HEAD PUT", methods)
	}
	if ct := put.Get("Content-Type"); ct != "application/octet-stream" {
		t.Errorf("empty PUT Content-Type %q", ct)
	}
	if e := put.Get("Expect"); e != "" {
		t.Errorf("empty PUT Expect %q, want none", e)
	}
}
