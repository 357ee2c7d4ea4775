package caddymodule

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestUnmarshalDelivery parses the delivery option's forms.
func TestUnmarshalDelivery(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        *Delivery
	}{
		{"local queues", "mimi {\n delivery local_queues\n}", &Delivery{Target: "local_queues"}},
		{"backend with a placeholder key", "mimi {\n delivery backend http://127.0.0.1:9000/mimi {\n key {env.MIMI_BACKEND_KEY}\n timeout 3s\n }\n}",
			&Delivery{Target: "backend", URL: "http://127.0.0.1:9000/mimi", Key: "{env.MIMI_BACKEND_KEY}", Timeout: caddy.Duration(3 * time.Second)}},
		{"backend with a key file", "mimi {\n delivery backend https://backend.example/mimi {\n key_file /etc/mimi/backend.key\n }\n}",
			&Delivery{Target: "backend", URL: "https://backend.example/mimi", KeyFile: "/etc/mimi/backend.key"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := new(Gateway)
			if err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input)); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(g.Delivery, tc.want) {
				t.Fatalf("parsed %+v, want %+v", g.Delivery, tc.want)
			}
		})
	}
}

// TestUnmarshalDeliveryErrors checks that every malformed delivery option
// is refused with an error naming the fault, and never quoting the key.
func TestUnmarshalDeliveryErrors(t *testing.T) {
	const secret = "a-secret-key-of-at-least-32-bytes!"
	for _, tc := range []struct{ name, input, want string }{
		{"no target", "mimi {\n delivery\n}", "wrong argument count"},
		{"unknown target", "mimi {\n delivery carrier_pigeon\n}", "unrecognized delivery target 'carrier_pigeon'"},
		{"local queues with a block", "mimi {\n delivery local_queues {\n key x\n }\n}", "no argument and no block"},
		{"backend without url", "mimi {\n delivery backend {\n key x\n }\n}", "wrong argument count"},
		{"backend without key", "mimi {\n delivery backend http://127.0.0.1:9000/\n}", "exactly one of key and key_file"},
		{"backend with both keys", "mimi {\n delivery backend http://127.0.0.1:9000/ {\n key " + secret + "\n key_file /k\n }\n}", "exactly one of key and key_file"},
		{"backend with a bad url", "mimi {\n delivery backend 127.0.0.1:9000 {\n key " + secret + "\n }\n}", "not an http or https URL"},
		{"key with two arguments", "mimi {\n delivery backend http://127.0.0.1:9000/ {\n key " + secret + " extra\n }\n}", "key takes one argument"},
		{"duplicate key", "mimi {\n delivery backend http://127.0.0.1:9000/ {\n key " + secret + "\n key " + secret + "\n }\n}", "duplicate delivery option 'key'"},
		{"unknown option", "mimi {\n delivery backend http://127.0.0.1:9000/ {\n key " + secret + "\n bogus\n }\n}", "unrecognized delivery option 'bogus'"},
		{"bad timeout", "mimi {\n delivery backend http://127.0.0.1:9000/ {\n key " + secret + "\n timeout soon\n }\n}", "invalid timeout duration 'soon'"},
		{"twice", "mimi {\n delivery local_queues\n delivery local_queues\n}", "duplicate mimi option 'delivery'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := new(Gateway).UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("the error quotes the key: %v", err)
			}
		})
	}
}

// TestDeliveryBackendKey checks how the key is read: from a file without
// surrounding white space, from a placeholder, and that a short key is
// refused without being shown.
func TestDeliveryBackendKey(t *testing.T) {
	const key = "0123456789abcdef0123456789abcdef"
	file := filepath.Join(t.TempDir(), "backend.key")
	if err := os.WriteFile(file, []byte("  "+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MIMI_TEST_BACKEND_KEY", key)
	t.Setenv("MIMI_TEST_SHORT_KEY", "short-secret")
	for _, tc := range []struct {
		name string
		d    *Delivery
		want string // the key, or a part of the error
		ok   bool
	}{
		{"none", nil, "", true},
		{"local queues", &Delivery{Target: "local_queues"}, "", true},
		{"key file", &Delivery{Target: "backend", URL: "http://127.0.0.1:9/", KeyFile: file}, key, true},
		{"env placeholder", &Delivery{Target: "backend", URL: "http://127.0.0.1:9/", Key: "{env.MIMI_TEST_BACKEND_KEY}"}, key, true},
		{"file placeholder", &Delivery{Target: "backend", URL: "http://127.0.0.1:9/", Key: "{file." + file + "}"}, key, true},
		{"short key", &Delivery{Target: "backend", URL: "http://127.0.0.1:9/", Key: "{env.MIMI_TEST_SHORT_KEY}"}, "at least 32", false},
		{"unset placeholder", &Delivery{Target: "backend", URL: "http://127.0.0.1:9/", Key: "{env.MIMI_TEST_UNSET_BACKEND_KEY}"},
			"{env.MIMI_TEST_UNSET_BACKEND_KEY}", false},
		{"missing file", &Delivery{Target: "backend", URL: "http://127.0.0.1:9/", KeyFile: file + ".missing"}, "key_file", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.d.backend()
			switch {
			case !tc.ok:
				if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "short-secret") {
					t.Fatalf("err = %v, want it to mention %q and not show the key", err, tc.want)
				}
			case err != nil:
				t.Fatal(err)
			case tc.want == "":
				if b != nil {
					t.Fatalf("a backend %+v for the local queues", b)
				}
			case string(b.Key) != tc.want:
				t.Fatalf("key %q, want %q", b.Key, tc.want)
			}
		})
	}
}
