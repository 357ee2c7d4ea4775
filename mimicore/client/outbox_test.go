package client

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// sendGateway answers alice's /group_operation requests with answers in
// turn (200 ok once they run out) and records what each carried.
type sendGateway struct {
	mu       sync.Mutex
	answers  []func(w http.ResponseWriter)
	requests []*moh.DSRequest
	bodies   [][]byte
	// kept is the request alice's kept message held when each request
	// arrived (nil: none).
	kept [][]byte
}

func (g *sendGateway) register(t *testing.T, mux *http.ServeMux, path string) {
	mux.HandleFunc("/group_operation", func(w http.ResponseWriter, r *http.Request) {
		body := readBody(t, r)
		var req moh.DSRequest
		if err := wire.Unmarshal(body, &req, "DSRequest"); err != nil {
			t.Error(err)
		}
		var onDisk []byte
		if data, err := os.ReadFile(path); err == nil {
			var k keptMessage
			if err := wire.Unmarshal(data, &k, "kept message"); err != nil {
				t.Error(err)
			}
			onDisk = k.request
		}
		g.mu.Lock()
		g.requests, g.bodies, g.kept = append(g.requests, &req), append(g.bodies, body), append(g.kept, onDisk)
		var answer func(w http.ResponseWriter)
		if len(g.answers) > 0 {
			answer, g.answers = g.answers[0], g.answers[1:]
		}
		g.mu.Unlock()
		if answer != nil {
			answer(w)
			return
		}
		writeOK(w, &moh.DSResponse{Type: moh.ResponseOK})
	})
}

// readBody reads r's body.
func readBody(t *testing.T, r *http.Request) []byte {
	var b bytes.Buffer
	if _, err := b.ReadFrom(r.Body); err != nil {
		t.Error(err)
	}
	return b.Bytes()
}

// keptFile is the path of c's kept message of group gid.
func keptFile(t *testing.T, c *Client, gid []byte) string {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	path, err := c.keptPath(gid)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

func gatewayTimeout(w http.ResponseWriter) { w.WriteHeader(http.StatusGatewayTimeout) }

// TestSendKeptUntilAnswered: alice's send_message whose answer is lost (a
// 504) is kept on disk, as sent, before it leaves, and resent byte for
// byte by her next Send, commit or reopened client before anything new;
// the kept message goes only on a definite answer.
func TestSendKeptUntilAnswered(t *testing.T) {
	for _, tc := range []struct {
		name string
		// answers answer alice's requests in turn, the first her send of
		// "hello"; then is what she does next: "same" sends "hello"
		// again, "other" sends "other", "update" commits.
		answers []func(w http.ResponseWriter)
		then    string
		err     error // what then returns (nil: success)
		// sent is what the gateway got: "hello" her first request,
		// "again" the same bytes, "resigned" the same MLS message
		// signed anew, "other" a new message, "update" a commit
		sent []string
		kept bool // whether alice still keeps a message at the end
	}{
		{"retry of the same text", []func(http.ResponseWriter){gatewayTimeout}, "same", nil, []string{"hello", "again"}, false},
		{"next text after the kept one", []func(http.ResponseWriter){gatewayTimeout}, "other", nil, []string{"hello", "again", "other"}, false},
		{"commit after the kept one", []func(http.ResponseWriter){gatewayTimeout}, "update", nil, []string{"hello", "again", "update"}, false},
		{"resend lost too", []func(http.ResponseWriter){gatewayTimeout, func(w http.ResponseWriter) {
			writeDSError(w, http.StatusServiceUnavailable, moh.CodeBackendUnavailable)
		}}, "other", ErrMessagePending, []string{"hello", "again"}, true},
		{"commit waits for the kept one", []func(http.ResponseWriter){gatewayTimeout, gatewayTimeout}, "update", ErrMessagePending, []string{"hello", "again"}, true},
		{"resend rate limited", []func(http.ResponseWriter){gatewayTimeout, func(w http.ResponseWriter) {
			writeDSError(w, http.StatusTooManyRequests, moh.CodeRateLimited)
		}}, "same", ErrMessagePending, []string{"hello", "again"}, true},
		{"resend refused for good", []func(http.ResponseWriter){gatewayTimeout, func(w http.ResponseWriter) {
			writeDSError(w, http.StatusConflict, moh.CodeStaleEpoch)
		}}, "other", ErrMessageUnknown, []string{"hello", "again"}, false},
		{"resend after the timestamp window", []func(http.ResponseWriter){gatewayTimeout, func(w http.ResponseWriter) {
			writeDSError(w, http.StatusUnauthorized, moh.CodeStaleTimestamp)
		}}, "same", nil, []string{"hello", "again", "resigned"}, false},
		{"first attempt refused", []func(http.ResponseWriter){func(w http.ResponseWriter) {
			writeDSError(w, http.StatusConflict, moh.CodeStaleEpoch)
		}}, "", nil, []string{"hello"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			alice, gid, gw, err := sendThrough(t, tc.answers)
			if err == nil {
				t.Fatal("Send succeeded without a 200")
			}
			if tc.then != "" {
				if !errors.Is(err, ErrMessagePending) {
					t.Fatalf("Send whose answer was lost: %v; want ErrMessagePending", err)
				}
				// The state on disk, as after a crash, holds the kept
				// message.
				alice = reopen(t, alice)
				mux := http.NewServeMux()
				gw.register(t, mux, keptFile(t, alice, gid))
				fakeGateway(t, alice, mux)
				// Later than the first request's timestamp window.
				alice.cfg.Now = func() time.Time { return time.Now().Add(10 * time.Minute) }
				switch tc.then {
				case "same":
					err = alice.Send(t.Context(), gid, []byte("hello"))
				case "other":
					err = alice.Send(t.Context(), gid, []byte("other"))
				case "update":
					err = alice.Update(t.Context(), gid)
				}
				if (tc.err == nil && err != nil) || !errors.Is(err, tc.err) {
					t.Fatalf("%s: %v; want %v", tc.then, err, tc.err)
				}
			} else if errors.Is(err, ErrMessagePending) {
				t.Fatalf("a refused Send: %v; want no kept message", err)
			}
			gw.mu.Lock()
			defer gw.mu.Unlock()
			if !bytes.Equal(gw.kept[0], gw.bodies[0]) {
				t.Fatal("the first request left before it was kept on disk")
			}
			if sent := sentLabels(t, gw); !slices.Equal(sent, tc.sent) {
				t.Fatalf("the gateway got %q; want %q", sent, tc.sent)
			}
			if got := alice.PendingMessage(gid); got != tc.kept {
				t.Fatalf("alice keeps a message: %v; want %v", got, tc.kept)
			}
		})
	}
}

// TestKeptMessageGoesWithItsGroup: a kept message of a group the client
// forgets goes with the group, and one left without a group (a crash
// between the two removals) is removed by Open.
func TestKeptMessageGoesWithItsGroup(t *testing.T) {
	alice, _, gid, _ := pair(t)
	path := keptFile(t, alice, gid)
	alice.mu.Lock()
	err := alice.writeKept(&keptMessage{groupID: gid, digest: textDigest([]byte("x")), request: []byte{1}})
	alice.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	alice = reopen(t, alice)
	if !alice.PendingMessage(gid) {
		t.Fatal("the kept message did not survive a reopen")
	}
	alice.mu.Lock()
	err = alice.forget(gid)
	alice.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the kept message of a forgotten group is still there: %v", err)
	}
	if err := os.WriteFile(path, []byte{1}, 0o600); err != nil {
		t.Fatal(err)
	}
	reopen(t, alice)
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open left an orphan kept message: %v", err)
	}
}

// refuseWithRetryAfter answers a DSError of code with status and
// Retry-After: 1.
func refuseWithRetryAfter(status int, code moh.Code) func(w http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		w.Header().Set("Retry-After", "1")
		writeDSError(w, status, code)
	}
}

// TestSendWaitsOutRetryAfter: a send_message refused with a Retry-After
// the client waits out is sent again once the wait is over, at most
// twice: after a 429 (which delivered nothing) the same MLS message
// signed anew; after a first attempt's 503 (whose outcome is not known)
// the kept bytes, as the next Send would resend them, and after a
// resend's 503 the same MLS message signed anew.
func TestSendWaitsOutRetryAfter(t *testing.T) {
	rateLimited := refuseWithRetryAfter(http.StatusTooManyRequests, moh.CodeRateLimited)
	unavailable := refuseWithRetryAfter(http.StatusServiceUnavailable, moh.CodeBackendUnavailable)
	for _, tc := range []struct {
		name    string
		answers []func(w http.ResponseWriter)
		code    moh.Code // of the error Send returns; 0: success
		pending bool     // whether the error is ErrMessagePending
		sent    []string // as in TestSendKeptUntilAnswered
		kept    bool
	}{
		{"429, then ok", []func(http.ResponseWriter){rateLimited}, 0, false, []string{"hello", "resigned"}, false},
		{"429 three times", []func(http.ResponseWriter){rateLimited, rateLimited, rateLimited}, moh.CodeRateLimited, false,
			[]string{"hello", "resigned", "resigned"}, false},
		{"503, then ok", []func(http.ResponseWriter){unavailable}, 0, false, []string{"hello", "again"}, false},
		{"503, then 503, then ok", []func(http.ResponseWriter){unavailable, unavailable}, 0, false, []string{"hello", "again", "resigned"}, false},
		// Two waits in all for one Send: after the second, a 503 leaves
		// the message kept instead of a third wait and more resends.
		{"429, 429, then 503s", []func(http.ResponseWriter){rateLimited, rateLimited, unavailable, unavailable, unavailable},
			moh.CodeBackendUnavailable, true, []string{"hello", "resigned", "resigned"}, true},
		{"503 without Retry-After", []func(http.ResponseWriter){func(w http.ResponseWriter) {
			writeDSError(w, http.StatusServiceUnavailable, moh.CodeBackendUnavailable)
		}}, moh.CodeBackendUnavailable, true, []string{"hello"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			alice, gid, gw, err := sendThrough(t, tc.answers)
			if code, _ := CodeOf(err); code != tc.code || errors.Is(err, ErrMessagePending) != tc.pending {
				t.Fatalf("Send: %v; want code %v, pending %v", err, tc.code, tc.pending)
			}
			gw.mu.Lock()
			defer gw.mu.Unlock()
			for i := range gw.requests {
				if !bytes.Equal(gw.kept[i], gw.bodies[i]) {
					t.Fatalf("request %d left before it was kept on disk", i)
				}
			}
			if sent := sentLabels(t, gw); !slices.Equal(sent, tc.sent) {
				t.Fatalf("the gateway got %q; want %q", sent, tc.sent)
			}
			if got := alice.PendingMessage(gid); got != tc.kept {
				t.Fatalf("alice keeps a message: %v; want %v", got, tc.kept)
			}
		})
	}
}

// sentLabels names the requests gw got, in order: "hello" (the first),
// "again" (the first's bytes resent), "resigned" (the first's MLS message
// signed anew, which must have been kept on disk before it left), "other"
// (another send_message), "update" (an update_client), else the request
// type. gw.mu is held.
func sentLabels(t *testing.T, gw *sendGateway) []string {
	t.Helper()
	first, err := wire.Marshal(&gw.requests[0].Body.Message)
	if err != nil {
		t.Fatal(err)
	}
	var sent []string
	for i, req := range gw.requests {
		msg, _ := wire.Marshal(&req.Body.Message)
		switch {
		case i == 0:
			sent = append(sent, "hello")
		case bytes.Equal(gw.bodies[i], gw.bodies[0]):
			sent = append(sent, "again")
		case req.Body.Type == moh.SendMessage && bytes.Equal(msg, first):
			sent = append(sent, "resigned")
			if !bytes.Equal(gw.kept[i], gw.bodies[i]) {
				t.Fatal("the request signed anew left before it was kept on disk")
			}
		case req.Body.Type == moh.SendMessage:
			sent = append(sent, "other")
		case req.Body.Type == moh.UpdateClient:
			sent = append(sent, "update")
		default:
			sent = append(sent, req.Body.Type.String())
		}
	}
	return sent
}

// sendThrough has alice send "hello" to a group of hers through a
// sendGateway giving answers, and returns what Send returned.
func sendThrough(t *testing.T, answers []func(http.ResponseWriter)) (*Client, []byte, *sendGateway, error) {
	t.Helper()
	alice, _, gid, _ := pair(t)
	gw := &sendGateway{answers: answers}
	mux := http.NewServeMux()
	gw.register(t, mux, keptFile(t, alice, gid))
	fakeGateway(t, alice, mux)
	return alice, gid, gw, alice.Send(t.Context(), gid, []byte("hello"))
}
