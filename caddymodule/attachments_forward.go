package caddymodule

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/caddymodule/internal/caddyopts"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/forward"
)

func init() {
	caddy.RegisterModule(ForwardStorage{})
}

// ForwardStorage hands attachment ciphertexts to the provider's legacy
// backend over HTTP and keeps only their metadata. After Provision it is
// a storage.Backend. The backend's side of the protocol (PUT, HEAD, GET
// with Range, DELETE under base_url, HMAC-SHA256 signatures as for the
// delivery backend, a body made visible only when complete) is in
// docs/protocol.md §6.2, "Attachment storage on the legacy backend".
//
// It holds no exclusive resource (an HTTP client), so the configs on both
// sides of a reload each have their own, without a UsagePool.
type ForwardStorage struct {
	// BaseURL is the URL object names are appended to, ending in '/'
	// (https://legacy.example/mimi/attachments/). Required. Plain http
	// only for a backend on loopback or a private network; redirects are
	// not followed.
	BaseURL string `json:"base_url,omitempty"`
	// Key is the HMAC-SHA256 key shared with the backend, at least 32
	// bytes, usually a placeholder resolved at provision time
	// ({env.MIMI_ATTACHMENTS_KEY}, {file./etc/caddy-mimi/attachments.key}).
	// Surrounding white space is removed. It is never logged. Exactly one
	// of Key and KeyFile is required.
	Key string `json:"key,omitempty"`
	// KeyFile is a file holding the key; its content without surrounding
	// white space is the key.
	KeyFile string `json:"key_file,omitempty"`
	// Timeout bounds a HEAD or DELETE and each wait for an answer to a
	// PUT (to its headers, to its completed body); the body itself streams
	// as long as it flows. Default: 30s.
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

// Provision reads the key and sets up the client. Its errors never show
// the key.
func (f *ForwardStorage) Provision(ctx caddy.Context) error {
	repl := caddy.NewReplacer()
	base, err := repl.ReplaceOrErr(f.BaseURL, true, true)
	if err != nil {
		return fmt.Errorf("forward attachment storage: base_url: %w", err)
	}
	if (f.Key == "") == (f.KeyFile == "") {
		return errors.New("forward attachment storage: exactly one of key and key_file is required")
	}
	var key []byte
	if f.KeyFile != "" {
		b, err := os.ReadFile(f.KeyFile)
		if err != nil {
			return fmt.Errorf("forward attachment storage: key_file: %w", err)
		}
		key = bytes.TrimSpace(b)
	} else {
		v, err := repl.ReplaceOrErr(f.Key, true, true)
		if err != nil {
			// The error names the placeholder, never its value.
			return fmt.Errorf("forward attachment storage: key: %w", err)
		}
		key = bytes.TrimSpace([]byte(v))
	}
	if f.Timeout < 0 {
		return errors.New("forward attachment storage: negative timeout")
	}
	st, err := forward.New(forward.Config{BaseURL: base, Key: key, Timeout: time.Duration(f.Timeout)})
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
// after the name of the module (storage forward ... in the attachments
// block), as the delivery backend option is written:
//
//	forward <base_url> {
//		key      <value>
//		key_file <path>
//		timeout  <duration>
//	}
//
// base_url and exactly one of key (a placeholder, usually) and key_file
// are required; every option may appear once.
func (f *ForwardStorage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if !d.NextArg() {
		return d.ArgErr()
	}
	f.BaseURL = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	for opt, err := range caddyopts.Block(d, "forward") {
		if err != nil {
			return err
		}
		switch opt {
		case "key":
			if err := caddyopts.Secret(d, &f.Key); err != nil {
				return err
			}
		case "key_file":
			if !d.AllArgs(&f.KeyFile) {
				return d.ArgErr()
			}
		case "timeout":
			dur, err := durationArg(d, opt)
			if err != nil {
				return err
			}
			f.Timeout = caddy.Duration(dur)
		default:
			return d.Errf("unrecognized forward option '%s'", opt)
		}
	}
	if (f.Key == "") == (f.KeyFile == "") {
		return d.Err("forward storage needs exactly one of key and key_file")
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
