package ds

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// peerAsk hands the processor of typ a verified request from sender.
func (h *harness) peerAsk(t *testing.T, typ moh.ProviderRequestType, sender string, payload []byte) (*moh.DSResponse, error) {
	t.Helper()
	v := &provider.Verified{Request: &moh.ProviderRequest{RequestType: typ, Sender: []byte(sender),
		Recipient: []byte(testProvider), Timestamp: 1, RequestID: randomBytes(t, 16), Payload: payload}}
	return h.svc.ProcessProvider(t.Context(), v)
}

// publish makes c's KeyPackage available in the directory.
func (h *harness) publish(t *testing.T, c *tclient, lastResort bool) []byte {
	t.Helper()
	enc := mustMarshal(t, c.c.kp)
	if err := h.st.PublishKeyPackages(t.Context(), c.uri, []store.KeyPackage{{Client: c.uri, Suite: uint16(c.c.kp.CipherSuite),
		Ref: c.kpRef, KeyPackage: enc, NotAfter: time.Now().Add(time.Hour), LastResort: lastResort}}, store.KeyPackageLimits{}); err != nil {
		t.Fatal(err)
	}
	return enc
}

// TestKeyPackagesForPeers claims local clients' KeyPackages for a peer:
// by client (group_key_packages) and by user (connection_key_packages),
// each single-use package once, the last-resort one again and again,
// other providers' clients and clients without packages missing, an
// unknown user answered like one without packages, and a request naming a
// client twice refused malformed before anything is claimed.
func TestKeyPackagesForPeers(t *testing.T) {
	h := newHarness(t)
	phone := h.newTClient(t, "bob", "phone", false)
	laptop := h.newTClient(t, "bob", "laptop", false)
	tablet := h.newTClient(t, "bob", "tablet", false) // publishes nothing
	phoneKP := h.publish(t, phone, false)
	laptopKP := h.publish(t, laptop, true)
	foreign := []byte(moh.ClientURI("c.example", "carol", "phone"))
	requester := []byte(moh.UserURI("c.example", "carol"))

	groupAsk := func(ids ...[]byte) *moh.DSResponse {
		t.Helper()
		resp, err := h.peerAsk(t, moh.GroupKeyPackages, "c.example", mustMarshal(t, &moh.GroupKeyPackagesRequest{Requester: requester, ClientIDs: ids}))
		if err != nil || resp.Type != moh.ResponseKeyPackages {
			t.Fatalf("group_key_packages: %+v, %v", resp, err)
		}
		return resp
	}
	want := func(what string, resp *moh.DSResponse, kps [][]byte, missing ...[]byte) {
		t.Helper()
		if len(resp.KeyPackages) != len(kps) || len(resp.Missing) != len(missing) {
			t.Fatalf("%s: %d KeyPackages, %d missing; want %d and %d", what, len(resp.KeyPackages), len(resp.Missing), len(kps), len(missing))
		}
		for i := range kps {
			if !bytes.Equal(resp.KeyPackages[i], kps[i]) {
				t.Fatalf("%s: KeyPackage %d is not the one expected", what, i)
			}
		}
		for i := range missing {
			if !bytes.Equal(resp.Missing[i], missing[i]) {
				t.Fatalf("%s: missing %d is %s, want %s", what, i, resp.Missing[i], missing[i])
			}
		}
	}
	// A client id named twice is malformed and claims nothing: the
	// phone's single-use package is still there for the next request.
	for _, tc := range []struct {
		name string
		ids  [][]byte
	}{
		{"the phone twice", [][]byte{[]byte(phone.uri), []byte(phone.uri)}},
		{"the phone twice, apart", [][]byte{[]byte(phone.uri), []byte(laptop.uri), foreign, []byte(phone.uri)}},
		{"a client without packages twice", [][]byte{[]byte(phone.uri), []byte(tablet.uri), []byte(tablet.uri)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload := mustMarshal(t, &moh.GroupKeyPackagesRequest{Requester: requester, ClientIDs: tc.ids})
			if _, err := h.peerAsk(t, moh.GroupKeyPackages, "c.example", payload); codeOf(err) != moh.CodeMalformed {
				t.Fatalf("answer %v, want malformed", err)
			}
		})
	}
	want("first", groupAsk([]byte(phone.uri), foreign, []byte(laptop.uri), []byte(tablet.uri)),
		[][]byte{phoneKP, laptopKP}, foreign, []byte(tablet.uri))
	// The phone's single-use package is gone; the laptop's last resort
	// stays.
	want("second", groupAsk([]byte(phone.uri), []byte(laptop.uri)), [][]byte{laptopKP}, []byte(phone.uri))

	connAsk := func(user string) *moh.DSResponse {
		t.Helper()
		resp, err := h.peerAsk(t, moh.ConnectionKeyPackages, "c.example", mustMarshal(t, &moh.ConnectionKeyPackagesRequest{
			Requester: requester, UserID: []byte(user)}))
		if err != nil || resp.Type != moh.ResponseKeyPackages {
			t.Fatalf("connection_key_packages: %+v, %v", resp, err)
		}
		return resp
	}
	phoneKP2 := h.publish(t, h.newTClient(t, "bob", "phone", false), false)
	want("by user", connAsk(moh.UserURI(testProvider, "bob")), [][]byte{laptopKP, phoneKP2})
	want("an unknown user", connAsk(moh.UserURI(testProvider, "nobody")), nil)
	want("a user of another provider", connAsk(moh.UserURI("c.example", "carol")), nil)

	for _, tc := range []struct {
		name    string
		typ     moh.ProviderRequestType
		sender  string
		payload []byte
		code    moh.Code
	}{
		{"a requester of another provider", moh.GroupKeyPackages, "d.example",
			mustMarshal(t, &moh.GroupKeyPackagesRequest{Requester: requester, ClientIDs: [][]byte{[]byte(laptop.uri)}}), moh.CodeForbidden},
		{"a requester of another provider, by user", moh.ConnectionKeyPackages, "d.example",
			mustMarshal(t, &moh.ConnectionKeyPackagesRequest{Requester: requester, UserID: []byte(moh.UserURI(testProvider, "bob"))}), moh.CodeForbidden},
		{"a payload that does not decode", moh.GroupKeyPackages, "c.example", []byte{0, 1}, moh.CodeMalformed},
		{"a user_id that is a client URI", moh.ConnectionKeyPackages, "c.example",
			mustMarshal(t, &moh.ConnectionKeyPackagesRequest{Requester: requester, UserID: []byte(laptop.uri)}), moh.CodeMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := h.peerAsk(t, tc.typ, tc.sender, tc.payload); codeOf(err) != tc.code {
				t.Fatalf("answer %v, want %s", err, tc.code)
			}
		})
	}
}

// TestKeyPackagesUnusableNotHandedOut claims, for a peer, KeyPackages
// stored before the Delivery Service's maximum lifetime was what it is
// (docs/protocol.md §4.2): one whose lifetime is longer than
// MaxKeyPackageLifetime, or whose not_after has passed, is not handed
// out, since the Delivery Service would refuse the commit that adds it. A
// single-use one is consumed and the client's next one handed out; a
// last-resort one is skipped, and stays available.
func TestKeyPackagesUnusableNotHandedOut(t *testing.T) {
	h := newHarness(t)
	now := time.Now()
	sec := uint64(now.Unix())
	const day = 24 * 3600
	long := func(leaf *mls.LeafNode) { leaf.Lifetime = mls.Lifetime{NotBefore: sec - 3600, NotAfter: sec + 400*day} }
	ended := func(leaf *mls.LeafNode) { leaf.Lifetime = mls.Lifetime{NotBefore: sec - 30*day, NotAfter: sec - 1} }
	// publish stores c's KeyPackage as available until notAfter, which
	// orders the claims (the earliest first), whatever its lifetime says.
	publish := func(c *tclient, notAfter time.Duration, lastResort bool) []byte {
		t.Helper()
		enc := mustMarshal(t, c.c.kp)
		if err := h.st.PublishKeyPackages(t.Context(), c.uri, []store.KeyPackage{{Client: c.uri, Suite: uint16(c.c.kp.CipherSuite),
			Ref: c.kpRef, KeyPackage: enc, NotAfter: now.Add(notAfter), LastResort: lastResort}}, store.KeyPackageLimits{}); err != nil {
			t.Fatal(err)
		}
		return enc
	}
	requester := []byte(moh.UserURI("c.example", "carol"))

	publish(h.newTClientEdit(t, "bob", "phone", false, long), time.Hour, false)
	publish(h.newTClientEdit(t, "bob", "phone", false, ended), 2*time.Hour, false)
	bobGood := publish(h.newTClient(t, "bob", "phone", false), 3*time.Hour, false)
	bobLaptop := h.newTClientEdit(t, "bob", "laptop", false, long)
	publish(bobLaptop, time.Hour, true)
	resp, err := h.peerAsk(t, moh.GroupKeyPackages, "c.example", mustMarshal(t, &moh.GroupKeyPackagesRequest{Requester: requester,
		ClientIDs: [][]byte{[]byte(moh.ClientURI(testProvider, "bob", "phone")), []byte(bobLaptop.uri)}}))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.KeyPackages) != 1 || !bytes.Equal(resp.KeyPackages[0], bobGood) || len(resp.Missing) != 1 || !bytes.Equal(resp.Missing[0], []byte(bobLaptop.uri)) {
		t.Fatalf("group_key_packages answered %d KeyPackages, missing %q; want the phone's usable one, the laptop missing",
			len(resp.KeyPackages), resp.Missing)
	}
	if n := h.available(t, moh.ClientURI(testProvider, "bob", "phone")); n != 0 {
		t.Fatalf("the phone has %d KeyPackages left, want none: the unusable ones are consumed", n)
	}
	if n := h.available(t, bobLaptop.uri); n != 1 {
		t.Fatalf("the laptop has %d KeyPackages left, want its last-resort one", n)
	}

	publish(h.newTClientEdit(t, "dave", "phone", false, long), time.Hour, false)
	daveGood := publish(h.newTClient(t, "dave", "phone", false), 2*time.Hour, false)
	publish(h.newTClientEdit(t, "dave", "laptop", false, long), time.Hour, true)
	resp, err = h.peerAsk(t, moh.ConnectionKeyPackages, "c.example", mustMarshal(t, &moh.ConnectionKeyPackagesRequest{
		Requester: requester, UserID: []byte(moh.UserURI(testProvider, "dave"))}))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.KeyPackages) != 1 || !bytes.Equal(resp.KeyPackages[0], daveGood) {
		t.Fatalf("connection_key_packages answered %d KeyPackages, want the phone's usable one", len(resp.KeyPackages))
	}

	// With no maximum, the long last-resort package is handed out.
	h.svc.MaxKeyPackageLifetime = -1
	resp, err = h.peerAsk(t, moh.GroupKeyPackages, "c.example", mustMarshal(t, &moh.GroupKeyPackagesRequest{Requester: requester,
		ClientIDs: [][]byte{[]byte(bobLaptop.uri)}}))
	if err != nil || len(resp.KeyPackages) != 1 {
		t.Fatalf("group_key_packages without a maximum: %+v, %v; want the laptop's last-resort KeyPackage", resp, err)
	}
}

// TestKeyPackagesRacingClaims has 50 peers' requests claim one client's
// KeyPackages at once: each single-use KeyPackage goes to exactly one of
// them, and the rest get the last-resort one.
func TestKeyPackagesRacingClaims(t *testing.T) {
	h := newHarness(t)
	const singles, claims = 30, 50
	var want [][]byte
	for range singles {
		want = append(want, h.publish(t, h.newTClient(t, "bob", "phone", false), false))
	}
	last := h.publish(t, h.newTClient(t, "bob", "phone", false), true)
	uri := moh.ClientURI(testProvider, "bob", "phone")
	payload := mustMarshal(t, &moh.GroupKeyPackagesRequest{Requester: []byte(moh.UserURI("c.example", "carol")),
		ClientIDs: [][]byte{[]byte(uri)}})
	got := make([][]byte, claims)
	var wg sync.WaitGroup
	for i := range claims {
		wg.Go(func() {
			resp, err := h.peerAsk(t, moh.GroupKeyPackages, "c.example", payload)
			if err != nil || len(resp.KeyPackages) != 1 {
				t.Errorf("claim %d: %+v, %v", i, resp, err)
				return
			}
			got[i] = resp.KeyPackages[0]
		})
	}
	wg.Wait()
	seen := map[string]int{}
	for _, kp := range got {
		seen[string(kp)]++
	}
	for i, kp := range want {
		if seen[string(kp)] != 1 {
			t.Fatalf("single-use KeyPackage %d was handed out %d times", i, seen[string(kp)])
		}
	}
	if seen[string(last)] != claims-singles {
		t.Fatalf("the last-resort KeyPackage was handed out %d times, want %d", seen[string(last)], claims-singles)
	}
}
