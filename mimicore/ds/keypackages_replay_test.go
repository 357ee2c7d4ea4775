package ds

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// The claims of a KeyPackage request and its replay log entry are one
// durable write (docs/protocol.md §4): these tests run group_key_packages
// and connection_key_packages through provider.Inbound over the harness's
// sqlitestore, and count the single-use KeyPackages one request consumes.

// available returns how many KeyPackages uri has available.
func (h *harness) available(t *testing.T, uri string) int {
	t.Helper()
	kps, err := h.st.ListKeyPackages(t.Context(), uri)
	if err != nil {
		t.Fatal(err)
	}
	return len(kps)
}

// failWrites makes the database refuse the writes that the trigger body
// on selects (for example "BEFORE INSERT ON replay_requests"), through a
// trigger created beside the store's own connections, until the returned
// function drops it: a write of the store fails there as on a full disk.
func (h *harness) failWrites(t *testing.T, on string) (stop func()) {
	t.Helper()
	db, err := sql.Open("sqlite", h.db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.ExecContext(t.Context(), `CREATE TRIGGER test_fail_writes `+on+
		` BEGIN SELECT RAISE(ABORT, 'injected write failure'); END`); err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		if _, err := db.ExecContext(t.Context(), `DROP TRIGGER test_fail_writes`); err != nil {
			t.Fatal(err)
		}
	}
}

// kpRequest is a verified KeyPackage request from c.example for the
// local user bob: group_key_packages for clients, or
// connection_key_packages when clients is empty.
func kpRequest(t *testing.T, id []byte, clients ...string) *provider.Verified {
	t.Helper()
	requester := []byte(moh.UserURI("c.example", "carol"))
	typ := moh.ConnectionKeyPackages
	payload := mustMarshal(t, &moh.ConnectionKeyPackagesRequest{Requester: requester, UserID: []byte(moh.UserURI(testProvider, "bob"))})
	if len(clients) > 0 {
		typ = moh.GroupKeyPackages
		req := &moh.GroupKeyPackagesRequest{Requester: requester}
		for _, c := range clients {
			req.ClientIDs = append(req.ClientIDs, []byte(c))
		}
		payload = mustMarshal(t, req)
	}
	return &provider.Verified{Request: &moh.ProviderRequest{RequestType: typ, Sender: []byte("c.example"),
		Recipient: []byte(testProvider), Timestamp: 1, RequestID: id, Payload: payload}, Digest: [32]byte{7, byte(typ)}}
}

// TestKeyPackageClaimCopyOnAnotherGateway sends one request to two
// gateways on one store: the copy on the second gateway is handled while
// the first copy is being processed, before or after the first copy's
// claim. The request consumes one single-use KeyPackage, and both copies
// get one answer.
func TestKeyPackageClaimCopyOnAnotherGateway(t *testing.T) {
	for _, tc := range []struct {
		name      string
		copyFirst bool // the copy is handled before the first copy claims
		group     bool
	}{
		{name: "group_key_packages, copy after the claim", group: true},
		{name: "group_key_packages, copy before the claim", group: true, copyFirst: true},
		{name: "connection_key_packages, copy after the claim"},
		{name: "connection_key_packages, copy before the claim", copyFirst: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			phone := h.newTClient(t, "bob", "phone", false)
			h.publish(t, phone, false)
			h.publish(t, h.newTClient(t, "bob", "phone", false), false)
			h.publish(t, h.newTClient(t, "bob", "phone", false), false)
			var clients []string
			if tc.group {
				clients = []string{phone.uri}
			}
			id := randomBytes(t, 16)
			gwA := &provider.Inbound{Verifier: &provider.Verifier{}, Replay: h.st}
			gwB := &provider.Inbound{Verifier: &provider.Verifier{}, Replay: h.st}
			var ansB []byte
			var errB error
			copyB := func(ctx context.Context) {
				ansB, errB = gwB.Handle(ctx, kpRequest(t, id, clients...), h.svc.ProcessProvider)
			}
			ansA, errA := gwA.Handle(t.Context(), kpRequest(t, id, clients...), func(ctx context.Context, v *provider.Verified) (*moh.DSResponse, error) {
				if tc.copyFirst {
					copyB(ctx)
					return h.svc.ProcessProvider(ctx, v)
				}
				resp, err := h.svc.ProcessProvider(ctx, v)
				copyB(ctx)
				return resp, err
			})
			if errA != nil || ansA == nil {
				t.Fatalf("first copy: %d bytes, %v", len(ansA), errA)
			}
			if n := h.available(t, phone.uri); n != 2 {
				t.Errorf("one request consumed %d KeyPackages, want 1", 3-n)
			}
			if code := moh.DSErrorOf(errB).Code; !(errB == nil && bytes.Equal(ansA, ansB)) && code != moh.CodeInProgress {
				t.Errorf("the copy was answered %d bytes, %v; want the first copy's answer or in_progress", len(ansB), errB)
			}
		})
	}
}

// TestKeyPackageClaimFailedWriteClaimsNothing fails the write of a
// KeyPackage request's answer, or of a client's claim after another
// client's: the request is answered backend_unavailable, nothing is
// claimed, and its retry consumes one single-use KeyPackage per client.
func TestKeyPackageClaimFailedWriteClaimsNothing(t *testing.T) {
	for _, tc := range []struct {
		name  string
		group bool
		fail  string // the writes refused
	}{
		{name: "group_key_packages, answer not recorded", group: true, fail: "BEFORE INSERT ON replay_requests"},
		{name: "connection_key_packages, answer not recorded", fail: "BEFORE INSERT ON replay_requests"},
		{name: "group_key_packages, second client's claim fails", group: true,
			fail: "BEFORE UPDATE OF claimed_ms ON key_packages WHEN OLD.client LIKE '%/laptop'"},
		{name: "connection_key_packages, second client's claim fails",
			fail: "BEFORE UPDATE OF claimed_ms ON key_packages WHEN OLD.client LIKE '%/phone'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			phone := h.newTClient(t, "bob", "phone", false)
			laptop := h.newTClient(t, "bob", "laptop", false)
			for range 2 {
				h.publish(t, h.newTClient(t, "bob", "phone", false), false)
				h.publish(t, h.newTClient(t, "bob", "laptop", false), false)
			}
			var clients []string
			if tc.group {
				clients = []string{phone.uri, laptop.uri}
			}
			id := randomBytes(t, 16)
			gw := &provider.Inbound{Verifier: &provider.Verifier{}, Replay: h.st}
			stop := h.failWrites(t, tc.fail)
			ans, err := gw.Handle(t.Context(), kpRequest(t, id, clients...), h.svc.ProcessProvider)
			if ans != nil || moh.DSErrorOf(err).Code != moh.CodeBackendUnavailable {
				t.Fatalf("with the write failing: %d bytes, %v; want backend_unavailable", len(ans), err)
			}
			for _, c := range []*tclient{phone, laptop} {
				if n := h.available(t, c.uri); n != 2 {
					t.Errorf("after the failed write %s has %d KeyPackages, want 2", c.uri, n)
				}
			}
			stop()
			ans, err = gw.Handle(t.Context(), kpRequest(t, id, clients...), h.svc.ProcessProvider)
			if err != nil || ans == nil {
				t.Fatalf("retry: %d bytes, %v", len(ans), err)
			}
			for _, c := range []*tclient{phone, laptop} {
				if n := h.available(t, c.uri); n != 1 {
					t.Errorf("after the retry %s has %d KeyPackages, want 1", c.uri, n)
				}
			}
			again, err := gw.Handle(t.Context(), kpRequest(t, id, clients...), h.svc.ProcessProvider)
			if err != nil || !bytes.Equal(again, ans) {
				t.Fatalf("second retry: %d bytes, %v; want the recorded answer", len(again), err)
			}
		})
	}
}

// TestKeyPackageClaimLargestAnswer claims the largest group_key_packages
// answer there is, 64 KeyPackages (moh.MaxClientIDs) of
// store.MaxKeyPackageSize each, through provider.Inbound: its answer and
// the claims are one write, so the answer must fit a replay record
// (store.MaxAnswerSize), and a retry of the request gets the same answer
// without claiming more.
func TestKeyPackageClaimLargestAnswer(t *testing.T) {
	h := newHarness(t)
	var clients []string
	for i := range moh.MaxClientIDs {
		uri := moh.ClientURI(testProvider, "bob", fmt.Sprintf("device%02d", i))
		clients = append(clients, uri)
		for range 2 {
			if err := h.st.PublishKeyPackages(t.Context(), uri, []store.KeyPackage{{Client: uri, Suite: 1,
				Ref: randomBytes(t, 32), KeyPackage: paddedKeyPackage(t, uri, store.MaxKeyPackageSize),
				NotAfter: time.Now().Add(time.Hour)}}, store.KeyPackageLimits{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	id := randomBytes(t, 16)
	gw := &provider.Inbound{Verifier: &provider.Verifier{}, Replay: h.st}
	first, err := gw.Handle(t.Context(), kpRequest(t, id, clients...), h.svc.ProcessProvider)
	if err != nil {
		t.Fatalf("the largest answer (%d KeyPackages of %d bytes): %v", len(clients), store.MaxKeyPackageSize, err)
	}
	// The packages are unsigned KeyPackages padded to the largest size
	// (the directory only decodes them, for their lifetime), so the
	// answer is checked by its size: every client's package is in it.
	if len(first) < len(clients)*store.MaxKeyPackageSize {
		t.Fatalf("answer of %d bytes, want %d KeyPackages of %d bytes", len(first), len(clients), store.MaxKeyPackageSize)
	}
	again, err := gw.Handle(t.Context(), kpRequest(t, id, clients...), h.svc.ProcessProvider)
	if err != nil || !bytes.Equal(again, first) {
		t.Fatalf("the retry: %d bytes, %v; want the first answer", len(again), err)
	}
	for _, c := range clients {
		if n := h.available(t, c); n != 1 {
			t.Fatalf("%s has %d KeyPackages left, want 1: the retry claimed again", c, n)
		}
	}
}

// paddedKeyPackage encodes a KeyPackage of identity, of random keys and a
// lifetime from an hour ago to a day from now, padded by an extension to
// exactly size bytes; it decodes, it does not verify.
func paddedKeyPackage(t *testing.T, identity string, size int) []byte {
	t.Helper()
	now := uint64(time.Now().Unix())
	suite := mls.X25519AES128GCMSHA256Ed25519
	kp := &mls.KeyPackage{Version: mls.MLS10, CipherSuite: suite, InitKey: randomBytes(t, 32),
		LeafNode: mls.LeafNode{EncryptionKey: randomBytes(t, 32), SignatureKey: randomBytes(t, 32),
			Credential: mls.Credential{Type: mls.CredentialBasic, Identity: []byte(identity)},
			Capabilities: mls.Capabilities{Versions: []mls.ProtocolVersion{mls.MLS10}, CipherSuites: []mls.CipherSuite{suite},
				Credentials: []mls.CredentialType{mls.CredentialBasic}},
			Source: mls.SourceKeyPackage, Lifetime: mls.Lifetime{NotBefore: now - 3600, NotAfter: now + 24*3600},
			Signature: randomBytes(t, 64)},
		Signature:  randomBytes(t, 64),
		Extensions: mls.Extensions{{Type: 0xff00}}}
	base, err := wire.Marshal(kp)
	if err != nil {
		t.Fatal(err)
	}
	// The padding's length prefixes grow with it: shrink it until the
	// whole fits.
	for pad := size - len(base); pad >= 0; pad-- {
		kp.Extensions[0].Data = make([]byte, pad)
		enc, err := wire.Marshal(kp)
		if err != nil {
			t.Fatal(err)
		}
		if len(enc) == size {
			return enc
		}
	}
	t.Fatalf("no padding makes a KeyPackage of %d bytes", size)
	return nil
}
