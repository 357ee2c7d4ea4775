package caddymodule

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/forward"
)

func init() {
	caddy.RegisterModule(ForwardStorage{})
}

// ForwardStorage hands attachment ciphertexts to the provider's legacy
// backend over HTTP and keeps only their metadata. After Provision it is
// a storage.Backend. The backend's side of the protocol (PUT, HEAD, GET
// with Range, DELETE under base_url, HMAC-SHA256 signatures, a body made
// visible only when complete) is in docs/protocol.md, "Attachment storage
// on the legacy backend".
//
// It holds no exclusive resource (an HTTP client), so the configs on both
// sides of a reload each have their own, without a UsagePool.
type ForwardStorage struct {
	// BaseURL is the URL object names are appended to, ending in '/'
	// (https://legacy.example/mimi/attachments/). Required. Plain http
	// only for a backend on loopback or a private network.
	BaseURL string `json:"base_url,omitempty"`
	// Secret is the HMAC-SHA256 key shared with the backend: its bytes as
	// written, at least 32. Give it as a placeholder ({env.NAME},
	// {file./path}), resolved in Provision and never logged. Required.
	Secret string `json:"secret,omitempty"`
	// Timeout bounds a HEAD or DELETE and each wait for an answer to a
	// PUT (to its headers, to its completed body); the body itself streams
	// as long as it flows. Default 30s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Store is the backend, set by Provision.
	*forward.Store `json:"-"`
}

// CaddyModule returns the Caddy module information.
func (ForwardStorage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.mimi.attachments.forward",
		New: func() caddy.Module { return new(ForwardStorage) },
	}
}

// Provision resolves the placeholders and sets up the client.
func (f *ForwardStorage) Provision(ctx caddy.Context) error {
	repl := caddy.NewReplacer()
	base, err := repl.ReplaceOrErr(f.BaseURL, true, true)
	if err != nil {
		return fmt.Errorf("forward attachment storage: base_url: %w", err)
	}
	secret, err := repl.ReplaceOrErr(f.Secret, true, true)
	if err != nil {
		// The error names the placeholder, never its value.
		return fmt.Errorf("forward attachment storage: secret: %w", err)
	}
	st, err := forward.New(forward.Config{BaseURL: base, Secret: []byte(secret), Timeout: time.Duration(f.Timeout)})
	if err != nil {
		return fmt.Errorf("forward attachment storage: %w", err)
	}
	f.Store = st
	ctx.Logger().Debug("forward attachment storage ready", zap.String("base_url", base))
	return nil
}

// Cleanup closes the client's idle connections.
func (f *ForwardStorage) Cleanup() error {
	if f.Store != nil {
		return f.Store.Close()
	}
	return nil
}

// UnmarshalCaddyfile sets up the forward storage from Caddyfile tokens,
// after the name of the module (storage forward { ... } in the
// attachments block):
//
//	forward [<base_url>] {
//		base_url <url>
//		secret   <secret>
//		timeout  <duration>
//	}
//
// base_url (on the first line or in the block, once) and secret are
// required; secret should be a placeholder.
func (f *ForwardStorage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if d.NextArg() {
		f.BaseURL = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] || (opt == "base_url" && f.BaseURL != "") {
			return d.Errf("duplicate forward option '%s'", opt)
		}
		seen[opt] = true
		switch opt {
		case "base_url":
			if !d.AllArgs(&f.BaseURL) {
				return d.ArgErr()
			}
		case "secret":
			if !d.AllArgs(&f.Secret) {
				return d.ArgErr()
			}
		case "timeout":
			dur, err := durationArg(d, opt)
			if err != nil {
				return err
			}
			if dur <= 0 {
				return d.Errf("invalid timeout '%s': want a positive duration", d.Val())
			}
			f.Timeout = caddy.Duration(dur)
		default:
			return d.Errf("unrecognized forward option '%s'", opt)
		}
	}
	if f.BaseURL == "" || f.Secret == "" {
		return d.Err("forward storage needs base_url and secret")
	}
	return nil
}

// Interface guards.
var (
	_ caddy.Provisioner     = (*ForwardStorage)(nil)
	_ caddy.CleanerUpper    = (*ForwardStorage)(nil)
	_ caddyfile.Unmarshaler = (*ForwardStorage)(nil)
	_ storage.Backend       = (*ForwardStorage)(nil)
)
