package caddymodule

import (
	"bytes"
	"fmt"
	"os"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-mimi/caddy-mimi/caddymodule/internal/caddyopts"
	"github.com/caddy-mimi/caddy-mimi/mimicore/federation"
)

// Delivery targets (Delivery.Target).
const (
	targetLocalQueues = "local_queues"
	targetBackend     = "backend"
)

// Delivery chooses where the messages for this provider's own clients go
// (docs/protocol.md §11): the local queues that the local client API
// serves, or the legacy backend, an upstream URL that gets each one as a
// signed POST, retried through the outbox until it answers 2xx.
type Delivery struct {
	// Target is `local_queues` or `backend`. Default: local_queues.
	Target string `json:"target,omitempty"`

	// URL is the legacy backend's endpoint, http or https (the system's
	// roots verify https), for target backend; redirects are not
	// followed. Required with target backend.
	URL string `json:"url,omitempty"`

	// Key is the HMAC-SHA256 key shared with the backend, at least 32
	// bytes, usually a placeholder resolved at provision time
	// (`{env.MIMI_BACKEND_KEY}`, `{file./etc/caddy-mimi/backend.key}`).
	// Surrounding white space is removed. It is never logged. Exactly
	// one of Key and KeyFile is required with target backend.
	Key string `json:"key,omitempty"`

	// KeyFile is a file holding the key; its content without
	// surrounding white space is the key.
	KeyFile string `json:"key_file,omitempty"`

	// Timeout bounds one POST to the backend, answer included.
	// Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// validate checks the options; errors never show the key.
func (d *Delivery) validate() error {
	if d == nil {
		return nil
	}
	switch d.Target {
	case "", targetLocalQueues:
		if d.URL != "" || d.Key != "" || d.KeyFile != "" || d.Timeout != 0 {
			return fmt.Errorf("mimi: delivery: url, key, key_file and timeout apply to target %s only", targetBackend)
		}
		return nil
	case targetBackend:
	default:
		return fmt.Errorf("mimi: delivery: target %q is not %s or %s", d.Target, targetLocalQueues, targetBackend)
	}
	if err := federation.CheckBackendURL(d.URL); err != nil {
		return fmt.Errorf("mimi: delivery backend: %w", err)
	}
	if (d.Key == "") == (d.KeyFile == "") {
		return fmt.Errorf("mimi: delivery backend: exactly one of key and key_file is required")
	}
	if d.Timeout < 0 {
		return fmt.Errorf("mimi: delivery backend: negative timeout")
	}
	return nil
}

// backend builds the legacy backend target, reading its key; nil for the
// local queues.
func (d *Delivery) backend() (*federation.Backend, error) {
	if d == nil || d.Target != targetBackend {
		return nil, nil
	}
	var key []byte
	if d.KeyFile != "" {
		b, err := os.ReadFile(d.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("mimi: delivery backend key_file: %w", err)
		}
		key = bytes.TrimSpace(b)
	} else {
		// {env.*} and {file.*}; an unset or empty one is an error that
		// names the placeholder, never the value, which may be the key.
		v, err := caddy.NewReplacer().ReplaceOrErr(d.Key, true, true)
		if err != nil {
			return nil, fmt.Errorf("mimi: delivery backend key: %w", err)
		}
		key = bytes.TrimSpace([]byte(v))
	}
	b := &federation.Backend{URL: d.URL, Key: key, Timeout: time.Duration(d.Timeout)}
	if err := b.Check(); err != nil {
		return nil, fmt.Errorf("mimi: delivery backend: %w", err)
	}
	return b, nil
}

// unmarshalDelivery parses the delivery option, whose target is the
// current token:
//
//	delivery local_queues
//	delivery backend <url> {
//		key      <value>
//		key_file <path>
//		timeout  <duration>
//	}
func unmarshalDelivery(d *caddyfile.Dispenser) (*Delivery, error) {
	dl := new(Delivery)
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	dl.Target = d.Val()
	switch dl.Target {
	case targetLocalQueues:
		if d.NextArg() || d.NextBlock(d.Nesting()) {
			return nil, d.Errf("delivery %s takes no argument and no block", targetLocalQueues)
		}
		return dl, nil
	case targetBackend:
		if !d.AllArgs(&dl.URL) {
			return nil, d.ArgErr()
		}
	default:
		return nil, d.Errf("unrecognized delivery target '%s': want %s or %s", dl.Target, targetLocalQueues, targetBackend)
	}
	for opt, err := range caddyopts.Block(d, "delivery") {
		if err != nil {
			return nil, err
		}
		switch opt {
		case "key":
			// Not quoted in errors: it may be the key itself.
			if err := caddyopts.Secret(d, &dl.Key); err != nil {
				return nil, err
			}
		case "key_file":
			if !d.AllArgs(&dl.KeyFile) {
				return nil, d.ArgErr()
			}
		case "timeout":
			dur, err := durationArg(d, opt)
			if err != nil {
				return nil, err
			}
			dl.Timeout = caddy.Duration(dur)
		default:
			return nil, d.Errf("unrecognized delivery option '%s'", opt)
		}
	}
	if err := dl.validate(); err != nil {
		return nil, d.Errf("%v", err)
	}
	return dl, nil
}
