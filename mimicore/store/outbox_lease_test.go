package store

import (
	"strings"
	"testing"
)

// TestOutboxLeaseName checks that every destination's drain lease has a
// valid lease name of its own.
func TestOutboxLeaseName(t *testing.T) {
	long := strings.Repeat("a", MaxDomainSize)
	for _, tc := range []struct {
		name, destination, want string
	}{
		{"domain", "b.example", "outbox:b.example"},
		{"backend", BackendDestination, "outbox:@backend"},
		{"longest that fits", long[:MaxLeaseNameSize-len("outbox:")], "outbox:" + long[:MaxLeaseNameSize-len("outbox:")]},
		{"too long, hashed", long, "outbox#"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := OutboxLeaseName(tc.destination)
			if len(got) > MaxLeaseNameSize || !strings.HasPrefix(got, tc.want) || strings.HasSuffix(tc.want, "#") && len(got) != len("outbox#")+64 {
				t.Fatalf("OutboxLeaseName(%q) = %q, want %q", tc.destination, got, tc.want)
			}
		})
	}
	if OutboxLeaseName(long) == OutboxLeaseName(long[1:]+"b") {
		t.Fatal("two long destinations share a lease name")
	}
}
