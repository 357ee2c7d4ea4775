package caddymodule

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// signedDelivery is a deliver_message from site from to site to, under
// request id rid, of msg for group gid to the clients to.
func signedDelivery(t *testing.T, from, to *peerSite, rid []byte, gid []byte, msg *mls.MLSMessage, clients ...string) []byte {
	t.Helper()
	q := &moh.QueueingServiceRequest{GroupID: gid, Message: *msg}
	for _, c := range clients {
		q.ClientIDs = append(q.ClientIDs, []byte(c))
	}
	payload, err := wire.Marshal(q)
	if err != nil {
		t.Fatal(err)
	}
	key, err := from.g.svc.Keys().Current(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := provider.SignRequest(&moh.ProviderRequest{RequestType: moh.DeliverMessage, Sender: []byte(from.g.Providers[0]),
		Recipient: []byte(to.g.Providers[0]), Timestamp: uint64(time.Now().Unix()), RequestID: rid, Payload: payload}, key)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// postProvider posts a provider request to site's path over TLS 1.3 and
// returns the status and the raw answer.
func postProvider(t *testing.T, site *peerSite, path string, raw []byte) (int, []byte) {
	t.Helper()
	status, body, _ := postProviderFull(t, site, path, raw)
	return status, body
}

// postProviderFull is postProvider, also returning the answer's header.
func postProviderFull(t *testing.T, site *peerSite, path string, raw []byte) (int, []byte, http.Header) {
	t.Helper()
	_, port, _ := net.SplitHostPort(site.addr)
	resp, err := site.client().Post("https://"+site.g.Providers[0]+":"+port+path, "application/octet-stream", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body, resp.Header
}

// TestDeliverMessageOverHTTP sends deliver_message between two gateways
// over TLS 1.3, signed with the sending gateway's keys, for a group that
// a hosts and that has a member at b: a byte-identical replay is answered
// alike and queues nothing more; the same request id with other bytes is
// a delivery of its own (deliver_message ids are not recorded,
// docs/protocol.md §4 step 8); a forged signature is 401; a delivery from
// a provider that is not the group's hub is 403, and changes nothing.
func TestDeliverMessageOverHTTP(t *testing.T) {
	a, b := twoProviders(t)
	alice, bob := newPeerMember(t, a, "alice"), newPeerMember(t, b, "bob")
	gid := []byte("a group delivered by hand")
	hostWithPeer(t, a, b, alice, bob, gid) // b records a as the group's hub with the Welcome
	waitOutboxEmpty(t, a, "b.localhost")
	protect := func(text string) *mls.MLSMessage {
		m, err := alice.m.Protect([]byte(text), nil)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	queued := func() int { return len(waitQueue(t, b, bob.uri, 0)) }
	rid := make([]byte, 16)
	rand.Read(rid)

	first := signedDelivery(t, a, b, rid, gid, protect("one"), bob.uri)
	st1, ans1 := postProvider(t, b, "/deliver_message", first)
	st2, ans2 := postProvider(t, b, "/deliver_message", first)
	if st1 != http.StatusOK || st2 != st1 || !bytes.Equal(ans1, ans2) {
		t.Fatalf("a delivery and its byte-identical replay: %d %x, then %d %x; want one answer twice", st1, ans1, st2, ans2)
	}
	if n := queued(); n != 2 {
		t.Fatalf("bob's queue holds %d messages after a delivery and its replay, want 2", n)
	}

	other := signedDelivery(t, a, b, rid, gid, protect("two"), bob.uri)
	if st, ans := postProvider(t, b, "/deliver_message", other); st != http.StatusOK {
		t.Fatalf("the same request id with another message: %d %x, want a delivery of its own", st, ans)
	}
	if n := queued(); n != 3 {
		t.Fatalf("bob's queue holds %d messages, want 3", n)
	}

	atA := len(waitQueue(t, a, alice.uri, 0))
	for _, tc := range []struct {
		name       string
		site       *peerSite
		raw        []byte
		wantStatus int
		wantCode   moh.Code
	}{
		{"a forged signature", b, func() []byte {
			rand.Read(rid)
			raw := signedDelivery(t, a, b, rid, gid, protect("forged"), bob.uri)
			raw[len(raw)-1] ^= 1
			return raw
		}(), http.StatusUnauthorized, moh.CodeBadSignature},
		// b is not the hub of a's group: a refuses b's delivery for it.
		{"a delivery from a provider that is not the hub", a, func() []byte {
			rand.Read(rid)
			return signedDelivery(t, b, a, rid, gid, protect("not from the hub"), alice.uri)
		}(), http.StatusForbidden, moh.CodeForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, raw := postProvider(t, tc.site, "/deliver_message", tc.raw)
			var r moh.DSResponse
			if err := wire.Unmarshal(raw, &r, "DSResponse"); err != nil || st != tc.wantStatus || r.Error.Code != tc.wantCode {
				t.Fatalf("%d %s (%v), want %d %s", st, r.Error.Code, err, tc.wantStatus, tc.wantCode)
			}
		})
	}
	if n := queued(); n != 3 {
		t.Fatalf("bob's queue holds %d messages after the refusals, want 3", n)
	}
	if got := waitQueue(t, a, alice.uri, 0); len(got) != atA {
		t.Fatalf("alice's queue at a went from %d to %d messages: the refused delivery reached it", atA, len(got))
	}
}

// TestKeyPackagesClaimedOnceOverHTTP has a send 50 concurrent
// connection_key_packages requests to b for one user of b with two
// clients, each with 20 single-use KeyPackages and one of last resort:
// every single-use package is handed out exactly once, and the requests
// that come after them get the last-resort ones.
func TestKeyPackagesClaimedOnceOverHTTP(t *testing.T) {
	a, b := twoProviders(t)
	const perClient, requests = 20, 50
	clients := []string{moh.ClientURI("b.localhost", "carol", "phone"), moh.ClientURI("b.localhost", "carol", "laptop")}
	single := map[string]bool{} // encoded single-use packages
	lastResort := map[string]bool{}
	for _, uri := range clients {
		var kps []store.KeyPackage
		for i := range perClient + 1 {
			last := i == perClient
			kp := peerKeyPackage(t, b, uri, last)
			kps = append(kps, kp)
			if last {
				lastResort[string(kp.KeyPackage)] = true
			} else {
				single[string(kp.KeyPackage)] = true
			}
		}
		if err := b.g.svc.Store().PublishKeyPackages(t.Context(), uri, kps, store.KeyPackageLimits{}); err != nil {
			t.Fatal(err)
		}
	}
	pc := &provider.Client{Sender: "a.localhost", Keys: a.g.svc.Keys(), Fetcher: a.g.svc.Fetcher()}
	payload, err := wire.Marshal(&moh.ConnectionKeyPackagesRequest{Requester: []byte(moh.UserURI("a.localhost", "alice")),
		UserID: []byte(moh.UserURI("b.localhost", "carol"))})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	handedOut := map[string]int{}
	var wg sync.WaitGroup
	for range requests {
		wg.Go(func() {
			ans, err := pc.Send(t.Context(), "b.localhost", moh.ConnectionKeyPackages, payload)
			if err != nil {
				t.Error(err)
				return
			}
			if ans.Status != http.StatusOK || ans.Response.Type != moh.ResponseKeyPackages || len(ans.Response.KeyPackages) != len(clients) {
				t.Errorf("connection_key_packages: %d %s %+v", ans.Status, ans.Response.Error.Code, ans.Response)
				return
			}
			mu.Lock()
			for _, kp := range ans.Response.KeyPackages {
				handedOut[string(kp)]++
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	var singles, lasts int
	for kp, n := range handedOut {
		switch {
		case single[kp] && n != 1:
			t.Errorf("a single-use KeyPackage was handed out %d times", n)
		case single[kp]:
			singles++
		case lastResort[kp]:
			lasts += n
		default:
			t.Error("an answer held a KeyPackage that was never published")
		}
	}
	if singles != len(single) || lasts != requests*len(clients)-len(single) {
		t.Fatalf("%d of %d single-use KeyPackages and %d last-resort ones handed out, want all and %d", singles, len(single),
			lasts, requests*len(clients)-len(single))
	}
}
