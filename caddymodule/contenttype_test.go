package caddymodule

import (
	"net/http"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

func TestCheckContentType(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header []string // nil: no Content-Type
		ok     bool
	}{
		{"exact", []string{"application/octet-stream"}, true},
		{"upper case", []string{"Application/Octet-Stream"}, true},
		{"with a parameter", []string{"application/octet-stream; charset=binary"}, true},
		{"spaces around", []string{" application/octet-stream "}, true},
		{"other type", []string{"text/plain"}, false},
		{"prefix of it", []string{"application/octet"}, false},
		{"longer", []string{"application/octet-streams"}, false},
		{"malformed parameter", []string{"application/octet-stream; =x"}, false},
		{"empty", []string{""}, false},
		{"none", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &http.Request{Header: http.Header{}}
			if tc.header != nil {
				r.Header["Content-Type"] = tc.header
			}
			err := checkContentType(r, contentType)
			if (err == nil) != tc.ok {
				t.Fatalf("checkContentType(%q) = %v, want ok %v", tc.header, err, tc.ok)
			}
			if err != nil && moh.DSErrorOf(err).Code != moh.CodeUnsupportedMedia {
				t.Errorf("code %v, want unsupported media", moh.DSErrorOf(err).Code)
			}
		})
	}
}
