package integration

import (
	"errors"
	"net/http"
	"testing"
	"time"

	mimiclient "github.com/caddy-mimi/caddy-mimi/mimicore/client"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
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
}
