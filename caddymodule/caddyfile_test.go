package caddymodule

import (
	"context"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	g := new(Gateway)
	err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`mimi {
		provider example.com example.net
		ds_domain ds.example.com:8443
		data_dir /var/lib/mimi
		max_body 2MiB
		queue_max_messages 50000
		queue_max_bytes 1GiB
		key_rotation 10d
		key_overlap 72h
		key_scheme ecdsa_secp256r1_sha256
		trusted_tls_proxies 10.0.0.0/8 192.0.2.1
		federation {
			allow_private_addresses
			allow_ports 8443 9443
			resolve peer.example 127.0.0.1:9443
			resolve ds.peer.example 127.0.0.1:9444
			root_ca /etc/mimi/root.pem
			trust_pki_ca local
			timeout 3s
			max_backoff 10m
			give_up_after 48h
			max_backlog_messages 5000
			max_backlog_bytes 64MiB
		}
		relay_limit {
			rate 5/1s
			burst 8
			hub_rate 600/1m
			hub_burst 50
		}
		unchecked_client_bindings
	}`))
	if err != nil {
		t.Fatal(err)
	}
	want := &Gateway{
		Providers:         []string{"example.com", "example.net"},
		DSDomain:          "ds.example.com:8443",
		DataDir:           "/var/lib/mimi",
		MaxBody:           2 << 20,
		QueueMaxMessages:  50000,
		QueueMaxBytes:     1 << 30,
		KeyRotation:       caddy.Duration(10 * 24 * time.Hour),
		KeyOverlap:        caddy.Duration(72 * time.Hour),
		KeyScheme:         "ecdsa_secp256r1_sha256",
		TrustedTLSProxies: []string{"10.0.0.0/8", "192.0.2.1"},
		Federation: &Federation{
			AllowPrivateAddresses: true,
			AllowedPorts:          []int{8443, 9443},
			Resolve:               map[string]string{"peer.example": "127.0.0.1:9443", "ds.peer.example": "127.0.0.1:9444"},
			RootCAFiles:           []string{"/etc/mimi/root.pem"},
			TrustPKICAs:           []string{"local"},
			Timeout:               caddy.Duration(3 * time.Second),
			MaxBackoff:            caddy.Duration(10 * time.Minute),
			GiveUpAfter:           caddy.Duration(48 * time.Hour),
			MaxBacklogMessages:    5000,
			MaxBacklogBytes:       64 << 20,
		},
		RelayLimit: &RelayLimit{Events: 5, Window: caddy.Duration(time.Second), Burst: 8,
			HubEvents: 600, HubWindow: caddy.Duration(time.Minute), HubBurst: 50},
		UncheckedClientBindings: true,
	}
	if !reflect.DeepEqual(g, want) {
		t.Fatalf("parsed %+v\nwant   %+v", g, want)
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct{ input, want string }{
		{"mimi extra", "wrong argument count"},
		{"mimi {\n provider\n}", "wrong argument count"},
		{"mimi {\n provider a.example\n provider b.example\n}", "duplicate mimi option 'provider'"},
		{"mimi {\n max_body lots\n}", "invalid max_body 'lots'"},
		{"mimi {\n max_body 1GiB\n}", "invalid max_body '1GiB'"},
		{"mimi {\n queue_max_messages 0\n}", "invalid queue_max_messages '0'"},
		{"mimi {\n queue_max_messages many\n}", "invalid queue_max_messages 'many'"},
		{"mimi {\n queue_max_bytes 65GiB\n}", "invalid queue_max_bytes '65GiB'"},
		{"mimi {\n key_rotation soon\n}", "invalid key_rotation duration 'soon'"},
		{"mimi {\n key_rotation 0s\n}", "invalid key_rotation duration '0s': want a positive duration"},
		{"mimi {\n key_overlap 0\n}", "invalid key_overlap duration '0': want a positive duration"},
		{"mimi {\n key_overlap -48h\n}", "invalid key_overlap duration '-48h': want a positive duration"},
		{"mimi {\n federation {\n max_backoff 0s\n }\n}", "invalid max_backoff duration '0s': want a positive duration"},
		{"mimi {\n federation {\n give_up_after 0s\n }\n}", "invalid give_up_after duration '0s': want a positive duration"},
		{"mimi {\n key_scheme rsa\n}", "key_scheme"},
		{"mimi {\n trusted_tls_proxies 10.0.0.0/33\n}", "invalid trusted_tls_proxies"},
		{"mimi {\n federation {\n allow_ports 0\n }\n}", "invalid port '0'"},
		{"mimi {\n federation {\n resolve a.example\n }\n}", "wrong argument count"},
		{"mimi {\n federation {\n timeout 1s\n timeout 2s\n }\n}", "duplicate federation option 'timeout'"},
		{"mimi {\n federation {\n bogus\n }\n}", "unrecognized federation option 'bogus'"},
		{"mimi {\n federation {\n max_backlog_messages 0\n }\n}", "invalid max_backlog_messages '0'"},
		{"mimi {\n federation {\n max_backlog_messages lots\n }\n}", "invalid max_backlog_messages 'lots'"},
		{"mimi {\n federation {\n max_backlog_bytes 1MiB\n }\n}", "invalid max_backlog_bytes '1MiB'"},
		{"mimi {\n federation {\n max_backlog_bytes 2TiB\n }\n}", "invalid max_backlog_bytes '2TiB'"},
		{"mimi {\n bogus\n}", "unrecognized mimi option 'bogus'"},
		{"mimi {\n relay_limit on\n}", "wrong argument count"},
		{"mimi {\n relay_limit {\n rate 10\n }\n}", "invalid rate '10'"},
		{"mimi {\n relay_limit {\n hub_rate 10/soon\n }\n}", "invalid hub_rate '10/soon': bad duration 'soon'"},
		{"mimi {\n relay_limit {\n burst 0\n }\n}", "invalid burst '0'"},
		{"mimi {\n relay_limit {\n burst 1\n burst 2\n }\n}", "duplicate relay_limit option 'burst'"},
		{"mimi {\n relay_limit {\n off\n }\n}", "unrecognized relay_limit option 'off'"},
		{"mimi {\n relay_limit {\n rate 600/1s\n }\n}", "must be above the client bound"},
		{"mimi {\n unchecked_client_bindings yes\n}", "wrong argument count"},
		{"mimi {\n unchecked_client_bindings\n unchecked_client_bindings\n}", "duplicate mimi option 'unchecked_client_bindings'"},
	} {
		t.Run(tc.input, func(t *testing.T) {
			err := new(Gateway).UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	base := func() *Gateway { return &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com"} }
	if err := base().Validate(); err != nil {
		t.Fatalf("minimal config refused: %v", err)
	}
	small := base()
	small.MaxBody, small.QueueMaxBytes = 256<<10, 256<<10
	if err := small.Validate(); err != nil {
		t.Fatalf("queues that hold the largest message refused: %v", err)
	}
	for _, tc := range []struct {
		mutate func(*Gateway)
		want   string
	}{
		{func(g *Gateway) { g.Providers = nil }, "provider"},
		{func(g *Gateway) { g.Providers = []string{"Example.COM"} }, "provider"},
		{func(g *Gateway) { g.Providers = []string{"example.com:443"} }, "provider"},
		{func(g *Gateway) { g.DSDomain = "" }, "ds_domain"},
		{func(g *Gateway) { g.DSDomain = "ds.example.com:99999" }, "ds_domain"},
		{func(g *Gateway) { g.DSDomain = "https://ds.example.com" }, "ds_domain"},
		{func(g *Gateway) { g.MaxBody = 1 << 30 }, "max_body"},
		{func(g *Gateway) { g.QueueMaxMessages = -1 }, "queue_max_messages"},
		{func(g *Gateway) { g.QueueMaxBytes = 1 << 40 }, "queue_max_bytes"},
		{func(g *Gateway) { g.QueueMaxBytes = 512 << 10 }, "queue_max_bytes: 524288 is below 1048576 bytes"},
		{func(g *Gateway) { g.MaxBody, g.QueueMaxBytes = 256<<10, 128<<10 }, "queue_max_bytes: 131072 is below 262144 bytes"},
		{func(g *Gateway) { g.KeyRotation = caddy.Duration(time.Minute) }, "key_rotation"},
		{func(g *Gateway) { g.KeyOverlap = caddy.Duration(time.Hour) }, "key_overlap"},
		{func(g *Gateway) { g.KeyRotation = caddy.Duration(89 * 24 * time.Hour) }, "key_rotation + key_overlap"},
		{func(g *Gateway) { g.KeyScheme = "ed448" }, "key_scheme"},
		{func(g *Gateway) { g.TrustedTLSProxies = []string{"nope"} }, "trusted_tls_proxies"},
		{func(g *Gateway) { g.Federation = &Federation{AllowedPorts: []int{70000}} }, "allowed_ports"},
		{func(g *Gateway) { g.Federation = &Federation{Resolve: map[string]string{"a.example": "nope"}} }, "resolve"},
		{func(g *Gateway) { g.Federation = &Federation{Timeout: caddy.Duration(-time.Second)} }, "federation timeout: -1s is negative"},
		{func(g *Gateway) { g.Federation = &Federation{MaxBackoff: caddy.Duration(2 * time.Hour)} }, "max_backoff"},
		{func(g *Gateway) { g.Federation = &Federation{GiveUpAfter: caddy.Duration(7 * 24 * time.Hour)} }, "give_up_after"},
		{func(g *Gateway) { g.Federation = &Federation{MaxBacklogMessages: -1} }, "max_backlog_messages"},
		{func(g *Gateway) { g.Federation = &Federation{MaxBacklogBytes: 1 << 20} }, "max_backlog_bytes"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			g := base()
			tc.mutate(g)
			err := g.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to name %q", err, tc.want)
			}
		})
	}
}

// TestFederationResolveAnyCase provisions gateways whose federation
// resolve names are not lowercase: DNS names are case-insensitive, and
// peers are dialed by their lowercase names, so the override must be
// keyed on the lowercase name, and two spellings of one name conflict.
func TestFederationResolveAnyCase(t *testing.T) {
	const head = "mimi {\n provider example.com\n ds_domain ds.example.com\n federation {\n"
	for _, tc := range []struct {
		name      string
		caddyfile string            // parsed when set
		resolve   map[string]string // else the JSON field
		want      map[string]string
		wantErr   string
	}{
		{name: "caddyfile mixed case", caddyfile: "resolve Peer.Example 127.0.0.1:9443",
			want: map[string]string{"peer.example": "127.0.0.1:9443"}},
		{name: "caddyfile final dot", caddyfile: "resolve PEER.example. 127.0.0.1:9443",
			want: map[string]string{"peer.example": "127.0.0.1:9443"}},
		{name: "caddyfile two spellings", caddyfile: "resolve a.example 127.0.0.1:1\n resolve A.Example 127.0.0.1:2",
			wantErr: "duplicate resolve entry for 'a.example'"},
		{name: "json mixed case", resolve: map[string]string{"Peer.Example": "127.0.0.1:9443", "ds.peer.example": "127.0.0.1:9444"},
			want: map[string]string{"peer.example": "127.0.0.1:9443", "ds.peer.example": "127.0.0.1:9444"}},
		{name: "json two spellings", resolve: map[string]string{"a.example": "127.0.0.1:1", "A.example": "127.0.0.1:2"},
			wantErr: "federation resolve: two entries for a.example"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com",
				Federation: &Federation{Resolve: tc.resolve}}
			var err error
			if tc.caddyfile != "" {
				g = new(Gateway)
				err = g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(head + tc.caddyfile + "\n }\n}"))
			}
			if err == nil {
				g.DataDir = t.TempDir()
				os.Chmod(g.DataDir, 0o700) //nolint:errcheck // else the service tightens it and says so
				ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
				defer cancel()
				err = g.Provision(ctx)
				defer g.Cleanup()
			}
			if !parsedAsWanted(t, err, tc.wantErr) {
				return
			}
			if got := g.svc.Options().Fetch.Resolve; !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("fetch policy resolves %v, want %v", got, tc.want)
			}
		})
	}
}

// parsedAsWanted checks a parse's err against wantErr: with wantErr set,
// err must contain it, and the caller stops (false); without, err must be
// nil, and the caller goes on to check what was parsed (true).
func parsedAsWanted(t *testing.T, err error, wantErr string) bool {
	t.Helper()
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("error %v, want one containing %q", err, wantErr)
		}
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// TestMaxKeyPackageLifetimeCaddyfile checks the parsing of the gateway's
// max_key_package_lifetime: a duration from 1h to 3650d, or unlimited
// (-1), once, and Validate's bounds on the JSON value.
func TestMaxKeyPackageLifetimeCaddyfile(t *testing.T) {
	const day = 24 * time.Hour
	for _, tc := range []struct {
		name, arg string
		want      caddy.Duration
		err       string
	}{
		{"default spelled out", "366d", caddy.Duration(366 * day), ""},
		{"smallest", "1h", caddy.Duration(time.Hour), ""},
		{"largest", "3650d", caddy.Duration(3650 * day), ""},
		{"unlimited", "unlimited", -1, ""},
		{"below an hour", "59m", 0, "invalid max_key_package_lifetime '59m': want 1h to 3650d, or unlimited"},
		{"over ten years", "3651d", 0, "invalid max_key_package_lifetime '3651d': want 1h to 3650d, or unlimited"},
		{"zero", "0", 0, "invalid max_key_package_lifetime '0'"},
		{"negative", "-1h", 0, "invalid max_key_package_lifetime '-1h'"},
		{"not a duration", "forever", 0, "invalid max_key_package_lifetime 'forever'"},
		{"no argument", "", 0, "wrong argument count"},
		{"two arguments", "1h 2h", 0, "wrong argument count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := new(Gateway)
			err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser("mimi {\n max_key_package_lifetime " + tc.arg + "\n}"))
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("err = %v, want it to mention %q", err, tc.err)
			case tc.err == "" && g.MaxKeyPackageLifetime != tc.want:
				t.Fatalf("parsed %d, want %d", g.MaxKeyPackageLifetime, tc.want)
			}
		})
	}
	t.Run("duplicate", func(t *testing.T) {
		err := new(Gateway).UnmarshalCaddyfile(caddyfile.NewTestDispenser("mimi {\n max_key_package_lifetime 1h\n max_key_package_lifetime 2h\n}"))
		if err == nil || !strings.Contains(err.Error(), "duplicate mimi option 'max_key_package_lifetime'") {
			t.Fatalf("err = %v", err)
		}
	})
	for _, tc := range []struct {
		name string
		v    caddy.Duration
		ok   bool
	}{
		{"default", 0, true},
		{"unlimited", -1, true},
		{"1h", caddy.Duration(time.Hour), true},
		{"3650d", caddy.Duration(3650 * day), true},
		{"1h less a second", caddy.Duration(time.Hour - time.Second), false},
		{"3650d and a second", caddy.Duration(3650*day + time.Second), false},
	} {
		t.Run("validate "+tc.name, func(t *testing.T) {
			g := &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", MaxKeyPackageLifetime: tc.v}
			err := g.Validate()
			if tc.ok != (err == nil) || (err != nil && !strings.Contains(err.Error(), "max_key_package_lifetime")) {
				t.Fatalf("Validate: %v, want ok %v", err, tc.ok)
			}
		})
	}
}
