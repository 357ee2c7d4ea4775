package moh

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestErrorfKeepsCausesOutOfMessage checks that a %w operand, whose text is
// internal (paths, addresses, secrets), never reaches the peer-visible
// message, while the cause stays reachable for logs and errors.Is.
func TestErrorfKeepsCausesOutOfMessage(t *testing.T) {
	secret := errors.New("open /var/lib/mimi/keys/3f.pem: token=hunter2")
	other := errors.New("dial tcp 10.0.0.7:5432: connection refused")
	for _, tc := range []struct {
		name    string
		format  string
		args    []any
		want    string
		causes  []error
		wantErr bool // Err is set
	}{
		{"plain", "body exceeds the %d byte limit", []any{64}, "body exceeds the 64 byte limit", nil, false},
		{"wrapped", "reading body: %w", []any{secret}, "reading body: internal error", []error{secret}, true},
		{"wrapped with flags", "reading body: %+w", []any{secret}, "reading body: internal error", []error{secret}, true},
		{"wrapped after others", "%s of %d bytes: %w", []any{"upload", 7, secret}, "upload of 7 bytes: internal error", []error{secret}, true},
		{"two causes", "%w; then %w", []any{secret, other}, "internal error; then internal error", []error{secret, other}, true},
		{"explicit index", "%[2]s: %[1]w", []any{secret, "reading"}, "reading: internal error", []error{secret}, true},
		{"star width", "%*d: %w", []any{3, 7, secret}, "  7: internal error", []error{secret}, true},
		{"percent literal", "100%% done: %w", []any{secret}, "100% done: internal error", []error{secret}, true},
		{"error as %v stays the caller's choice", "got %v", []any{errors.New("short read")}, "got short read", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := Errorf(CodeMalformed, tc.format, tc.args...)
			if e.Message != tc.want {
				t.Errorf("Message = %q, want %q", e.Message, tc.want)
			}
			ds := DSErrorOf(fmt.Errorf("handling request: %w", e))
			for _, leak := range []string{"hunter2", "/var/lib", "10.0.0.7"} {
				if strings.Contains(string(ds.Message), leak) || strings.Contains(e.Error(), leak) {
					t.Errorf("peer-visible text %q leaks %q", ds.Message, leak)
				}
			}
			if (e.Err != nil) != tc.wantErr {
				t.Errorf("Err = %v, want set %v", e.Err, tc.wantErr)
			}
			for _, c := range tc.causes {
				if !errors.Is(e, c) {
					t.Errorf("errors.Is(e, %q) = false", c)
				}
				if e.Err == nil || !strings.Contains(e.Err.Error(), c.Error()) {
					t.Errorf("Err %q lost the cause text %q for logs", e.Err, c)
				}
			}
		})
	}
}
