package admission

import (
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

func TestValidate(t *testing.T) {
	zone := func(key KeyKind, endpoints ...string) ZoneConfig {
		return zoneCfg("z", key, 1, time.Second, endpoints...)
	}
	for _, tc := range []struct {
		name string
		edit func(c *Config)
		want string // "" for a valid configuration
	}{
		{"empty", func(*Config) {}, ""},
		{"every key on its endpoints", func(c *Config) {
			c.PrivacyPass = true
			c.Zones = []ZoneConfig{zone(KeyRemoteIP), zone(KeySender, "connection_request"), zone(KeyMember, "/group_operation"),
				zone(KeyGroup), {Name: "p", Key: KeyPlaceholder, Template: "{http.request.header.X-User}", Rate: 1, Burst: 1},
				{Name: "pre", Key: KeyIPPrefix, IPv4Prefix: 24, IPv6Prefix: 48, Rate: 1, Burst: 1, OverLimitToken: true}}
			for i := range c.Zones {
				c.Zones[i].Name = string(rune('a' + i))
			}
			c.RequireToken = []string{"connection_key_packages", "/group_operation", "verification_key"}
			c.Peers = &Peers{Allow: []string{"a.example"}}
		}, ""},
		{"sender key on a DS endpoint", func(c *Config) { c.Zones = []ZoneConfig{zone(KeySender, "group_operation")} },
			`rate_limit z endpoints: key sender_provider needs a provider endpoint, not "group_operation"`},
		{"member key on a provider endpoint", func(c *Config) { c.Zones = []ZoneConfig{zone(KeyMember, "/deliver_message")} },
			`rate_limit z endpoints: key member needs a client-signed DS endpoint, not "deliver_message"`},
		{"endpoint listed twice", func(c *Config) {
			c.Zones = []ZoneConfig{zone(KeyRemoteIP, "connection_request", "/connection_request")}
		}, `rate_limit z endpoints: "/connection_request" is listed twice`},
		{"unknown endpoint", func(c *Config) { c.Zones = []ZoneConfig{zone(KeyRemoteIP, "/nowhere")} },
			`rate_limit z endpoints: "/nowhere" is not an endpoint of this gateway`},
		{"token_request without issuer", func(c *Config) {
			c.Endpoints = c.Endpoints[:3]
			c.Zones = []ZoneConfig{zone(KeyRemoteIP, "token_request")}
		}, `"token_request" is not an endpoint`},
		{"over_limit token without privacy_pass", func(c *Config) {
			z := zone(KeyRemoteIP)
			z.OverLimitToken = true
			c.Zones = []ZoneConfig{z}
		}, "rate_limit z: over_limit token needs a privacy_pass block"},
		{"prefix bits on remote_ip", func(c *Config) {
			z := zone(KeyRemoteIP)
			z.IPv6Prefix = 56
			c.Zones = []ZoneConfig{z}
		}, `ipv4_prefix and ipv6_prefix apply only to key ip_prefix, not "remote_ip"`},
		{"prefix bits out of range", func(c *Config) {
			z := zone(KeyIPPrefix)
			z.IPv4Prefix = 33
			c.Zones = []ZoneConfig{z}
		}, "ipv4_prefix 33 is outside 0..32"},
		{"bad zone name", func(c *Config) {
			z := zone(KeyRemoteIP)
			z.Name = "Z"
			c.Zones = []ZoneConfig{z}
		}, `rate_limit Z: zone name "Z" must be lowercase letters`},
		{"reserved zone name", func(c *Config) {
			z := zone(KeyRemoteIP)
			z.Name = "peers"
			c.Zones = []ZoneConfig{z}
		}, `zone name "peers" must be`},
		{"duplicate zone", func(c *Config) { c.Zones = []ZoneConfig{zone(KeyRemoteIP), zone(KeyIPPrefix)} },
			`rate_limit: duplicate zone name "z"`},
		{"zero rate", func(c *Config) {
			z := zone(KeyRemoteIP)
			z.Rate = 0
			c.Zones = []ZoneConfig{z}
		}, "rate 0 per second must be above 0"},
		{"rate above the sanity limit", func(c *Config) {
			z := zone(KeyRemoteIP)
			z.Rate = 2e9
			c.Zones = []ZoneConfig{z}
		}, "rate 2e+09 per second must be above 0 and at most 1e+09"},
		{"zero burst", func(c *Config) {
			z := zone(KeyRemoteIP)
			z.Burst = 0
			c.Zones = []ZoneConfig{z}
		}, "burst 0 must be at least 1"},
		{"negative max_keys", func(c *Config) {
			z := zone(KeyRemoteIP)
			z.MaxKeys = -1
			c.Zones = []ZoneConfig{z}
		}, "max_keys -1 must be positive"},
		{"placeholder without a brace", func(c *Config) {
			z := zone(KeyPlaceholder)
			z.Template = "hostname"
			c.Zones = []ZoneConfig{z}
		}, `key "hostname" is not a placeholder`},
		{"template on an IP key", func(c *Config) {
			z := zone(KeyRemoteIP)
			z.Template = "{x}"
			c.Zones = []ZoneConfig{z}
		}, "a template applies only to a placeholder key, not remote_ip"},
		{"require on discovery", func(c *Config) {
			c.PrivacyPass = true
			c.RequireToken = []string{"ds_domain"}
		}, `privacy_pass require: "ds_domain" is not a MoH endpoint`},
		{"require on an unknown endpoint", func(c *Config) {
			c.PrivacyPass = true
			c.RequireToken = []string{"/nowhere"}
		}, `privacy_pass require: "/nowhere" is not an endpoint of this gateway`},
		{"require without privacy_pass", func(c *Config) { c.RequireToken = []string{"group_operation"} },
			"privacy_pass require: needs a privacy_pass block"},
		{"empty peers", func(c *Config) { c.Peers = &Peers{} }, "peers: allow or deny is required"},
		{"peer with a port", func(c *Config) { c.Peers = &Peers{Deny: []string{"a.example:443"}} },
			`peers: "a.example:443" is not a lowercase provider domain`},
		{"endpoint without name", func(c *Config) { c.Endpoints = append(c.Endpoints, Endpoint{Path: "/x"}) },
			"endpoints: an endpoint has no name"},
		{"endpoint twice", func(c *Config) { c.Endpoints = append(c.Endpoints, Endpoint{Name: "healthz"}) },
			`endpoints: "healthz" is listed twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Config{Endpoints: gatewayEndpoints()}
			tc.edit(c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("valid configuration refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestParseKey(t *testing.T) {
	for _, tc := range []struct {
		in       string
		kind     KeyKind
		template string
		err      string
	}{
		{in: "remote_ip", kind: KeyRemoteIP},
		{in: "ip_prefix", kind: KeyIPPrefix},
		{in: "sender_provider", kind: KeySender},
		{in: "group", kind: KeyGroup},
		{in: "member", kind: KeyMember},
		{in: "{http.request.header.X-User}", kind: KeyPlaceholder, template: "{http.request.header.X-User}"},
		{in: "", err: "key is required"},
		{in: "hostname", err: `key "hostname" is not remote_ip, ip_prefix, sender_provider, group, member or a placeholder`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			kind, template, err := ParseKey(tc.in)
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || kind != tc.kind || template != tc.template {
				t.Fatalf("ParseKey = %v, %q, %v", kind, template, err)
			}
			if kind != KeyPlaceholder && kind.String() != tc.in {
				t.Fatalf("String() = %q", kind.String())
			}
		})
	}
}

func TestValidHelpers(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string // "" for valid
	}{
		{"zone name", boolErr(ValidZoneName("per_ip_2")), ""},
		{"zone name uppercase", boolErr(ValidZoneName("Per")), "invalid"},
		{"zone name too long", boolErr(ValidZoneName(strings.Repeat("a", 65))), "invalid"},
		{"zone name issuer", boolErr(ValidZoneName("issuer")), "invalid"},
		{"zone name privacy_pass", boolErr(ValidZoneName("privacy_pass")), "invalid"},
		{"origin info", ValidOriginInfo("ds.example.com:8443"), ""},
		{"origin info with comma", ValidOriginInfo("a,b"), `origin_info "a,b" is not an origin name`},
		{"origin info with space", ValidOriginInfo("a b"), "is not an origin name"},
		{"origin info empty", ValidOriginInfo(""), "is not an origin name"},
		{"directory", ValidDirectoryURL("https://issuer.example/.well-known/private-token-issuer-directory"), ""},
		{"directory over http", ValidDirectoryURL("http://issuer.example/d"), `issuer_directory "http://issuer.example/d" is not an https URL`},
		{"directory with user", ValidDirectoryURL("https://u@issuer.example/d"), "is not an https URL"},
		{"directory with fragment", ValidDirectoryURL("https://issuer.example/d#x"), "is not an https URL"},
		{"request path", ValidRequestPath("/pp/token-request"), ""},
		{"relative request path", ValidRequestPath("relative"), `request_path "relative" is not an absolute path without query`},
		{"request path with query", ValidRequestPath("/t?x=1"), "is not an absolute path"},
		{"request path on the directory", ValidRequestPath(privacypass.DirectoryPath), "is not an absolute path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == "" && tc.err != nil {
				t.Fatalf("refused: %v", tc.err)
			}
			if tc.want != "" && (tc.err == nil || !strings.Contains(tc.err.Error(), tc.want)) {
				t.Fatalf("error %v, want %q", tc.err, tc.want)
			}
		})
	}
}

// boolErr turns a validity report into an error.
func boolErr(ok bool) error {
	if ok {
		return nil
	}
	return errInvalid
}

var errInvalid = stringError("invalid")

type stringError string

func (e stringError) Error() string { return string(e) }

func TestOriginConfigValidate(t *testing.T) {
	base := func() OriginConfig {
		return OriginConfig{OriginConfig: privacypass.OriginConfig{IssuerName: "issuer.example"}}
	}
	for _, tc := range []struct {
		name string
		edit func(c *OriginConfig)
		want string
	}{
		{"minimal", func(*OriginConfig) {}, ""},
		{"directory with refresh", func(c *OriginConfig) {
			c.DirectoryURL, c.DirectoryRefresh = "https://issuer.example/d", 30*time.Minute
		}, ""},
		{"no issuer name", func(c *OriginConfig) { c.IssuerName = "" }, "issuer_name is required"},
		{"issuer name with a path", func(c *OriginConfig) { c.IssuerName = "issuer.example/x" }, `issuer_name "issuer.example/x"`},
		{"bad origin info", func(c *OriginConfig) { c.OriginInfo = []string{"a,b"} }, `origin_info "a,b"`},
		{"http directory", func(c *OriginConfig) { c.DirectoryURL = "http://issuer.example/d" }, "is not an https URL"},
		{"refresh too often", func(c *OriginConfig) {
			c.DirectoryURL, c.DirectoryRefresh = "https://issuer.example/d", 10*time.Second
		}, "directory_refresh 10s: needs issuer_directory and at least 1m0s"},
		{"refresh without directory", func(c *OriginConfig) { c.DirectoryRefresh = time.Hour }, "needs issuer_directory"},
		{"lifetime too long", func(c *OriginConfig) { c.Lifetime = 48 * time.Hour }, "lifetime 48h0m0s is outside 1s..24h"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.edit(&c)
			err := c.Validate()
			if tc.want == "" && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}
