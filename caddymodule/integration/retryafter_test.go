package integration

import (
	"crypto/tls"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	mimiclient "github.com/caddy-mimi/caddy-mimi/mimicore/client"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/policy/admission"
)

// TestGoClientRetryAfterNotRetried: a publish of KeyPackages (not safe to
// repeat blindly) over the user's publish rate is refused 429
// rate_limited, and the client returns that refusal at once with the wait
// the gateway's Retry-After asked for: with one KeyPackage per 12 hours
// and the burst spent, about 12 hours (the gateway rounds up to whole
// seconds; the test cannot take an hour).
func TestGoClientRetryAfterNotRetried(t *testing.T) {
	startClientSiteWith(t, "", "\t\t\tmax_key_packages_per_client 8\n\t\t\tpublish_rate 1/12h\n\t\t\tpublish_burst 8\n")
	bob := newGoClient(t, "bob", "phone") // 3 single-use KeyPackages and a last-resort one: 4 of the 8
	err := bob.Publish(t.Context(), 5, false)
	var e *mimiclient.Error
	if !errors.As(err, &e) || e.Status != http.StatusTooManyRequests || e.Code != moh.CodeRateLimited {
		t.Fatalf("publishing 5 more KeyPackages: %v, want 429 rate_limited", err)
	}
	if e.RetryAfter <= 11*time.Hour || e.RetryAfter > 12*time.Hour {
		t.Fatalf("the refusal's RetryAfter is %v, want the 12 hours (less the test's own time) the gateway asked for", e.RetryAfter)
	}
	if d, ok := mimiclient.RetryAfterOf(err); !ok || d != e.RetryAfter {
		t.Fatalf("RetryAfterOf: %v, %v; want %v", d, ok, e.RetryAfter)
	}
	if n, err := bob.PublishedKeyPackages(t.Context()); err != nil || n != 4 {
		t.Fatalf("bob's published KeyPackages: %d, %v; want the 4 of his init", n, err)
	}

	// mimictl says how long to wait, and fails as for any refusal.
	dir := t.TempDir()
	mimictl := mimictlAs(t, dir, clientHTTP())
	mimictl("carol", "carol", 0, "client", "init", "-key-packages", "3", moh.ClientURI("m.localhost", "carol", "phone"))
	_, stderr := mimictl("carol", "carol", 1, "client", "publish", "-key-packages", "4") // and a last-resort one: 5
	if !regexp.MustCompile(`(?m)^mimictl: rate limited: retry after (11h[0-9]+m[0-9]+s|12h0m0s)$`).MatchString(stderr) {
		t.Fatalf("mimictl client publish over the publish rate printed %q, want a line saying to retry after about 12h", stderr)
	}
}

// retryZones are m.localhost's rate-limit zones of
// TestGoClientRetryAfterWaited: one welcome_info every 3 s from an
// address, one group operation every 3 s of a member.
const retryZones = `		rate_limit retry_welcome {
			key remote_ip
			rate 1/3s
			endpoints welcome_information
		}
		rate_limit retry_send {
			key member
			rate 1/3s
			endpoints group_operation
		}
`

// limited returns how many requests zone refused rate_limited so far
// (caddy_mimi_policy_decisions_total).
func limited(t *testing.T, zone string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := reg.Register(admission.Collectors()[0]); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, f := range families {
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if f.GetName() == "caddy_mimi_policy_decisions_total" && labels["zone"] == zone && labels["outcome"] == "limited" {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}

// TestGoClientRetryAfterWaited: requests that are safe to repeat, refused
// 429 rate_limited with a Retry-After, are sent again once the wait is
// over, and the call succeeds: bob's welcome_info, asked while the
// address's welcome_info budget is spent, and bob's second message, sent
// while his group operation budget is spent (the kept message, signed
// again). The zones' counters show each refusal that was waited out.
func TestGoClientRetryAfterWaited(t *testing.T) {
	startClientSiteWith(t, retryZones, "")
	alice := newGoClient(t, "alice", "phone")
	bob := newGoClient(t, "bob", "phone")
	ctx := t.Context()
	gid, err := alice.CreateGroup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.Add(ctx, gid, "mimi://m.localhost/u/bob"); err != nil {
		t.Fatal(err)
	}

	// Spend the address's welcome_info budget until a refusal says it
	// is spent; then bob's welcome_info is refused, waits and joins.
	spent := limited(t, "retry_welcome")
	for i := 0; limited(t, "retry_welcome") == spent; i++ {
		if i == 5 {
			t.Fatal("five welcome_info requests in a row were admitted")
		}
		resp, err := client(tls.VersionTLS13).Post("https://m.localhost:9443/welcome_information", "application/octet-stream", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	before := limited(t, "retry_welcome")
	expectEvent(t, "bob", receive(t, bob, 1)[0], mimiclient.EventJoined, gid, "", "")
	if after := limited(t, "retry_welcome"); after <= before {
		t.Fatalf("bob's welcome_info was not refused (%v refusals before his receive, %v after): the test did not run what it checks", before, after)
	}

	// bob's first message spends his group operation budget; the second
	// is refused, waited out and sent.
	if err := bob.Send(ctx, gid, []byte("one")); err != nil {
		t.Fatal(err)
	}
	before = limited(t, "retry_send")
	if err := bob.Send(ctx, gid, []byte("two")); err != nil {
		t.Fatalf("bob's second message: %v", err)
	}
	if after := limited(t, "retry_send"); after <= before {
		t.Fatalf("bob's second message was not refused (%v refusals before, %v after): the test did not run what it checks", before, after)
	}
	if bob.PendingMessage(gid) {
		t.Fatal("bob's second message is still kept after it was sent")
	}
	evs := receive(t, alice, 2)
	expectEvent(t, "alice", evs[0], mimiclient.EventMessage, gid, bob.URI(), "one")
	expectEvent(t, "alice", evs[1], mimiclient.EventMessage, gid, bob.URI(), "two")
	if evs, err := alice.Receive(ctx, 0); err != nil || len(evs) != 0 {
		t.Fatalf("alice's queue after the two messages: %d events, %v; want none (each message once)", len(evs), err)
	}
}

// TestMimictlRepublishHeld: carol's KeyPackages are to be replaced after
// `mimictl client renew`, and the gateway refuses that publish over her
// publish rate with a Retry-After of hours. The next mimictl command, a
// new process on her state directory, does not try the publish again
// (before, the wait lived only in the command that was refused, so each
// command published again into the same refusal): it says how long the
// hold has left, the refusal's hours less what has passed, which no
// command after it shortens.
func TestMimictlRepublishHeld(t *testing.T) {
	startClientSiteWith(t, "", "\t\t\tmax_key_packages_per_client 16\n\t\t\tpublish_rate 1/12h\n\t\t\tpublish_burst 16\n")
	dir := t.TempDir()
	mimictl := mimictlAs(t, dir, clientHTTP())
	mimictl("carol", "carol", 0, "client", "init", "-key-packages", "3", moh.ClientURI("m.localhost", "carol", "phone"))   // 4 of the 16
	mimictl("carol", "laptop", 0, "client", "init", "-key-packages", "7", moh.ClientURI("m.localhost", "carol", "laptop")) // 8 more
	// A renewal in a later second gets a binding that outlasts the first,
	// whose KeyPackages are then replaced: 11, over the 4 left (and
	// within the phone's 16).
	for s := time.Now().Unix(); time.Now().Unix() == s; {
		time.Sleep(50 * time.Millisecond)
	}
	_, stderr := mimictl("carol", "carol", 1, "client", "renew")
	if !regexp.MustCompile(`(?m)^mimictl: rate limited: retry after [0-9hms]+$`).MatchString(stderr) || strings.Contains(stderr, "is held") {
		t.Fatalf("mimictl client renew over the publish rate printed %q, want the refusal's wait alone", stderr)
	}
	_, stderr = mimictl("carol", "carol", 0, "recv")
	m := regexp.MustCompile(`(?m)^mimictl: replacing the KeyPackages of the previous binding is held: retry after ([0-9hms]+)$`).FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("mimictl recv after the refused republish printed %q, want a line saying how long it is held", stderr)
	}
	// The refusal asked for hours (publish_rate 1/12h, the burst spent;
	// the client takes at most MaxRetryAfter of it): more than the
	// client's MaxRetryWait, which bounds waits within a call and not the
	// hold.
	if d, err := time.ParseDuration(m[1]); err != nil || d <= mimiclient.DefaultMaxRetryWait || d > mimiclient.MaxRetryAfter {
		t.Fatalf("mimictl recv says the republish is held for %s; want the refusal's wait, over %v and at most %v", m[1], mimiclient.DefaultMaxRetryWait, mimiclient.MaxRetryAfter)
	}
}
