package caddymodule

import (
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-mimi/caddy-mimi/caddymodule/internal/caddyopts"
	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("mimi_local", parseLocalCaddyfile)
	// Before respond is after basic_auth and forward_auth, so the
	// authentication handler in front has run.
	httpcaddyfile.RegisterDirectiveOrder("mimi_local", httpcaddyfile.Before, "respond")
}

func parseLocalCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	l := new(LocalAPI)
	if err := l.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return l, nil
}

// UnmarshalCaddyfile sets up the local client API from Caddyfile tokens.
// Syntax:
//
//	mimi_local [<matcher>] {
//		provider                    <domain...>
//		user                        <placeholder>
//		data_dir                    <path>
//		max_body                    <size>
//		max_binding_lifetime        <duration>
//		max_wait                    <duration>
//		max_long_polls              <n>
//		max_long_polls_per_user     <n>
//		max_key_packages_per_client <n>
//		max_key_packages_per_user   <n>
//		publish_rate                <key_packages>/<duration>
//		publish_burst               <n>
//		remote_claim_rate           <events>/<duration>
//		remote_claim_burst          <n>
//		cipher_suites               <suite...>
//	}
//
// provider is required and every option may appear once;
// max_long_polls_per_user may not exceed max_long_polls, nor
// max_key_packages_per_client max_key_packages_per_user. Mount it with
// handle_path behind an authentication handler:
//
//	handle_path /local/* {
//		basic_auth { alice <hash> }
//		mimi_local { provider example.com }
//	}
func (h *LocalAPI) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for opt, err := range caddyopts.Block(d, "mimi_local") {
		if err != nil {
			return err
		}
		switch opt {
		case "provider":
			h.Providers = d.RemainingArgs()
			if len(h.Providers) == 0 {
				return d.ArgErr()
			}
		case "user":
			if !d.AllArgs(&h.User) {
				return d.ArgErr()
			}
			if !strings.Contains(h.User, "{") {
				return d.Errf("invalid user '%s': want a placeholder such as {http.auth.user.id}", h.User)
			}
		case "data_dir":
			if !d.AllArgs(&h.DataDir) {
				return d.ArgErr()
			}
		case "max_body":
			n, err := sizeArg(d, opt, maxLocalMaxBody, "8MiB")
			if err != nil {
				return err
			}
			h.MaxBody = n
		case "max_binding_lifetime", "max_wait":
			dur, err := durationArg(d, opt)
			if err != nil {
				return err
			}
			v := d.Val()
			if opt == "max_binding_lifetime" {
				if dur < time.Second || dur > maxLocalBindingLifetime {
					return d.Errf("invalid max_binding_lifetime '%s': want 1s to 90d", v)
				}
				h.MaxBindingLifetime = caddy.Duration(dur)
			} else {
				if dur < time.Second || dur > maxLocalWait {
					return d.Errf("invalid max_wait '%s': want 1s to %s", v, maxLocalWait)
				}
				h.MaxWait = caddy.Duration(dur)
			}
		case "max_long_polls", "max_long_polls_per_user":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxLongPolls {
				return d.Errf("invalid %s '%s': want a number from 1 to %d", opt, v, maxLongPolls)
			}
			if opt == "max_long_polls" {
				h.MaxLongPolls = n
			} else {
				h.MaxLongPollsPerUser = n
			}
		case "max_key_packages_per_client", "max_key_packages_per_user":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			most := maxLocalKeyPackages
			if opt == "max_key_packages_per_client" {
				most = localapi.MaxPublish
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > most {
				return d.Errf("invalid %s '%s': want a number from 1 to %d", opt, v, most)
			}
			if opt == "max_key_packages_per_client" {
				h.MaxKeyPackagesPerClient = n
			} else {
				h.MaxKeyPackagesPerUser = n
			}
		case "remote_claim_rate":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			events, window, err := parseRate(v)
			if err != nil {
				return d.Errf("invalid remote_claim_rate '%s': %v", v, err)
			}
			h.RemoteClaims, h.RemoteClaimWindow = events, window
		case "publish_rate":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			n, window, err := parseRate(v)
			if err != nil {
				return d.Errf("invalid publish_rate '%s': %v", v, err)
			}
			h.PublishRate, h.PublishWindow = n, window
		case "publish_burst":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return d.Errf("invalid publish_burst '%s': want a positive integer", v)
			}
			h.PublishBurst = n
		case "remote_claim_burst":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return d.Errf("invalid remote_claim_burst '%s': want a positive integer", v)
			}
			h.RemoteClaimBurst = n
		case "cipher_suites":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, a := range args {
				n, err := strconv.ParseUint(a, 10, 16)
				if err != nil || !mls.CipherSuite(n).Supported() {
					return d.Errf("invalid cipher suite '%s': want an implemented RFC 9420 suite number (1, 2, 3, 5, 7)", a)
				}
				h.CipherSuites = append(h.CipherSuites, uint16(n))
			}
		default:
			return d.Errf("unrecognized mimi_local option '%s'", opt)
		}
	}
	if len(h.Providers) == 0 {
		return d.Err("mimi_local: provider is required")
	}
	if h.MaxLongPolls > 0 && h.MaxLongPollsPerUser > h.MaxLongPolls {
		return d.Errf("invalid max_long_polls_per_user '%d': want at most max_long_polls (%d)", h.MaxLongPollsPerUser, h.MaxLongPolls)
	}
	if h.MaxKeyPackagesPerUser > 0 && h.MaxKeyPackagesPerClient > h.MaxKeyPackagesPerUser {
		return d.Errf("invalid max_key_packages_per_client '%d': want at most max_key_packages_per_user (%d)",
			h.MaxKeyPackagesPerClient, h.MaxKeyPackagesPerUser)
	}
	return nil
}

// Interface guard.
var _ caddyfile.Unmarshaler = (*LocalAPI)(nil)
