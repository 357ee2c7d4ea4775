package caddyopts

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestBlock(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		repeatable  []string
		want        []string // the options yielded, in order
		err         string   // the error that ends the block, if any
	}{
		{"empty", "s3 {\n}", nil, nil, ""},
		{"options with arguments", "s3 {\n a 1 2\n b\n c 3\n}", nil, []string{"a", "b", "c"}, ""},
		{"duplicate", "s3 {\n a 1\n b\n a 2\n c\n}", nil, []string{"a", "b"}, "duplicate s3 option 'a'"},
		{"repeatable", "s3 {\n a 1\n a 2\n b\n}", []string{"a"}, []string{"a", "a", "b"}, ""},
		{"nested blocks are the option's", "s3 {\n a {\n  a\n }\n b\n}", nil, []string{"a", "b"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := caddyfile.NewTestDispenser(tc.input)
			d.Next()
			var got []string
			var gotErr error
			for opt, err := range Block(d, "s3", tc.repeatable...) {
				if err != nil {
					gotErr = err
					break
				}
				got = append(got, opt)
				if opt == "a" && strings.Contains(tc.input, "a {") {
					for nesting := d.Nesting(); d.NextBlock(nesting); {
					}
				} else {
					d.RemainingArgs()
				}
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Fatalf("options %q, want %q", got, tc.want)
			}
			if (gotErr == nil) != (tc.err == "") || gotErr != nil && !strings.Contains(gotErr.Error(), tc.err) {
				t.Fatalf("error %v, want %q", gotErr, tc.err)
			}
		})
	}
}

// TestSecret checks that a secret option takes one argument and that its
// error never quotes the value.
func TestSecret(t *testing.T) {
	const secret = "0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		name, input string
		err         string // empty: accepted
	}{
		{"one argument", "key " + secret, ""},
		{"none", "key", "key takes one argument"},
		{"a second argument", "key " + secret + " extra", "key takes one argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := caddyfile.NewTestDispenser(tc.input)
			d.Next()
			var v string
			err := Secret(d, &v)
			switch {
			case tc.err == "" && (err != nil || v != secret):
				t.Fatalf("Secret = %q, %v, want the secret", v, err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("Secret error = %v, want it to mention %q", err, tc.err)
			case err != nil && strings.Contains(err.Error(), secret):
				t.Fatalf("the error quotes the secret: %v", err)
			}
		})
	}
}
