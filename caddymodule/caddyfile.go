package caddymodule

import (
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/caddy-mimi/caddy-mimi/caddymodule/internal/caddyopts"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("mimi", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("mimi", httpcaddyfile.Before, "respond")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	g := new(Gateway)
	if err := g.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return g, nil
}

// UnmarshalCaddyfile sets up the gateway from Caddyfile tokens. Syntax:
//
//	mimi [<matcher>] {
//		provider            <domain...>
//		ds_domain           <host[:port]>
//		data_dir            <path>
//		store sqlite
//		store postgres <dsn> {
//			max_conns <n>
//		}
//		key_secret          <value>
//		key_secret_file     <path>
//		max_body            <size>
//		queue_max_messages  <n>
//		queue_max_bytes     <size>
//		key_rotation        <duration>
//		key_overlap         <duration>
//		key_scheme          ed25519|ecdsa_secp256r1_sha256
//		trusted_tls_proxies <cidr|ip...>
//		federation {
//			allow_private_addresses
//			allow_ports <port...>
//			resolve     <host> <ip:port>
//			root_ca     <pem_file>
//			trust_pki_ca <ca_id>
//			timeout     <duration>
//			max_backoff   <duration>
//			give_up_after <duration>
//			max_backlog_messages <n>
//			max_backlog_bytes    <size>
//		}
//		delivery local_queues
//		delivery backend <url> {
//			key      <value>
//			key_file <path>
//			timeout  <duration>
//		}
//		rate_limit <zone> {
//			key        remote_ip|ip_prefix <v4_bits> <v6_bits>|sender_provider|group|member|<placeholder>
//			rate       <events>/<duration>
//			burst      <events>
//			endpoints  <endpoint...>
//			over_limit refuse|token
//			max_keys   <n>
//			redis      <host:port> {
//				password <value>
//				db       <n>
//				timeout  <duration>
//				prefix   <string>
//				retry    <duration>
//			}
//		}
//		relay_limit {
//			rate      <events>/<duration>
//			burst     <events>
//			hub_rate  <events>/<duration>
//			hub_burst <events>
//		}
//		privacy_pass {
//			issuer_name      <host[:port]>
//			origin_info      <name...>
//			token_key        1|2 <key_file>
//			issuer_directory <https_url>
//			directory_refresh <duration>
//			require          <endpoint...>
//			lifetime         <duration>
//			context          random|window
//			secret           <value>
//			grease
//		}
//		issuer {
//			key          <key_file>
//			request_path <path>
//		}
//		peers {
//			allow <domain...>
//			deny  <domain...>
//		}
//		mutual_tls {
//			present_only
//			root_ca      <pem_file>
//			trust_pki_ca <ca_id>
//			system_roots
//			certificate  <cert_file> <key_file>
//		}
//		unchecked_client_bindings
//		max_key_package_lifetime <duration>|unlimited
//		attachments [off] {
//			max_size                <size>
//			group_quota             <size> [<count>]
//			uploader_quota          <size> [<count>]
//			retention               <duration>
//			upload_deadline         <duration>
//			commit_grace            <duration>
//			allow_delete_by_members
//			max_uploads_in_progress <n>
//			storage                 local [<root>] | local { root <dir> }
//			storage                 s3 {
//				endpoint   <host[:port]>
//				bucket     <name>
//				prefix     <string>
//				region     <name>
//				access_key <value>
//				secret_key <value>
//				insecure
//				path_style
//				part_size  <size>
//			}
//			storage                 forward <base_url> {
//				key      <value>
//				key_file <path>
//				timeout  <duration>
//			}
//		}
//	}
//
// Every option may appear once, except resolve, root_ca and trust_pki_ca in
// federation, rate_limit (once per zone name), token_key in privacy_pass,
// key in issuer, allow and deny in peers, and root_ca and trust_pki_ca in
// mutual_tls.
//
// mutual_tls (docs/protocol.md §4.4) presents this gateway's certificate
// (Caddy's for the ds_domain host, or the certificate files) when it sends
// to peers, and requires every provider-signed request to come with a
// client certificate that names the sender's DS authority and chains to the
// system roots, or to root_ca and trust_pki_ca (plus the system roots with
// system_roots); present_only only presents, and is refused with the
// options choosing roots. The site must ask for client
// certificates with tls { client_auth { mode request } }.
//
// An endpoint is named by its path (/connection_request) or by the path
// without the slash (connection_request); the issuer's request path is also
// token_request. A rate_limit zone needs key and rate; burst defaults to the
// events of rate, endpoints to every endpoint the key applies to (except
// /healthz and the issuer directory). over_limit token admits a request over
// the limit when it carries a valid Privacy Pass token, which is how
// "connection_request needs a token or is under the per-provider limit" is
// written:
//
//	rate_limit per_provider {
//		key        sender_provider
//		rate       60/1m
//		endpoints  connection_request
//		over_limit token
//	}
//
// delivery chooses where messages for this provider's own clients go: the
// local queues (the default), or the legacy backend at url, signed with
// the key (a placeholder such as {env.MIMI_BACKEND_KEY}, or key_file), as
// docs/protocol.md §11 describes.
//
// store postgres keeps the provider's state in a PostgreSQL database that
// several gateways share; dsn may be, or hold, placeholders
// ({env.MIMI_PG_DSN}). It needs key_secret (a placeholder such as
// {env.MIMI_KEY_SECRET}) or key_secret_file: the signing keys are sealed
// in the database under it.
//
// unchecked_client_bindings switches the Delivery Service's client binding
// check off; it is only for replaying recorded third-party MLS transcripts,
// never for a gateway that serves clients.
//
// max_key_package_lifetime is the longest total lifetime (not_after -
// not_before) of a KeyPackage leaf the Delivery Service lets into a
// group, from 1h to 3650d (default 366d); unlimited, like
// unchecked_client_bindings, is only for replaying recorded third-party
// transcripts.
//
// privacy_pass needs issuer_name and a key source: token_key files,
// issuer_directory, or the keys of the issuer block. secret applies to
// context window and should be a placeholder ({env.NAME}, {file./path}).
func (g *Gateway) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for opt, err := range caddyopts.Block(d, "mimi", "rate_limit") {
		if err != nil {
			return err
		}
		switch opt {
		case "provider":
			g.Providers = d.RemainingArgs()
			if len(g.Providers) == 0 {
				return d.ArgErr()
			}
		case "ds_domain":
			if !d.AllArgs(&g.DSDomain) {
				return d.ArgErr()
			}
		case "data_dir":
			if !d.AllArgs(&g.DataDir) {
				return d.ArgErr()
			}
		case "store":
			st, err := unmarshalStore(d)
			if err != nil {
				return err
			}
			g.Store = st
		case "key_secret":
			if err := caddyopts.Secret(d, &g.KeySecret); err != nil {
				return err
			}
		case "key_secret_file":
			if !d.AllArgs(&g.KeySecretFile) {
				return d.ArgErr()
			}
		case "max_body":
			n, err := sizeArg(d, opt, maxMaxBody, "64MiB")
			if err != nil {
				return err
			}
			g.MaxBody = n
		case "queue_max_messages":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxQueueMessages {
				return d.Errf("invalid queue_max_messages '%s': want 1 to %d", v, maxQueueMessages)
			}
			g.QueueMaxMessages = n
		case "queue_max_bytes":
			n, err := sizeArg(d, opt, maxQueueBytes, "64GiB")
			if err != nil {
				return err
			}
			g.QueueMaxBytes = n
		case "key_rotation", "key_overlap":
			dur, err := durationArg(d, opt)
			if err != nil {
				return err
			}
			if opt == "key_rotation" {
				g.KeyRotation = caddy.Duration(dur)
			} else {
				g.KeyOverlap = caddy.Duration(dur)
			}
		case "key_scheme":
			if !d.AllArgs(&g.KeyScheme) {
				return d.ArgErr()
			}
			if _, err := parseScheme(g.KeyScheme); err != nil {
				return d.Errf("%v", err)
			}
		case "trusted_tls_proxies":
			g.TrustedTLSProxies = d.RemainingArgs()
			if len(g.TrustedTLSProxies) == 0 {
				return d.ArgErr()
			}
			for _, c := range g.TrustedTLSProxies {
				if _, err := parsePrefix(c); err != nil {
					return d.Errf("invalid trusted_tls_proxies: %v", err)
				}
			}
		case "mutual_tls":
			if d.NextArg() {
				return d.ArgErr()
			}
			m, err := unmarshalMutualTLS(d)
			if err != nil {
				return err
			}
			g.MutualTLS = m
		case "federation":
			if d.NextArg() {
				return d.ArgErr()
			}
			f, err := unmarshalFederation(d)
			if err != nil {
				return err
			}
			g.Federation = f
		case "delivery":
			dl, err := unmarshalDelivery(d)
			if err != nil {
				return err
			}
			g.Delivery = dl
		case "rate_limit":
			z, err := unmarshalRateLimit(d)
			if err != nil {
				return err
			}
			for _, have := range g.RateLimits {
				if have.Name == z.Name {
					return d.Errf("duplicate rate_limit zone '%s'", z.Name)
				}
			}
			g.RateLimits = append(g.RateLimits, z)
		case "relay_limit":
			if d.NextArg() {
				return d.ArgErr()
			}
			l, err := unmarshalRelayLimit(d)
			if err != nil {
				return err
			}
			g.RelayLimit = l
		case "privacy_pass":
			pp, err := unmarshalPrivacyPass(d)
			if err != nil {
				return err
			}
			g.PrivacyPass = pp
		case "issuer":
			is, err := unmarshalIssuer(d)
			if err != nil {
				return err
			}
			g.Issuer = is
		case "max_key_package_lifetime":
			lt, err := keyPackageLifetimeArg(d, opt)
			if err != nil {
				return err
			}
			g.MaxKeyPackageLifetime = lt
		case "unchecked_client_bindings":
			if d.NextArg() {
				return d.ArgErr()
			}
			g.UncheckedClientBindings = true
		case "attachments":
			a, err := unmarshalAttachments(d)
			if err != nil {
				return err
			}
			g.Attachments = a
		case "peers":
			pl, err := unmarshalPeers(d)
			if err != nil {
				return err
			}
			g.Peers = pl
		default:
			return d.Errf("unrecognized mimi option '%s'", opt)
		}
	}
	return nil
}

// unmarshalFederation parses the federation block.
func unmarshalFederation(d *caddyfile.Dispenser) (*Federation, error) {
	f := new(Federation)
	for opt, err := range caddyopts.Block(d, "federation", "resolve", "root_ca", "trust_pki_ca") {
		if err != nil {
			return nil, err
		}
		switch opt {
		case "allow_private_addresses":
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			f.AllowPrivateAddresses = true
		case "allow_ports":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, d.ArgErr()
			}
			for _, a := range args {
				p, err := strconv.Atoi(a)
				if err != nil || p < 1 || p > 65535 {
					return nil, d.Errf("invalid port '%s'", a)
				}
				f.AllowedPorts = append(f.AllowedPorts, p)
			}
		case "resolve":
			var host, addr string
			if !d.AllArgs(&host, &addr) {
				return nil, d.ArgErr()
			}
			if f.Resolve == nil {
				f.Resolve = map[string]string{}
			}
			host = normalizeHost(host)
			if _, dup := f.Resolve[host]; dup {
				return nil, d.Errf("duplicate resolve entry for '%s'", host)
			}
			f.Resolve[host] = addr
		case "root_ca":
			var file string
			if !d.AllArgs(&file) {
				return nil, d.ArgErr()
			}
			f.RootCAFiles = append(f.RootCAFiles, file)
		case "trust_pki_ca":
			var id string
			if !d.AllArgs(&id) {
				return nil, d.ArgErr()
			}
			f.TrustPKICAs = append(f.TrustPKICAs, id)
		case "timeout":
			var v string
			if !d.AllArgs(&v) {
				return nil, d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return nil, d.Errf("invalid federation timeout '%s'", v)
			}
			f.Timeout = caddy.Duration(dur)
		case "max_backoff", "give_up_after":
			dur, err := durationArg(d, opt)
			if err != nil {
				return nil, err
			}
			if opt == "max_backoff" {
				f.MaxBackoff = caddy.Duration(dur)
			} else {
				f.GiveUpAfter = caddy.Duration(dur)
			}
		case "max_backlog_messages":
			var v string
			if !d.AllArgs(&v) {
				return nil, d.ArgErr()
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxBacklogMessages {
				return nil, d.Errf("invalid max_backlog_messages '%s': want 1 to %d", v, maxBacklogMessages)
			}
			f.MaxBacklogMessages = n
		case "max_backlog_bytes":
			n, err := sizeArg(d, opt, maxBacklogBytes, "1TiB")
			if err != nil {
				return nil, err
			}
			if n < minBacklogBytes {
				return nil, d.Errf("invalid max_backlog_bytes '%s': want a size from 2MiB to 1TiB", d.Val())
			}
			f.MaxBacklogBytes = n
		default:
			return nil, d.Errf("unrecognized federation option '%s'", opt)
		}
	}
	return f, nil
}

// sizeArg reads option opt's one argument, a size from 1 byte to limit
// (written limitText in the error).
func sizeArg(d *caddyfile.Dispenser, opt string, limit uint64, limitText string) (int64, error) {
	var v string
	if !d.AllArgs(&v) {
		return 0, d.ArgErr()
	}
	n, err := humanize.ParseBytes(v)
	if err != nil || n == 0 || n > limit {
		return 0, d.Errf("invalid %s '%s': want a size from 1B to %s", opt, v, limitText)
	}
	return int64(n), nil
}

// durationArg reads option opt's one argument, a positive Caddy duration.
// Zero is refused: in the config structs it stands for the default, so a
// written 0 would silently mean, say, a backoff of 5m.
func durationArg(d *caddyfile.Dispenser, opt string) (time.Duration, error) {
	var v string
	if !d.AllArgs(&v) {
		return 0, d.ArgErr()
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return 0, d.Errf("invalid %s duration '%s': %v", opt, v, err)
	}
	if dur <= 0 {
		return 0, d.Errf("invalid %s duration '%s': want a positive duration", opt, v)
	}
	return dur, nil
}

// maxKeyPackageLifetime is the largest max_key_package_lifetime short of
// unlimited.
const maxKeyPackageLifetime = 3650 * 24 * time.Hour

// keyPackageLifetimeArg parses the argument of max_key_package_lifetime:
// a duration from 1h to 3650d, or unlimited (-1).
func keyPackageLifetimeArg(d *caddyfile.Dispenser, opt string) (caddy.Duration, error) {
	var v string
	if !d.AllArgs(&v) {
		return 0, d.ArgErr()
	}
	if v == "unlimited" {
		return -1, nil
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return 0, d.Errf("invalid %s '%s': %v", opt, v, err)
	}
	if dur < time.Hour || dur > maxKeyPackageLifetime {
		return 0, d.Errf("invalid %s '%s': want 1h to 3650d, or unlimited", opt, v)
	}
	return caddy.Duration(dur), nil
}

// Interface guard.
var _ caddyfile.Unmarshaler = (*Gateway)(nil)
