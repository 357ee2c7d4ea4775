package client

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// storedRefs returns the refs of the KeyPackages whose private keys the
// record in c's state directory keeps, read from disk.
func storedRefs(t *testing.T, c *Client) [][]byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(c.dir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := decodeRecord(data)
	if err != nil {
		t.Fatal(err)
	}
	var refs [][]byte
	for _, k := range rec.keyPackages {
		refs = append(refs, k.ref)
	}
	return refs
}

// TestRefusedWelcomeDeletesKeyPackage: a Welcome for bob's single-use
// KeyPackage that he refuses for good (welcome_info refused with 404 or
// 401 bad_signature, a Welcome that does not decrypt, a tree that does not
// fit it) is skipped, and the KeyPackage's private keys are deleted, on
// disk, before the cursor moves past it: the KeyPackage was claimed and
// the Welcome is never processed again (before, the keys stayed until the
// binding expired, up to 90 days).
func TestRefusedWelcomeDeletesKeyPackage(t *testing.T) {
	_, _, otherTree := welcomeQueued(t)
	for _, tc := range []struct {
		name string
		// answer answers welcome_info; nil serves the Welcome's tree.
		answer func(w http.ResponseWriter, tree []byte)
		// corrupt, when set, damages the queued Welcome.
		corrupt bool
	}{
		{name: "welcome_info not_found", answer: func(w http.ResponseWriter, _ []byte) {
			writeDSError(w, http.StatusNotFound, moh.CodeNotFound)
		}},
		{name: "welcome_info bad_signature", answer: func(w http.ResponseWriter, _ []byte) {
			writeDSError(w, http.StatusUnauthorized, moh.CodeBadSignature)
		}},
		{name: "Welcome does not decrypt", corrupt: true},
		{name: "tree of another group", answer: func(w http.ResponseWriter, _ []byte) {
			writeOK(w, &moh.DSResponse{Type: moh.ResponseWelcomeInfo, RatchetTree: otherTree})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bob, q, tree := welcomeQueued(t)
			if tc.corrupt {
				msg, err := mls.DecodeMLSMessage(q.msgs[0].Message)
				if err != nil {
					t.Fatal(err)
				}
				msg.Welcome.EncryptedGroupInfo[0] ^= 1
				if q.msgs[0].Message, err = wire.Marshal(msg); err != nil {
					t.Fatal(err)
				}
			}
			mux := http.NewServeMux()
			q.register(mux)
			mux.HandleFunc("/welcome_information", func(w http.ResponseWriter, r *http.Request) {
				if tc.answer == nil {
					writeOK(w, &moh.DSResponse{Type: moh.ResponseWelcomeInfo, RatchetTree: tree})
					return
				}
				tc.answer(w, tree)
			})
			fakeGateway(t, bob, mux)
			if n := len(storedRefs(t, bob)); n != 1 {
				t.Fatalf("bob keeps the keys of %d KeyPackages; want 1", n)
			}
			evs, err := bob.Receive(t.Context(), 0)
			if err != nil || len(evs) != 1 || evs[0].Kind != EventSkipped {
				t.Fatalf("Receive: %+v, %v; want the Welcome skipped", evs, err)
			}
			if bob.rec.cursor != 1 || len(bob.Groups()) != 0 {
				t.Fatalf("cursor %d, %d groups; want 1, 0", bob.rec.cursor, len(bob.Groups()))
			}
			if refs := storedRefs(t, bob); len(refs) != 0 || len(bob.rec.keyPackages) != 0 {
				t.Fatalf("after the Welcome was refused: the keys of %d KeyPackages kept on disk, %d in memory; want none",
					len(refs), len(bob.rec.keyPackages))
			}
		})
	}
}

// TestRefusedWelcomeKeepsLastResort: a refused Welcome for the client's
// last-resort KeyPackage, which the gateway hands out again, leaves its
// keys in place.
func TestRefusedWelcomeKeepsLastResort(t *testing.T) {
	bob, q, _ := welcomeQueued(t)
	rec := bob.rec.clone()
	rec.keyPackages = slices.Clone(rec.keyPackages)
	rec.keyPackages[0].lastResort = true
	if err := bob.saveRecord(rec); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	q.register(mux)
	mux.HandleFunc("/welcome_information", func(w http.ResponseWriter, r *http.Request) {
		writeDSError(w, http.StatusNotFound, moh.CodeNotFound)
	})
	fakeGateway(t, bob, mux)
	evs, err := bob.Receive(t.Context(), 0)
	if err != nil || len(evs) != 1 || evs[0].Kind != EventSkipped {
		t.Fatalf("Receive: %+v, %v; want the Welcome skipped", evs, err)
	}
	if refs := storedRefs(t, bob); len(refs) != 1 || !bytes.Equal(refs[0], rec.keyPackages[0].ref) {
		t.Fatalf("the last-resort KeyPackage's keys: %d kept; want kept", len(refs))
	}
}

// providerKeys are the localapi.Keys of one Ed25519 provider key, valid
// for 60 days either side of now.
type providerKeys struct{ k *provider.PrivateKey }

func (p providerKeys) Current(time.Time) (*provider.PrivateKey, error) { return p.k, nil }
func (p providerKeys) Published(time.Time) []moh.VerificationKey {
	return []moh.VerificationKey{p.k.Public()}
}

// apiGateway serves the local client API of provider a.example (package
// localapi over a SQLite store, as the gateway's mimi_local handler does)
// for user bob over TLS, on a clock the test sets. It can abort the answer
// to a publish, the connection closed as by a reset, before the API took
// the KeyPackages (abortBefore) or after (abortAfter).
type apiGateway struct {
	api *localapi.API
	srv *httptest.Server

	mu                      sync.Mutex
	now                     time.Time
	abortBefore, abortAfter int
	// publishes counts the publish requests that reached the gateway;
	// while rateLimited, the API takes publishes of budget KeyPackages
	// more in all, and refuses the others (rate_limited, a 429).
	publishes   int
	rateLimited bool
	budget      int
	// refusalsSpend makes a publish the store refuses keep its budget
	// spent, as gateways did before they gave it back: the client meets
	// such gateways too.
	refusalsSpend bool
	// retryAfter is the Retry-After of a rate_limited refusal ("": none).
	retryAfter string
}

// AllowPublish implements localapi.PublishLimiter: while g.rateLimited,
// it spends n KeyPackages of g.budget, or refuses the publish when fewer
// are left, as a user's publish rate does.
func (g *apiGateway) AllowPublish(user string, n int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.rateLimited {
		return nil
	}
	if n > g.budget {
		return moh.Errorf(moh.CodeRateLimited, "publishing %d more KeyPackages would pass your publish rate", n)
	}
	g.budget -= n
	return nil
}

// ReturnPublish implements localapi.PublishLimiter: while g.rateLimited,
// the n KeyPackages of a publish the store refused go back to g.budget,
// unless g.refusalsSpend.
func (g *apiGateway) ReturnPublish(user string, n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.rateLimited && !g.refusalsSpend {
		g.budget += n
	}
}

func newAPIGateway(t *testing.T, now time.Time) *apiGateway {
	t.Helper()
	st, err := sqlitestore.Open(t.Context(), filepath.Join(t.TempDir(), "mimi.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	k, err := provider.ParsePEM(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Headers: map[string]string{
		"Not-Before": now.Add(-60 * 24 * time.Hour).UTC().Format(time.RFC3339),
		"Not-After":  now.Add(60 * 24 * time.Hour).UTC().Format(time.RFC3339)}, Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	g := &apiGateway{now: now}
	if g.api, err = localapi.New(localapi.Config{Domains: []string{"a.example"}, Store: st, Keys: providerKeys{k}, Now: g.clock,
		MaxBindingLifetime: 30 * 24 * time.Hour, PublishLimits: g}); err != nil {
		t.Fatal(err)
	}
	const user = "bob"
	read := func(w http.ResponseWriter, r *http.Request, v wire.Unmarshaler) bool {
		body, err := io.ReadAll(r.Body)
		if err == nil {
			err = wire.Unmarshal(body, v, "request")
		}
		if err != nil {
			writeDSError(w, http.StatusBadRequest, moh.CodeMalformed)
			return false
		}
		return true
	}
	answer := func(w http.ResponseWriter, v wire.Marshaler, err error) {
		if err != nil {
			status := map[moh.Code]int{moh.CodeMalformed: 400, moh.CodeForbidden: 403, moh.CodeReplay: 409,
				moh.CodeQuotaExceeded: 413, moh.CodeRateLimited: 429}[moh.DSErrorOf(err).Code]
			if status == 0 {
				status = http.StatusServiceUnavailable
			}
			g.mu.Lock()
			if ra := g.retryAfter; ra != "" && status == http.StatusTooManyRequests {
				w.Header().Set("Retry-After", ra)
			}
			g.mu.Unlock()
			writeDSError(w, status, moh.DSErrorOf(err).Code)
			return
		}
		b, _ := wire.Marshal(v)
		w.Write(b)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /local/binding", func(w http.ResponseWriter, r *http.Request) {
		var req localapi.BindingRequest
		if read(w, r, &req) {
			b, err := g.api.IssueBinding(user, &req)
			var a localapi.BindingAnswer
			if err == nil {
				a.Binding = *b
			}
			answer(w, &a, err)
		}
	})
	mux.HandleFunc("GET /local/key_packages", func(w http.ResponseWriter, r *http.Request) {
		kps, err := g.api.ListKeyPackages(r.Context(), user, []byte(r.URL.Query().Get("client")))
		answer(w, &localapi.KeyPackageList{KeyPackages: kps}, err)
	})
	mux.HandleFunc("POST /local/key_packages", func(w http.ResponseWriter, r *http.Request) {
		var req localapi.PublishRequest
		if !read(w, r, &req) {
			return
		}
		g.mu.Lock()
		g.publishes++
		before := g.abortBefore > 0
		if before {
			g.abortBefore--
		}
		g.mu.Unlock()
		if before {
			panic(http.ErrAbortHandler)
		}
		kps, err := g.api.PublishKeyPackages(r.Context(), user, &req)
		g.mu.Lock()
		after := err == nil && g.abortAfter > 0
		if after {
			g.abortAfter--
		}
		g.mu.Unlock()
		if after {
			panic(http.ErrAbortHandler)
		}
		answer(w, &localapi.KeyPackageList{KeyPackages: kps}, err)
	})
	g.srv = httptest.NewTLSServer(mux)
	t.Cleanup(g.srv.Close)
	return g
}

func (g *apiGateway) clock() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.now
}

func (g *apiGateway) config() Config {
	return Config{Gateway: g.srv.URL, Local: g.srv.URL + "/local", HTTPClient: g.srv.Client(), Now: g.clock}
}

// current returns the refs of c's KeyPackages carrying its current
// binding: those whose keys c keeps, and those the gateway lists.
// wantRepublished runs an operation of c that completes its republish,
// and requires it done: nothing due, the gateway listing 11 KeyPackages
// carrying the new binding, c keeping the keys of those 11 and no others.
func (g *apiGateway) wantRepublished(t *testing.T, c *Client, when string) {
	t.Helper()
	if err := c.Publish(t.Context(), 0, false); err != nil {
		t.Fatal(err)
	}
	kept, listed := g.current(t, c)
	if c.rec.republishDue || len(listed) != 11 || len(kept) != 11 {
		t.Fatalf("%s: republish due %v, %d KeyPackages carrying the new binding at the gateway, %d kept; want done, 11, 11",
			when, c.rec.republishDue, len(listed), len(kept))
	}
	for ref := range kept {
		if !listed[ref] {
			t.Fatalf("%s: the client keeps the keys of KeyPackage %x, which the gateway never took", when, ref)
		}
	}
}

// claimAsCarol claims n KeyPackages of c as the local user carol, one
// claim each, and returns the references of those among taken.
func (g *apiGateway) claimAsCarol(t *testing.T, c *Client, n int, taken map[string]bool) map[string]bool {
	t.Helper()
	claimed := make(map[string]bool)
	for range n {
		kps, err := g.api.ClaimKeyPackages(t.Context(), "carol", &localapi.ClaimRequest{CipherSuite: uint16(DefaultCipherSuite), Target: []byte(c.URI())})
		if err != nil || len(kps) != 1 {
			t.Fatalf("claiming: %d, %v", len(kps), err)
		}
		var kp mls.KeyPackage
		if err := wire.Unmarshal(kps[0].KeyPackage, &kp, "KeyPackage"); err != nil {
			t.Fatal(err)
		}
		if ref, _ := kp.Ref(); taken[string(ref)] {
			claimed[string(ref)] = true
		}
	}
	return claimed
}

func (g *apiGateway) current(t *testing.T, c *Client) (kept, listed map[string]bool) {
	t.Helper()
	kept, listed = make(map[string]bool), make(map[string]bool)
	na := uint64(c.BindingNotAfter().Unix())
	add := func(set map[string]bool, enc []byte) {
		var kp mls.KeyPackage
		if err := wire.Unmarshal(enc, &kp, "KeyPackage"); err != nil {
			t.Fatal(err)
		}
		if kp.LeafNode.Lifetime.NotAfter < na {
			return
		}
		ref, err := kp.Ref()
		if err != nil {
			t.Fatal(err)
		}
		set[string(ref)] = true
	}
	c.mu.Lock()
	for _, k := range c.rec.keyPackages {
		add(kept, k.keyPackage)
	}
	c.mu.Unlock()
	kps, err := g.api.ListKeyPackages(t.Context(), "bob", []byte(c.URI()))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range kps {
		add(listed, e.KeyPackage)
	}
	return kept, listed
}

// renewedBob initialises bob's client 21 days before now, with 10
// single-use KeyPackages and a last-resort one, and moves the clock to
// now: his binding is due for renewal, and the republish that follows it
// replaces the KeyPackages.
func renewedBob(t *testing.T) (*apiGateway, *Client) {
	t.Helper()
	now := time.Now()
	g := newAPIGateway(t, now.Add(-21*24*time.Hour))
	bob, err := Init(t.Context(), filepath.Join(t.TempDir(), "bob"), g.config(), InitOptions{ClientURI: "mimi://a.example/d/bob/phone"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bob.Close() })
	g.mu.Lock()
	g.now = now
	g.mu.Unlock()
	return g, bob
}

// renewedBobRefused is renewedBob with a gateway that refuses every
// publish rate_limited with the Retry-After retryAfter (delta-seconds),
// its count of publish requests at 0.
func renewedBobRefused(t *testing.T, retryAfter string) (*apiGateway, *Client) {
	t.Helper()
	g, bob := renewedBob(t)
	g.mu.Lock()
	g.rateLimited, g.budget, g.retryAfter, g.publishes = true, 0, retryAfter, 0
	g.mu.Unlock()
	return g, bob
}

// TestRepublishAfterLostAnswers: the publish that replaces bob's
// KeyPackages after a renewal gets no answer (the connection closed after
// the request was sent) before the gateway took them, and so do the next
// attempts, one per operation. Each retry first lists what the gateway
// holds and sends the KeyPackages it does not list again rather than as
// many new ones: bob keeps the keys of one set whatever the number of lost
// answers, and once an answer comes, every key he keeps of a KeyPackage
// carrying the current binding is of one the gateway holds (before, each
// lost answer left the keys of 11 more KeyPackages the gateway never took,
// kept until the binding expired and piling up to 255).
func TestRepublishAfterLostAnswers(t *testing.T) {
	for _, lost := range []int{1, 5} {
		t.Run(strconv.Itoa(lost), func(t *testing.T) {
			g, bob := renewedBob(t)
			g.mu.Lock()
			g.abortBefore = lost
			g.mu.Unlock()
			for i := range lost {
				// The first operation renews the binding and tries the
				// republish; each tries it again. Their own work succeeds.
				if err := bob.Publish(t.Context(), 0, false); err != nil {
					t.Fatal(err)
				}
				if !bob.rec.republishDue {
					t.Fatalf("operation %d: the republish is done while its answers were lost", i)
				}
				if kept, listed := g.current(t, bob); len(kept) != 11 || len(listed) != 0 {
					t.Fatalf("after %d lost answers: the keys of %d KeyPackages carrying the new binding kept, %d at the gateway; want 11, 0",
						i+1, len(kept), len(listed))
				}
			}
			g.wantRepublished(t, bob, "once answered")
		})
	}
}

// TestRepublishStopsAtRateLimit: the replacing KeyPackages' answer is
// lost before the gateway took them, and bob's publish rate is then spent.
// The next operation sends the 11 unlisted ones again, and the gateway
// refuses them rate_limited: the retry stops there, one request, keeping
// their keys, and the republish stays due (before, it went on to send
// each of the 11 alone, and then 11 new ones, every one refused again:
// 13 requests against a rate limit). Once the rate allows, the next
// operation completes the republish with the same 11.
func TestRepublishStopsAtRateLimit(t *testing.T) {
	g, bob := renewedBob(t)
	g.mu.Lock()
	g.abortBefore = 1
	g.mu.Unlock()
	if err := bob.Publish(t.Context(), 0, false); err != nil {
		t.Fatal(err)
	}
	lostKeys, _ := g.current(t, bob)
	if len(lostKeys) != 11 {
		t.Fatalf("the keys of %d KeyPackages of the lost publish kept; want 11", len(lostKeys))
	}
	g.mu.Lock()
	g.rateLimited, g.publishes = true, 0
	g.mu.Unlock()
	if err := bob.Publish(t.Context(), 0, false); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	publishes := g.publishes
	g.rateLimited = false
	g.mu.Unlock()
	kept, listed := g.current(t, bob)
	if publishes != 1 || !bob.rec.republishDue || len(kept) != 11 || len(listed) != 0 {
		t.Fatalf("rate limited: %d publish requests, republish due %v, %d kept, %d at the gateway; want 1, due, 11, 0",
			publishes, bob.rec.republishDue, len(kept), len(listed))
	}
	for ref := range lostKeys {
		if !kept[ref] {
			t.Fatalf("the keys of KeyPackage %x were deleted while the gateway only refused it for the rate", ref)
		}
	}
	g.wantRepublished(t, bob, "once the rate allows")
}

// TestRepublishWaitsForRetryAfter: the publish that replaces bob's
// KeyPackages after a renewal is refused rate_limited with Retry-After:
// 600. The operations that follow within those 10 minutes do their own
// work without trying the republish again (before, each sent its list and
// publish requests into the same refusal); the first one after them
// completes it.
func TestRepublishWaitsForRetryAfter(t *testing.T) {
	g, bob := renewedBobRefused(t, "600")
	for i := range 3 {
		if err := bob.Publish(t.Context(), 0, false); err != nil {
			t.Fatalf("operation %d: %v", i, err)
		}
		g.mu.Lock()
		g.now = g.now.Add(time.Minute)
		g.mu.Unlock()
	}
	g.wantHeldOff(t, bob, "three operations within the Retry-After")
}

// wantHeldOff requires that what bob did within a Retry-After of 10
// minutes sent one publish request in all and left his republish due, and
// that, with the clock moved past the wait and the rate no longer
// limited, his next operation completes the republish.
func (g *apiGateway) wantHeldOff(t *testing.T, bob *Client, what string) {
	t.Helper()
	g.mu.Lock()
	publishes := g.publishes
	g.now = g.now.Add(8 * time.Minute)
	g.rateLimited = false
	g.mu.Unlock()
	if publishes != 1 || !bob.rec.republishDue {
		t.Fatalf("%s: %d publish requests, republish due %v; want 1, due", what, publishes, bob.rec.republishDue)
	}
	g.wantRepublished(t, bob, "once the Retry-After is over")
}

// TestRepublishHoldSurvivesReopen: the publish that replaces bob's
// KeyPackages after a renewal is refused rate_limited with Retry-After:
// 240, and bob's state directory is then opened again and again, as each
// mimictl command does. The clients opened within those 4 minutes do their
// own work without trying the republish again, and each says how long the
// hold has left, never more than the first wait (before, the wait lived
// only in the first Client, so every new one republished at once into the
// same refusal); the first one opened after the wait completes it.
func TestRepublishHoldSurvivesReopen(t *testing.T) {
	g, bob := renewedBobRefused(t, "240")
	if err := bob.Publish(t.Context(), 0, false); err != nil {
		t.Fatal(err)
	}
	if held := bob.RepublishHeld(); held != 4*time.Minute {
		t.Fatalf("after the refusal the republish is held for %v; want 4m0s", held)
	}
	for i := range 3 {
		g.mu.Lock()
		g.now = g.now.Add(time.Minute)
		g.mu.Unlock()
		bob = reopenWith(t, bob, g.config())
		if err := bob.Publish(t.Context(), 0, false); err != nil {
			t.Fatalf("operation %d: %v", i, err)
		}
		if held, want := bob.RepublishHeld(), time.Duration(3-i)*time.Minute; held != want {
			t.Fatalf("client %d opened from the saved state: the republish is held for %v; want %v", i, held, want)
		}
	}
	g.mu.Lock()
	publishes := g.publishes
	g.now = g.now.Add(time.Minute)
	g.rateLimited = false
	g.mu.Unlock()
	if publishes != 1 || !bob.rec.republishDue {
		t.Fatalf("three clients opened within the Retry-After: %d publish requests, republish due %v; want 1, due", publishes, bob.rec.republishDue)
	}
	bob = reopenWith(t, bob, g.config())
	if held := bob.RepublishHeld(); held != 0 {
		t.Fatalf("a client opened once the wait is over: the republish is held for %v; want 0", held)
	}
	g.wantRepublished(t, bob, "a client opened once the Retry-After is over")
}

// TestRepublishHoldBroughtBackOnce: the publish that replaces bob's
// KeyPackages after a renewal is refused rate_limited with Retry-After:
// 3600, and the clock is then set back by a day. The first Client opened
// from the state brings the hold, now further ahead than MaxRetryAfter,
// back to MaxRetryAfter after its opening and reports that, and runs an
// operation that writes nothing (as a recv with no messages does). A
// Client opened once that is over must not be held: before, the time
// brought back was kept only in the first Client's memory, so every later
// one brought the stored time back to the bound after its own opening and
// reported that.
func TestRepublishHoldBroughtBackOnce(t *testing.T) {
	g, bob := renewedBobRefused(t, "3600")
	if err := bob.Publish(t.Context(), 0, false); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	g.now = g.now.Add(-24 * time.Hour)
	g.mu.Unlock()
	bob = reopenWith(t, bob, g.config())
	if err := bob.Publish(t.Context(), 0, false); err != nil {
		t.Fatal(err)
	}
	if held := bob.RepublishHeld(); held != MaxRetryAfter {
		t.Fatalf("a client opened with the clock set back a day after the refusal: the republish is held for %v; want %v", held, MaxRetryAfter)
	}
	g.mu.Lock()
	g.now = g.now.Add(MaxRetryAfter)
	g.rateLimited = false
	publishes := g.publishes
	g.mu.Unlock()
	if publishes != 1 {
		t.Fatalf("within the hold: %d publish requests; want 1", publishes)
	}
	bob = reopenWith(t, bob, g.config())
	if held := bob.RepublishHeld(); held != 0 {
		t.Fatalf("a client opened once the hold the previous one reported is over: the republish is held for %v; want 0", held)
	}
	g.wantRepublished(t, bob, "a client opened once the reported hold is over")
}

// TestRepublishDoneDropsHold: the publish that replaces bob's KeyPackages
// after a renewal is refused with Retry-After: 3600, and RenewBinding,
// which tries at once, then completes it within that hour. The hold must
// go with the republish it held: kept, it would hold off the republish of
// a later renewal that the operations make within the hour (a binding
// renewed as it becomes due) although nothing refused that one.
func TestRepublishDoneDropsHold(t *testing.T) {
	g, bob := renewedBobRefused(t, "3600")
	if err := bob.Publish(t.Context(), 0, false); err != nil {
		t.Fatal(err)
	}
	if held := bob.RepublishHeld(); held != time.Hour {
		t.Fatalf("after the refusal: the republish is held for %v; want 1h", held)
	}
	g.mu.Lock()
	g.rateLimited = false
	g.now = g.now.Add(time.Minute)
	g.mu.Unlock()
	if err := bob.RenewBinding(t.Context()); err != nil {
		t.Fatal(err)
	}
	if bob.rec.republishDue || !bob.rec.republishAfter.IsZero() {
		t.Fatalf("after RenewBinding completed the republish: due %v, held until %v; want done and no hold", bob.rec.republishDue, bob.rec.republishAfter)
	}
	bob = reopenWith(t, bob, g.config())
	if !bob.rec.republishAfter.IsZero() {
		t.Fatalf("the state keeps a hold until %v after the republish completed", bob.rec.republishAfter)
	}
}

// reopenWith closes c and opens its state directory again with cfg, as a
// new mimictl command does.
func reopenWith(t *testing.T, c *Client, cfg Config) *Client {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	n, err := Open(c.dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// TestRenewBindingRepublishWaitsForRetryAfter: bob renews his binding
// himself (RenewBinding), and the publish that replaces his KeyPackages is
// refused rate_limited with Retry-After: 600. RenewBinding returns that
// refusal; the operations that follow within those 10 minutes do not try
// the republish again (before, RenewBinding left no wait for them, and
// each sent its list and publish requests into the same refusal); the
// first one after them completes it.
func TestRenewBindingRepublishWaitsForRetryAfter(t *testing.T) {
	g, bob := renewedBobRefused(t, "600")
	err := bob.RenewBinding(t.Context())
	if d, ok := RetryAfterOf(err); !ok || d != 10*time.Minute {
		t.Fatalf("RenewBinding: %v; want the republish's refusal with its Retry-After of 10 minutes", err)
	}
	for i := range 3 {
		g.mu.Lock()
		g.now = g.now.Add(time.Minute)
		g.mu.Unlock()
		if err := bob.Publish(t.Context(), 0, false); err != nil {
			t.Fatalf("operation %d: %v", i, err)
		}
	}
	g.wantHeldOff(t, bob, "RenewBinding and three operations within the Retry-After")
}

// TestRepublishStopsAtRateLimitOneByOne: the replacing KeyPackages were
// taken but the answer was lost, and carol claimed bob's 10 old
// single-use KeyPackages and 5 of the new ones. His next operation sends
// the 5 unlisted ones again, refused together (replay), and then one by
// one, with his publish rate leaving room for one more: the second alone
// is refused rate_limited, and the retry stops there, the keys kept and
// the republish due (before, it sent the other 4 alone and then 5 new
// ones, every one refused again). The gateway is one whose refused
// publishes spend the rate (refusalsSpend): one that gives them back
// never refuses the second alone.
func TestRepublishStopsAtRateLimitOneByOne(t *testing.T) {
	g, bob := renewedBob(t)
	g.mu.Lock()
	g.abortAfter = 1
	g.mu.Unlock()
	if err := bob.Publish(t.Context(), 0, false); err != nil {
		t.Fatal(err)
	}
	_, taken := g.current(t, bob)
	if claimed := g.claimAsCarol(t, bob, 15, taken); len(claimed) != 5 {
		t.Fatalf("%d of the new KeyPackages claimed; want 5", len(claimed))
	}
	g.mu.Lock()
	g.rateLimited, g.budget, g.publishes, g.refusalsSpend = true, 5+1, 0, true
	g.mu.Unlock()
	if err := bob.Publish(t.Context(), 0, false); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	publishes := g.publishes
	g.mu.Unlock()
	kept, listed := g.current(t, bob)
	if publishes != 3 || !bob.rec.republishDue || len(kept) != 11 || len(listed) != 6 {
		t.Fatalf("rate limited: %d publish requests, republish due %v, %d kept, %d at the gateway; want 3 (5 together, 2 alone), due, 11, 6",
			publishes, bob.rec.republishDue, len(kept), len(listed))
	}
}

// TestRepublishKeepsKeysOfClaimed: the gateway took the replacing
// KeyPackages but the answer was lost, and carol claimed bob's 10 old
// single-use KeyPackages and 2 of the new ones before his next operation.
// The 2 are not listed any more, and sent again the gateway answers
// replay: their keys stay (a Welcome for them may come), and the retry
// publishes 2 new ones in their place; its answer is lost too, before the
// gateway took them. The next retry sends the 4 unlisted ones again, is
// refused (replay) and sends them one by one: the gateway takes the 2 it
// never got, and bob keeps the keys of the 2 claimed ones and of the 11 it
// holds, no more (before, the second retry published 2 more and the keys
// of the 2 it never took stayed).
func TestRepublishKeepsKeysOfClaimed(t *testing.T) {
	g, bob := renewedBob(t)
	g.mu.Lock()
	g.abortAfter = 1
	g.mu.Unlock()
	if err := bob.Publish(t.Context(), 0, false); err != nil {
		t.Fatal(err)
	}
	_, taken := g.current(t, bob)
	if len(taken) != 11 || !bob.rec.republishDue {
		t.Fatalf("after the lost answer: %d new KeyPackages at the gateway, republish due %v; want 11, due", len(taken), bob.rec.republishDue)
	}
	claimed := g.claimAsCarol(t, bob, 12, taken)
	if len(claimed) != 2 {
		t.Fatalf("%d of the new KeyPackages claimed; want 2", len(claimed))
	}
	g.mu.Lock()
	g.abortBefore = 1
	g.mu.Unlock()
	for range 2 {
		if err := bob.Publish(t.Context(), 0, false); err != nil {
			t.Fatal(err)
		}
	}
	kept, listed := g.current(t, bob)
	for ref := range claimed {
		if !kept[ref] || listed[ref] {
			t.Fatalf("claimed KeyPackage %x: keys kept %v, available again %v; want kept, not available", ref, kept[ref], listed[ref])
		}
	}
	if bob.rec.republishDue || len(listed) != 11 || len(kept) != 13 {
		t.Fatalf("republish due %v, %d at the gateway, %d kept; want done, 11 (2 new), 13", bob.rec.republishDue, len(listed), len(kept))
	}
}

// TestRepublishDropsKeysOverQuota: the replacing KeyPackages' answer is
// lost before the gateway took them, and KeyPackages of bob published
// since (here straight through the API) fill the 256 the gateway holds of
// a client. Sent again, each single-use one is refused as over the quota:
// the gateway never took them, and their keys go (the last-resort one
// replaces the old one and is taken).
func TestRepublishDropsKeysOverQuota(t *testing.T) {
	g, bob := renewedBob(t)
	g.mu.Lock()
	g.abortBefore = 1
	g.mu.Unlock()
	if err := bob.Publish(t.Context(), 0, false); err != nil {
		t.Fatal(err)
	}
	lostKeys, _ := g.current(t, bob)
	if len(lostKeys) != 11 {
		t.Fatalf("the keys of %d KeyPackages of the lost publish kept; want 11", len(lostKeys))
	}
	old, err := g.api.ListKeyPackages(t.Context(), "bob", []byte(bob.URI()))
	if err != nil {
		t.Fatal(err)
	}
	req := &localapi.PublishRequest{ClientURI: []byte(bob.URI())}
	for range localapi.MaxPublish - len(old) {
		_, st, err := bob.newKeyPackage(false)
		if err != nil {
			t.Fatal(err)
		}
		req.KeyPackages = append(req.KeyPackages, localapi.KeyPackageEntry{KeyPackage: st.keyPackage})
	}
	if _, err := g.api.PublishKeyPackages(t.Context(), "bob", req); err != nil {
		t.Fatal(err)
	}
	if err := bob.Publish(t.Context(), 0, false); err != nil {
		t.Fatal(err)
	}
	kept, listed := g.current(t, bob)
	dropped := 0
	for ref := range lostKeys {
		switch {
		case !kept[ref]:
			dropped++
		case !listed[ref]:
			t.Fatalf("bob keeps the keys of KeyPackage %x, which the gateway refused over its quota", ref)
		}
	}
	if dropped != 10 {
		t.Fatalf("the keys of %d KeyPackages the gateway refused deleted; want 10", dropped)
	}
}
