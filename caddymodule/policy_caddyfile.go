package caddymodule

import (
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-mimi/caddy-mimi/caddymodule/internal/caddyopts"
	"github.com/caddy-mimi/caddy-mimi/policy/admission"
)

// The policy blocks of the mimi directive; the syntax is documented on
// Gateway.UnmarshalCaddyfile.

// unmarshalRateLimit parses `rate_limit <zone> { ... }`.
func unmarshalRateLimit(d *caddyfile.Dispenser) (*RateLimitZone, error) {
	z := new(RateLimitZone)
	if !d.AllArgs(&z.Name) {
		return nil, d.ArgErr()
	}
	if !admission.ValidZoneName(z.Name) {
		return nil, d.Errf("invalid rate_limit zone name '%s': want lowercase letters, digits and underscores, not privacy_pass, peers or issuer", z.Name)
	}
	for opt, err := range caddyopts.Block(d, "rate_limit "+z.Name) {
		if err != nil {
			return nil, err
		}
		switch opt {
		case "key":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, d.ArgErr()
			}
			z.Key = args[0]
			switch {
			case z.Key == "ip_prefix":
				if len(args) != 3 {
					return nil, d.Errf("key ip_prefix takes <ipv4_bits> <ipv6_bits>, got %d values", len(args)-1)
				}
				v4, err4 := strconv.Atoi(args[1])
				v6, err6 := strconv.Atoi(args[2])
				if err4 != nil || v4 < 1 || v4 > 32 {
					return nil, d.Errf("invalid ip_prefix IPv4 bits '%s': want 1 to 32", args[1])
				}
				if err6 != nil || v6 < 1 || v6 > 128 {
					return nil, d.Errf("invalid ip_prefix IPv6 bits '%s': want 1 to 128", args[2])
				}
				z.IPv4Prefix, z.IPv6Prefix = v4, v6
			case len(args) != 1:
				return nil, d.Errf("key '%s' takes no further value, got '%s'", z.Key, strings.Join(args[1:], " "))
			case z.Key == "remote_ip", z.Key == "sender_provider", z.Key == "group", z.Key == "member":
			case strings.Contains(z.Key, "{"):
			default:
				return nil, d.Errf("invalid key '%s': want remote_ip, ip_prefix, sender_provider, group, member or a placeholder", z.Key)
			}
		case "rate":
			var v string
			if !d.AllArgs(&v) {
				return nil, d.ArgErr()
			}
			events, window, err := parseRate(v)
			if err != nil {
				return nil, d.Errf("invalid rate '%s': %v", v, err)
			}
			z.Events, z.Window = events, window
		case "burst", "max_keys":
			var v string
			if !d.AllArgs(&v) {
				return nil, d.ArgErr()
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return nil, d.Errf("invalid %s '%s': want a positive integer", opt, v)
			}
			if opt == "max_keys" && n < minMaxKeys {
				return nil, d.Errf("invalid max_keys '%s': want at least %d", v, minMaxKeys)
			}
			if opt == "burst" {
				z.Burst = n
			} else {
				z.MaxKeys = n
			}
		case "endpoints":
			z.Endpoints = d.RemainingArgs()
			if len(z.Endpoints) == 0 {
				return nil, d.ArgErr()
			}
		case "over_limit":
			if !d.AllArgs(&z.OverLimit) {
				return nil, d.ArgErr()
			}
			if z.OverLimit != overLimitRefuse && z.OverLimit != overLimitToken {
				return nil, d.Errf("invalid over_limit '%s': want refuse or token", z.OverLimit)
			}
		case "redis":
			r, err := unmarshalRedis(d, z.Name)
			if err != nil {
				return nil, err
			}
			z.Redis = r
		default:
			return nil, d.Errf("unrecognized rate_limit option '%s'", opt)
		}
	}
	if z.Key == "" || z.Events == 0 {
		return nil, d.Errf("rate_limit %s needs both key and rate", z.Name)
	}
	if _, err := z.config(); err != nil {
		return nil, d.Errf("rate_limit %s: %v", z.Name, err)
	}
	return z, nil
}

// unmarshalRedis parses the redis option of rate_limit zone:
//
//	redis <host:port> {
//		password <value>
//		db       <n>
//		timeout  <duration>
//		prefix   <string>
//		retry    <duration>
//	}
func unmarshalRedis(d *caddyfile.Dispenser, zone string) (*RateLimitRedis, error) {
	r := new(RateLimitRedis)
	if !d.AllArgs(&r.Address) {
		return nil, d.ArgErr()
	}
	for opt, err := range caddyopts.Block(d, "rate_limit "+zone+" redis") {
		if err != nil {
			return nil, err
		}
		if opt == "password" {
			// Not quoted in errors: it may be the password itself.
			if err := caddyopts.Secret(d, &r.Password); err != nil {
				return nil, err
			}
			continue
		}
		var v string
		if !d.AllArgs(&v) {
			return nil, d.ArgErr()
		}
		switch opt {
		case "prefix":
			r.Prefix = v
		case "db":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return nil, d.Errf("invalid redis db '%s': want a non-negative integer", v)
			}
			r.DB = n
		case "timeout", "retry":
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return nil, d.Errf("invalid redis %s '%s': want a positive duration", opt, v)
			}
			if opt == "timeout" {
				r.Timeout = caddy.Duration(dur)
			} else {
				r.Retry = caddy.Duration(dur)
			}
		default:
			return nil, d.Errf("unrecognized rate_limit %s redis option '%s'", zone, opt)
		}
	}
	return r, nil
}

// unmarshalPrivacyPass parses the privacy_pass block.
func unmarshalPrivacyPass(d *caddyfile.Dispenser) (*PrivacyPass, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	pp := new(PrivacyPass)
	for opt, err := range caddyopts.Block(d, "privacy_pass", "token_key") {
		if err != nil {
			return nil, err
		}
		switch opt {
		case "issuer_name":
			if !d.AllArgs(&pp.IssuerName) {
				return nil, d.ArgErr()
			}
		case "origin_info":
			pp.OriginInfo = d.RemainingArgs()
			if len(pp.OriginInfo) == 0 {
				return nil, d.ArgErr()
			}
		case "token_key":
			var typ, file string
			if !d.AllArgs(&typ, &file) {
				return nil, d.ArgErr()
			}
			n, err := strconv.Atoi(typ)
			if err != nil || (n != 1 && n != 2) {
				return nil, d.Errf("invalid token_key type '%s': want 1 or 2", typ)
			}
			pp.TokenKeys = append(pp.TokenKeys, TokenKeyFile{Type: n, File: file})
		case "issuer_directory":
			if !d.AllArgs(&pp.IssuerDirectory) {
				return nil, d.ArgErr()
			}
		case "require":
			pp.Require = d.RemainingArgs()
			if len(pp.Require) == 0 {
				return nil, d.ArgErr()
			}
		case "lifetime", "directory_refresh":
			var v string
			if !d.AllArgs(&v) {
				return nil, d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return nil, d.Errf("invalid %s '%s': want a positive duration", opt, v)
			}
			if opt == "lifetime" {
				pp.Lifetime = caddy.Duration(dur)
			} else {
				pp.DirectoryRefresh = caddy.Duration(dur)
			}
		case "context":
			if !d.AllArgs(&pp.Context) {
				return nil, d.ArgErr()
			}
			if pp.Context != contextRandom && pp.Context != contextWindow {
				return nil, d.Errf("invalid context '%s': want random or window", pp.Context)
			}
		case "secret":
			if err := caddyopts.Secret(d, &pp.Secret); err != nil {
				return nil, err
			}
		case "grease":
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			pp.Grease = true
		default:
			return nil, d.Errf("unrecognized privacy_pass option '%s'", opt)
		}
	}
	if pp.IssuerName == "" {
		return nil, d.Err("privacy_pass needs issuer_name")
	}
	return pp, nil
}

// unmarshalIssuer parses the issuer block.
func unmarshalIssuer(d *caddyfile.Dispenser) (*TokenIssuer, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	is := new(TokenIssuer)
	for opt, err := range caddyopts.Block(d, "issuer", "key") {
		if err != nil {
			return nil, err
		}
		switch opt {
		case "key":
			var file string
			if !d.AllArgs(&file) {
				return nil, d.ArgErr()
			}
			is.KeyFiles = append(is.KeyFiles, file)
		case "request_path":
			if !d.AllArgs(&is.RequestPath) {
				return nil, d.ArgErr()
			}
		default:
			return nil, d.Errf("unrecognized issuer option '%s'", opt)
		}
	}
	if err := is.validate(); err != nil {
		return nil, d.Errf("issuer: %v", err)
	}
	return is, nil
}

// unmarshalPeers parses the peers block.
func unmarshalPeers(d *caddyfile.Dispenser) (*PeerList, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	pl := new(PeerList)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		list := &pl.Allow
		switch opt {
		case "allow":
		case "deny":
			list = &pl.Deny
		default:
			return nil, d.Errf("unrecognized peers option '%s'", opt)
		}
		args := d.RemainingArgs()
		if len(args) == 0 {
			return nil, d.ArgErr()
		}
		for _, a := range args {
			a = strings.ToLower(strings.TrimSuffix(a, "."))
			if slices.Contains(pl.Allow, a) || slices.Contains(pl.Deny, a) {
				return nil, d.Errf("duplicate peers entry '%s'", a)
			}
			*list = append(*list, a)
		}
	}
	if len(pl.Allow) == 0 && len(pl.Deny) == 0 {
		return nil, d.Err("peers needs allow or deny")
	}
	return pl, nil
}
