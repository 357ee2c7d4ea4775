package provider

import "testing"

// TestRetryAfterSeconds checks which Retry-After values of a hub's answer
// a relay passes on: a delay in whole seconds of at most nine digits, not
// an HTTP date, nothing else.
func TestRetryAfterSeconds(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"seconds", "120", "120"},
		{"zero", "0", "0"},
		{"nine digits", "999999999", "999999999"},
		{"empty", "", ""},
		{"ten digits", "1000000000", ""},
		{"an HTTP date", "Wed, 21 Oct 2015 07:28:00 GMT", ""},
		{"negative", "-1", ""},
		{"with a header after it", "1\r\nSet-Cookie: x", ""},
		{"spaces", " 5", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := RetryAfterSeconds(tc.in); got != tc.want {
				t.Fatalf("RetryAfterSeconds(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}
