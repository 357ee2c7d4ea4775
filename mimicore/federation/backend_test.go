package federation

import (
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
)

// docSection returns §11 of docs/protocol.md.
func docSection(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(doc)
	start := strings.Index(s, "## 11. Legacy backend delivery")
	if start < 0 {
		t.Fatal("docs/protocol.md has no §11 Legacy backend delivery")
	}
	s = s[start:]
	if end := strings.Index(s[3:], "\n## "); end >= 0 {
		s = s[:end+3]
	}
	return s
}

// TestBackendWorkedExample recomputes the worked example of
// docs/protocol.md §11.3 from the inputs it names: the body, the delivery
// id and the signature of the request, byte for byte.
func TestBackendWorkedExample(t *testing.T) {
	sec := docSection(t)
	block := regexp.MustCompile("(?s)```http\n(.*?)\n```").FindStringSubmatch(sec)
	if block == nil {
		t.Fatal("§11 has no example request")
	}
	head, body, ok := strings.Cut(block[1], "\n\n")
	if !ok {
		t.Fatal("the example request has no body")
	}
	headers := map[string]string{}
	for _, line := range strings.Split(head, "\n")[1:] {
		k, v, _ := strings.Cut(line, ": ")
		headers[k] = v
	}
	key := []byte("0123456789abcdef0123456789abcdef")
	if !strings.Contains(sec, "`"+string(key)+"`") {
		t.Fatalf("§11 does not name the key %q", key)
	}
	ts, err := strconv.ParseInt(headers[HeaderTimestamp], 10, 64)
	if err != nil || ts != 1790000060 {
		t.Fatalf("timestamp %q, want 1790000060", headers[HeaderTimestamp])
	}
	m := store.OutboxMessage{Sender: "b.example", Destination: store.BackendDestination, GroupID: []byte("g1"),
		Recipients: []string{"mimi://a.example/d/alice/phone", "mimi://a.example/d/alice/laptop"}, Message: []byte{0xde, 0xad, 0xbe, 0xef}}
	want, err := BackendBody(m)
	if err != nil {
		t.Fatal(err)
	}
	id := BackendDeliveryID(want)
	for _, tc := range []struct{ name, doc, code string }{
		{"body", body, string(want)},
		{"Content-Type", headers["Content-Type"], "application/json"},
		{HeaderDeliveryID, headers[HeaderDeliveryID], id},
		{HeaderSignature, headers[HeaderSignature], BackendSignature(key, ts, id, want)},
		{"signed bytes", regexp.MustCompile("(?s)bytes are these four lines.*?```\n(.*?)```").FindStringSubmatch(sec)[1],
			BackendSignatureLabel + "\n1790000060\n" + id + "\n" + string(want) + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.doc != tc.code {
				t.Fatalf("docs say\n%s\nthe code computes\n%s", tc.doc, tc.code)
			}
		})
	}
	// What a backend reads back is what was sent.
	var got BackendMessage
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if string(got.GroupID) != "g1" || got.Sender != m.Sender || !slices.Equal(got.Recipients, m.Recipients) || !bytes.Equal(got.Message, m.Message) {
		t.Fatalf("the documented body decodes to %+v", got)
	}
}

// TestBackendOutcome checks which answers of the backend end a message's
// delivery and which keep it for another attempt.
func TestBackendOutcome(t *testing.T) {
	for _, tc := range []struct {
		status      int
		done, retry bool
	}{
		{200, true, false}, {202, true, false}, {204, true, false},
		{301, false, true}, {400, false, false}, {401, false, true}, {403, false, true}, {404, false, false},
		{408, false, true}, {409, false, false}, {413, false, false}, {429, false, true},
		{500, false, true}, {502, false, true}, {503, false, true},
	} {
		t.Run(strconv.Itoa(tc.status), func(t *testing.T) {
			if done, retry := backendOutcome(tc.status); done != tc.done || retry != tc.retry {
				t.Fatalf("backendOutcome(%d) = %t, %t, want %t, %t", tc.status, done, retry, tc.done, tc.retry)
			}
		})
	}
}

// TestBackendCheck checks the refusal of unusable backends, whose error
// never shows the key.
func TestBackendCheck(t *testing.T) {
	key := []byte("a secret key of thirty-two bytes")
	for _, tc := range []struct {
		name string
		b    Backend
		ok   bool
	}{
		{"http", Backend{URL: "http://127.0.0.1:9000/mimi", Key: key}, true},
		{"https", Backend{URL: "https://backend.example/mimi", Key: key}, true},
		{"no scheme", Backend{URL: "backend.example/mimi", Key: key}, false},
		{"ftp", Backend{URL: "ftp://backend.example/", Key: key}, false},
		{"short key", Backend{URL: "http://127.0.0.1:9000/", Key: key[:31]}, false},
		{"user information", Backend{URL: "https://user:pass@backend.example/mimi", Key: key}, false},
		{"query", Backend{URL: "https://backend.example/mimi?token=secret", Key: key}, false},
		{"empty query", Backend{URL: "https://backend.example/mimi?", Key: key}, false},
		{"fragment", Backend{URL: "https://backend.example/mimi#x", Key: key}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.b.Check()
			if (err == nil) != tc.ok {
				t.Fatalf("Check() = %v, want ok %t", err, tc.ok)
			}
			if err != nil && (strings.Contains(err.Error(), string(key[:31])) || strings.Contains(err.Error(), tc.b.URL)) {
				t.Fatalf("the error shows the key or the URL: %v", err)
			}
		})
	}
}

// testBackend is a legacy backend on loopback: it checks each request's
// signature and timestamp, drops the deliveries it has seen, and keeps
// the messages in arrival order. answer, when set, picks a status for a
// request instead (before the checks; a refused request is not kept).
type testBackend struct {
	key    []byte
	mu     sync.Mutex
	seen   map[string]bool
	got    []BackendMessage
	posts  int
	answer func(n int) int // n counts the requests from 1
	// loseFirst makes the first message kept lose its answer: the
	// connection is cut as if the answer was lost on the way.
	loseFirst bool
	srv       *httptest.Server
}

func newTestBackend(t *testing.T, key []byte, answer func(n int) int) *testBackend {
	tb := &testBackend{key: key, seen: map[string]bool{}, answer: answer}
	tb.srv = httptest.NewServer(http.HandlerFunc(tb.serve))
	t.Cleanup(tb.srv.Close)
	return tb
}

func (tb *testBackend) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.posts++
	if tb.answer != nil {
		if s := tb.answer(tb.posts); s != 0 {
			w.WriteHeader(s)
			return
		}
	}
	id := r.Header.Get(HeaderDeliveryID)
	ts, err := strconv.ParseInt(r.Header.Get(HeaderTimestamp), 10, 64)
	want := BackendSignature(tb.key, ts, id, body)
	if err != nil || time.Since(time.Unix(ts, 0)).Abs() > 5*time.Minute || id != BackendDeliveryID(body) ||
		!hmac.Equal([]byte(r.Header.Get(HeaderSignature)), []byte(want)) {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if tb.seen[id] {
		w.WriteHeader(http.StatusOK) // a duplicate: answered, dropped
		return
	}
	var m BackendMessage
	if err := json.Unmarshal(body, &m); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	tb.seen[id] = true
	tb.got = append(tb.got, m)
	if tb.loseFirst {
		tb.loseFirst = false
		panic(http.ErrAbortHandler)
	}
	w.WriteHeader(http.StatusNoContent)
}

func (tb *testBackend) messages() []string {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	var out []string
	for _, m := range tb.got {
		out = append(out, string(m.Message))
	}
	return out
}

// backendSetup opens a real store in a temporary directory and writes
// msgs, for group "g", to the backend's outbox.
func backendSetup(t *testing.T, msgs ...string) store.Store {
	t.Helper()
	st, err := sqlitestore.Open(t.Context(), filepath.Join(t.TempDir(), "mimi.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	for _, m := range msgs {
		if _, err := st.OutboxAdd(t.Context(), store.OutboxWrite{Messages: []store.OutboxMessage{{Sender: "b.example",
			Destination: store.BackendDestination, GroupID: []byte("g"), Recipients: []string{"mimi://a.example/d/alice/phone"},
			Message: []byte(m)}}}); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// runSender runs s until the test ends.
func runSender(t *testing.T, s *Sender) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.Run(ctx); err != nil {
			t.Error(err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// waitFor polls cond for up to 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestBackendDownThenUp has the backend fail (no connection, then 503)
// while messages wait in the outbox, then come up: each message reaches
// it once, in order, and the outbox empties. The backend's first good
// answer is lost on the way back (it answers 200 for a message it kept,
// then the sender sends it again), which its duplicate drop absorbs.
// Each accepted message's latency is counted under the backend's
// destination, as a peer's is under its domain.
func TestBackendDownThenUp(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	var msgs []string
	for i := range 30 {
		msgs = append(msgs, fmt.Sprintf("message %02d", i))
	}
	st := backendSetup(t, msgs...)
	up := make(chan struct{})
	tb := newTestBackend(t, key, func(n int) int {
		select {
		case <-up:
			return 0
		default:
			return http.StatusServiceUnavailable
		}
	})
	tb.loseFirst = true
	s := &Sender{Outbox: st, Transport: noTransport{}, Logger: zaptest.NewLogger(t),
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, Batch: 7}
	// First no backend at all, then one that is not listening.
	runSender(t, s)
	waitFor(t, "a failure without a backend", func() bool { return s.Stats().Retried > 0 })
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	s.SetBackend(&Backend{URL: dead.URL, Key: key})
	waitFor(t, "a failed connection", func() bool { return s.Stats().Attempts > 0 && s.Stats().Retried > 1 })
	s.SetBackend(&Backend{URL: tb.srv.URL + "/mimi", Key: key})
	waitFor(t, "the backend's 503s", func() bool { tb.mu.Lock(); defer tb.mu.Unlock(); return tb.posts >= 3 })
	if st := s.Status(); len(st) != 1 || st[0].Destination != store.BackendDestination || st[0].Failures == 0 || st[0].LastError == "" {
		t.Fatalf("status while the backend is down: %+v", st)
	}
	close(up)
	waitFor(t, "every message", func() bool { return len(tb.messages()) >= len(msgs) })
	waitFor(t, "an empty outbox", func() bool {
		p, err := st.OutboxPending(t.Context(), store.BackendDestination, 0, 1)
		return err == nil && len(p) == 0
	})
	if got := tb.messages(); !slices.Equal(got, msgs) {
		t.Fatalf("the backend got %q, want each message once, in order", got)
	}
	if stats := s.Stats(); stats.Delivered != uint64(len(msgs)) || stats.Rejected != 0 {
		t.Fatalf("stats %+v, want %d delivered, none rejected", stats, len(msgs))
	}
	// Every message the backend accepted is in the fan-out latency
	// histogram, as the backend's: the wait while it was down included.
	lat := s.Stats().Latency
	if l := lat[store.BackendDestination]; len(lat) != 1 || l.Count != uint64(len(msgs)) || l.Sum <= 0 ||
		l.Cumulative[len(l.Cumulative)-1] != l.Count {
		t.Fatalf("fan-out latency %+v, want %d samples of %s alone", lat, len(msgs), store.BackendDestination)
	}
	if st := s.Status(); st[0].Failures != 0 || st[0].LastError != "" || st[0].LastSuccess.IsZero() {
		t.Fatalf("status after the backend came up: %+v", st)
	}
}

// TestBackendRejects checks that a 4xx answer (but 401, 403, 408 and 429) drops the
// message and counts it rejected, that 429 keeps it, and that the
// messages after it still go; and that no log line shows the key.
func TestBackendRejects(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	st := backendSetup(t, "one", "two", "three")
	core, logs := observer.New(zapcore.DebugLevel)
	tb := newTestBackend(t, key, func(n int) int {
		switch n {
		case 1:
			return http.StatusTooManyRequests // "one": later
		case 3:
			return http.StatusBadRequest // "two": refused for good
		}
		return 0
	})
	s := &Sender{Outbox: st, Transport: noTransport{}, Logger: zap.New(core),
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}
	s.SetBackend(&Backend{URL: tb.srv.URL, Key: key})
	runSender(t, s)
	waitFor(t, "an empty outbox", func() bool {
		p, err := st.OutboxPending(t.Context(), store.BackendDestination, 0, 1)
		return err == nil && len(p) == 0
	})
	if got := tb.messages(); !slices.Equal(got, []string{"one", "three"}) {
		t.Fatalf("the backend kept %q, want one and three", got)
	}
	if stats := s.Stats(); stats.Rejected != 1 || stats.Delivered != 2 || stats.Retried != 1 || stats.Attempts != 4 {
		t.Fatalf("stats %+v, want 4 attempts, 1 retried, 1 rejected, 2 delivered", stats)
	}
	if logs.FilterMessageSnippet("refused a message; dropped").Len() != 1 {
		t.Fatalf("logs %v, want the dropped message logged once", logs.All())
	}
	for _, e := range logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		if strings.Contains(line, string(key)) || strings.Contains(line, string(key[:16])) {
			t.Fatalf("a log line shows the key: %s", line)
		}
	}
}

// TestBackendKeyRotation has the gateway sign with a key the backend does
// not hold yet (a key rotation done on one side first): the backend
// answers 401, and the messages wait, logged as an authentication
// failure, until the backend takes the key; then each arrives once, in
// order, and none is counted rejected.
func TestBackendKeyRotation(t *testing.T) {
	oldKey := []byte("0123456789abcdef0123456789abcdef")
	newKey := []byte("fedcba9876543210fedcba9876543210")
	st := backendSetup(t, "one", "two")
	core, logs := observer.New(zapcore.DebugLevel)
	tb := newTestBackend(t, oldKey, nil)
	s := &Sender{Outbox: st, Transport: noTransport{}, Logger: zap.New(core),
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}
	s.SetBackend(&Backend{URL: tb.srv.URL, Key: newKey})
	runSender(t, s)
	waitFor(t, "the backend's 401s", func() bool { tb.mu.Lock(); defer tb.mu.Unlock(); return tb.posts >= 3 })
	if n := logs.FilterMessageSnippet("authentication failure").Len(); n == 0 {
		t.Fatalf("logs %v, want the 401 logged as an authentication failure", logs.All())
	}
	tb.mu.Lock()
	tb.key = newKey // the backend takes the new key
	tb.mu.Unlock()
	waitFor(t, "an empty outbox", func() bool {
		p, err := st.OutboxPending(t.Context(), store.BackendDestination, 0, 1)
		return err == nil && len(p) == 0
	})
	if got := tb.messages(); !slices.Equal(got, []string{"one", "two"}) {
		t.Fatalf("the backend got %q, want one and two, in order", got)
	}
	if stats := s.Stats(); stats.Rejected != 0 || stats.Delivered != 2 {
		t.Fatalf("stats %+v, want 2 delivered, none rejected", stats)
	}
}

// noTransport fails every deliver_message: the tests' outboxes hold
// messages for the backend alone.
type noTransport struct{ Transport }
