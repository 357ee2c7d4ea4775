package caddymodule

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestSecretOptionsNotQuoted gives each Caddyfile option that holds a
// secret a second argument after the secret: the error names the option
// and never quotes the secret, which Caddy prints and logs.
func TestSecretOptionsNotQuoted(t *testing.T) {
	const secret = "0123456789abcdef0123456789abcdef"
	mimi := func(input string) error {
		return new(Gateway).UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	}
	storage := func(input string) error {
		_, err := adaptStorage(input)
		return err
	}
	for _, tc := range []struct {
		name  string
		parse func(string) error
		input string
	}{
		{"key_secret", mimi, "mimi {\n key_secret " + secret + " extra\n}"},
		{"delivery backend key", mimi, "mimi {\n delivery backend http://127.0.0.1:9000/ {\n key " + secret + " extra\n }\n}"},
		{"rate_limit redis password", mimi, "mimi {\n rate_limit z {\n key remote_ip\n rate 1/1s\n redis 127.0.0.1:6379 {\n password " + secret + " extra\n }\n }\n}"},
		{"privacy_pass secret", mimi, "mimi {\n privacy_pass {\n context window\n secret " + secret + " extra\n }\n}"},
		{"attachments forward key", storage, "storage forward https://l.example/a/ {\n key " + secret + " extra\n}"},
		{"attachments s3 access_key", storage, "storage s3 {\n endpoint e\n bucket b\n access_key " + secret + " extra\n secret_key s\n}"},
		{"attachments s3 secret_key", storage, "storage s3 {\n endpoint e\n bucket b\n access_key a\n secret_key " + secret + " extra\n}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.parse(tc.input)
			if err == nil || !strings.Contains(err.Error(), "takes one argument") {
				t.Fatalf("err = %v, want a refusal of the second argument", err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("the error quotes the secret: %v", err)
			}
		})
	}
}
