package caddymodule

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/federation"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/policy/admission"
	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

// The gateways (sites) of one config on one data directory hold one
// provider service, federation sender, outbox, attachment sweeper and
// rate-limit zones (commit.go), and each of these parts runs with the
// options of one gateway, the one that committed last. Options that set
// these parts must therefore agree between the gateways of a config on
// one data directory, or one site would run with the other's: a site
// whose `delivery backend` queues messages for the backend in the outbox
// while the sender has the other site's local queues and no backend, so
// they wait until give_up_after drops them; a site's give_up_after,
// backoff or backlog bounds, key rotation or scheme, peer fetch policy,
// mutual TLS certificate, attachment storage swept, or rate-limit zone
// rate silently replaced by the other's. poolConflict refuses such a
// config. What each gateway applies to its own requests (providers,
// ds_domain, max_body, queue bounds, peers, privacy_pass, attachments
// limits, relay limits) may differ; the gateways of the old and the new
// config of a reload are not compared (each config has its own mimi app).

// pooledOptions are a gateway's options as the pooled parts of its data
// directory take them: its service's options and its legacy backend.
type pooledOptions struct {
	g       *Gateway
	svc     service.Options
	backend *federation.Backend
}

// poolConflict reports the first pooled option in which p, a gateway
// being provisioned, differs from a gateway of the same config already
// provisioned on the same data directory, as an error naming both
// gateways, the option and the two settings (never a secret); nil when
// they all agree.
func poolConflict(p pooledOptions, earlier []*Gateway) error {
	for _, o := range earlier {
		if o.DataDir != p.g.DataDir {
			continue
		}
		if option, detail, ok := pooledDiff(pooledOptions{g: o, svc: o.svcOpts, backend: o.backend}, p); ok {
			return fmt.Errorf("mimi: the gateways of %s and %s share data_dir %s but differ in %s (%s): "+
				"give them separate data_dirs or the same setting", gatewayName(o), gatewayName(p.g), p.g.DataDir, option, detail)
		}
	}
	return nil
}

// gatewayName names g in errors: its DS authority and providers.
func gatewayName(g *Gateway) string {
	return fmt.Sprintf("ds_domain %s (provider %s)", g.DSDomain, strings.Join(g.Providers, " "))
}

// versus is the detail of a difference between two printable settings.
func versus(a, b string) string { return a + " vs " + b }

// pooledDiff returns the first option in which a and b differ and the
// detail of the difference, ok false when none does.
func pooledDiff(a, b pooledOptions) (option, detail string, ok bool) {
	type check struct {
		option string
		a, b   string
	}
	// The store and key secret: one store per directory (service.Check
	// refuses the second otherwise, as a reload would be).
	if a.svc.Store != b.svc.Store {
		if sa, sb := a.svc.Store.String(), b.svc.Store.String(); sa != sb {
			return "store", versus(sa, sb), true
		}
		return "store", "different connection strings", true
	}
	if subtle.ConstantTimeCompare(a.svc.KeySecret, b.svc.KeySecret) != 1 {
		switch {
		case len(a.svc.KeySecret) == 0:
			return "key_secret", versus("none", "set"), true
		case len(b.svc.KeySecret) == 0:
			return "key_secret", versus("set", "none"), true
		}
		return "key_secret", "different secrets", true
	}
	ka, kb := a.svc.Keys, b.svc.Keys
	fa, fb := a.svc.Fetch, b.svc.Fetch
	checks := []check{
		{"key_scheme", keySchemeName(a.g), keySchemeName(b.g)},
		{"key_rotation", durationOr(ka.RotateEvery, provider.DefaultRotateEvery), durationOr(kb.RotateEvery, provider.DefaultRotateEvery)},
		{"key_overlap", durationOr(ka.Overlap, provider.DefaultOverlap), durationOr(kb.Overlap, provider.DefaultOverlap)},
		{"federation allow_private_addresses", strconv.FormatBool(fa.AllowPrivate), strconv.FormatBool(fb.AllowPrivate)},
		{"federation allow_ports", portSet(fa.AllowedPorts), portSet(fb.AllowedPorts)},
		{"federation resolve", fmt.Sprint(fa.Resolve), fmt.Sprint(fb.Resolve)},
		{"federation timeout", durationOr(fa.Timeout, provider.DefaultFetchTimeout), durationOr(fb.Timeout, provider.DefaultFetchTimeout)},
		{"mutual_tls certificate presented to peers", presentedCertificate(a.g), presentedCertificate(b.g)},
	}
	pa, pb := a.g.Federation.senderPolicy(), b.g.Federation.senderPolicy()
	la, lb := a.g.Federation.outboxLimits(), b.g.Federation.outboxLimits()
	checks = append(checks,
		check{"federation max_backoff", durationOr(pa.MaxBackoff, federation.DefaultMaxBackoff), durationOr(pb.MaxBackoff, federation.DefaultMaxBackoff)},
		check{"federation give_up_after", durationOr(pa.GiveUpAfter, federation.DefaultGiveUpAfter), durationOr(pb.GiveUpAfter, federation.DefaultGiveUpAfter)},
		check{"federation max_backlog_messages", intOr(int64(la.MaxMessages), store.DefaultOutboxMaxMessages), intOr(int64(lb.MaxMessages), store.DefaultOutboxMaxMessages)},
		check{"federation max_backlog_bytes", intOr(la.MaxBytes, store.DefaultOutboxMaxBytes), intOr(lb.MaxBytes, store.DefaultOutboxMaxBytes)},
		check{"delivery", deliveryTarget(a.backend), deliveryTarget(b.backend)},
	)
	for _, c := range checks {
		if c.a != c.b {
			return c.option, versus(c.a, c.b), true
		}
	}
	if !fa.RootCAs.Equal(fb.RootCAs) {
		return "federation root_ca / trust_pki_ca", versus(rootsName(a.g.Federation), rootsName(b.g.Federation)), true
	}
	if ba, bb := a.backend, b.backend; ba != nil && bb != nil {
		switch {
		case ba.URL != bb.URL:
			// Not shown: errors never show the backend's URL.
			return "delivery backend url", "different URLs", true
		case subtle.ConstantTimeCompare(ba.Key, bb.Key) != 1:
			return "delivery backend key", "different keys", true
		}
		ta, tb := durationOr(ba.Timeout, federation.DefaultBackendTimeout), durationOr(bb.Timeout, federation.DefaultBackendTimeout)
		if ta != tb {
			return "delivery backend timeout", versus(ta, tb), true
		}
	}
	if attachmentsOn(a.g) && attachmentsOn(b.g) {
		sa, na := storageConfig(a.g.Attachments)
		sb, nb := storageConfig(b.g.Attachments)
		if !bytes.Equal(sa, sb) {
			if na != nb {
				return "attachments storage", versus(na, nb), true
			}
			return "attachments storage", "different " + na + " settings", true
		}
	}
	return zoneDiff(a.g, b.g)
}

// zoneDiff returns the first rate-limit zone that a and b both have (one
// set of buckets: the same name, key and max_keys) with another rate,
// burst or Redis setting.
func zoneDiff(a, b *Gateway) (option, detail string, ok bool) {
	ca, errA := a.admissionConfig()
	cb, errB := b.admissionConfig()
	if errA != nil || errB != nil {
		return "", "", false // Validate refuses them
	}
	for _, za := range ca.Zones {
		i := slices.IndexFunc(cb.Zones, func(zb admission.ZoneConfig) bool {
			return zb.Name == za.Name && zb.Key == za.Key && maxKeysOf(zb) == maxKeysOf(za)
		})
		if i < 0 {
			continue
		}
		zb := cb.Zones[i]
		opt := "rate_limit " + za.Name
		switch {
		case za.Rate != zb.Rate:
			return opt + " rate", versus(perSecond(za.Rate), perSecond(zb.Rate)), true
		case za.Burst != zb.Burst:
			return opt + " burst", versus(strconv.Itoa(za.Burst), strconv.Itoa(zb.Burst)), true
		case (za.Redis == nil) != (zb.Redis == nil):
			return opt + " redis", versus(redisName(za.Redis), redisName(zb.Redis)), true
		case za.Redis != nil && !sameRedis(*za.Redis, *zb.Redis):
			return opt + " redis", "different settings", true
		}
	}
	return "", "", false
}

// sameRedis reports whether a and b are one Redis setting, defaults
// filled in; the passwords are compared in constant time.
func sameRedis(a, b ratelimit.RedisConfig) bool {
	norm := func(c ratelimit.RedisConfig) ratelimit.RedisConfig {
		if c.Timeout == 0 {
			c.Timeout = ratelimit.DefaultRedisTimeout
		}
		if c.Prefix == "" {
			c.Prefix = ratelimit.DefaultRedisPrefix
		}
		if c.Retry == 0 {
			c.Retry = ratelimit.DefaultRedisRetry
		}
		return c
	}
	a, b = norm(a), norm(b)
	samePassword := subtle.ConstantTimeCompare([]byte(a.Password), []byte(b.Password)) == 1
	a.Password, b.Password = "", ""
	return samePassword && a == b
}

// redisName is a zone's Redis setting in errors: its address or local.
func redisName(c *ratelimit.RedisConfig) string {
	if c == nil {
		return "local buckets"
	}
	return c.Addr
}

// maxKeysOf is a zone's max_keys, its default filled in.
func maxKeysOf(z admission.ZoneConfig) int {
	if z.MaxKeys == 0 {
		return ratelimit.DefaultMaxKeys
	}
	return z.MaxKeys
}

// perSecond prints a rate in events per second.
func perSecond(r float64) string { return strconv.FormatFloat(r, 'g', -1, 64) + "/s" }

// durationOr prints d, or def when d is not set.
func durationOr(d, def time.Duration) string {
	if d <= 0 {
		d = def
	}
	return d.String()
}

// intOr prints n, or def when n is not set.
func intOr(n, def int64) string {
	if n <= 0 {
		n = def
	}
	return strconv.FormatInt(n, 10)
}

// portSet prints ports besides 443 (always allowed) as a sorted set.
func portSet(ports []int) string {
	s := slices.DeleteFunc(slices.Clone(ports), func(p int) bool { return p == 443 })
	slices.Sort(s)
	return fmt.Sprint(slices.Compact(s))
}

// keySchemeName is g's key_scheme, its default filled in.
func keySchemeName(g *Gateway) string {
	if g.KeyScheme == "" {
		return "ed25519"
	}
	return g.KeyScheme
}

// presentedCertificate is the certificate g's mutual_tls makes the peer
// fetcher present (provider.FetchPolicy.GetClientCertificate).
func presentedCertificate(g *Gateway) string {
	m := g.MutualTLS
	switch {
	case m == nil:
		return "off"
	case m.CertificateFile != "":
		return "certificate " + m.CertificateFile + " " + m.KeyFile
	}
	return "Caddy's certificate of " + dsHost(g.DSDomain)
}

// rootsName prints the peer roots of f.
func rootsName(f *Federation) string {
	if f == nil || len(f.RootCAFiles)+len(f.TrustPKICAs) == 0 {
		return "the system roots"
	}
	return strings.Join(append(slices.Clone(f.RootCAFiles), f.TrustPKICAs...), " ")
}

// deliveryTarget names where a gateway with backend delivers.
func deliveryTarget(b *federation.Backend) string {
	if b == nil {
		return targetLocalQueues
	}
	return targetBackend
}

// attachmentsOn reports whether g serves attachments (and so holds the
// attachment sweeper).
func attachmentsOn(g *Gateway) bool { return g.Attachments == nil || !g.Attachments.Disabled }

// storageConfig is the attachment storage of a as canonical JSON (the
// default is local storage under data_dir), and its backend's name.
func storageConfig(a *Attachments) ([]byte, string) {
	raw := json.RawMessage(`{"backend":"local"}`)
	if a != nil && a.Storage != nil {
		raw = a.Storage
	}
	var v map[string]any
	if err := json.Unmarshal(raw, &v); err != nil {
		return raw, "unknown"
	}
	name, _ := v["backend"].(string)
	// encoding/json sorts map keys: the same settings written in another
	// order or spacing are equal.
	b, err := json.Marshal(v)
	if err != nil {
		return raw, name
	}
	return b, name
}
