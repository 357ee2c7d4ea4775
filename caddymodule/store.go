package caddymodule

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-mimi/caddy-mimi/caddymodule/internal/caddyopts"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
)

// Store backends of StoreConfig.Backend.
const (
	storeSQLite   = "sqlite"
	storePostgres = "postgres"
	// maxStoreConns caps max_conns: PostgreSQL's own default limit is 100
	// connections for every client together.
	maxStoreConns = 1000
)

// StoreConfig chooses where the provider's state lives. The embedded
// default, SQLite in data_dir, serves one gateway; several gateways of one
// provider share a PostgreSQL database, and then their signing keys live
// in it too, sealed under the gateway's key_secret.
type StoreConfig struct {
	// Backend is `sqlite` (the default) or `postgres`.
	Backend string `json:"backend,omitempty"`

	// DSN is the PostgreSQL connection string, a URL
	// (`postgres://user:password@host:5432/db?sslmode=verify-full`) or
	// key=value pairs. Placeholders such as `{env.MIMI_PG_DSN}` or
	// `{file./run/secrets/pg_dsn}` are replaced when the gateway is
	// provisioned, so a password need not be in the config; an unknown or
	// empty placeholder is an error. Required with backend postgres.
	DSN string `json:"dsn,omitempty"`

	// MaxConns is the most connections the gateway opens to PostgreSQL;
	// a pool_max_conns in the DSN is ignored, this (or its default) takes
	// its place. Default: 16; at most 1000.
	MaxConns int `json:"max_conns,omitempty"`
}

// validateStore checks the store and key secret options of g.
func (g *Gateway) validateStore() error {
	if g.KeySecret != "" && g.KeySecretFile != "" {
		return errors.New("mimi: key_secret and key_secret_file: at most one of them")
	}
	s := g.Store
	if s == nil || s.Backend == "" || s.Backend == storeSQLite {
		if s != nil && (s.DSN != "" || s.MaxConns != 0) {
			return errors.New("mimi: store: a dsn and max_conns apply to backend postgres only")
		}
		return nil
	}
	if s.Backend != storePostgres {
		return fmt.Errorf("mimi: store: backend %q is not sqlite or postgres", s.Backend)
	}
	if s.DSN == "" {
		return errors.New("mimi: store postgres: the connection string (dsn) is required")
	}
	if s.MaxConns < 0 || s.MaxConns > maxStoreConns {
		return fmt.Errorf("mimi: store postgres max_conns: %d is outside 1..%d", s.MaxConns, maxStoreConns)
	}
	if g.KeySecret == "" && g.KeySecretFile == "" {
		return errors.New("mimi: store postgres needs key_secret or key_secret_file: the gateways sharing the database sign with keys sealed in it under that secret")
	}
	return nil
}

// storeOptions resolves the store and key secret options into the
// service's, replacing placeholders and reading the secret file.
func (g *Gateway) storeOptions() (service.StoreOptions, []byte, error) {
	var opts service.StoreOptions
	repl := caddy.NewReplacer()
	if s := g.Store; s != nil && s.Backend == storePostgres {
		dsn, err := repl.ReplaceOrErr(s.DSN, true, true)
		if err != nil {
			// Not quoting the value: it may hold a password.
			return opts, nil, fmt.Errorf("mimi: store postgres: replacing placeholders in the connection string: %w", err)
		}
		opts = service.StoreOptions{Postgres: dsn, MaxConns: int32(s.MaxConns)}
	}
	var encoded string
	switch {
	case g.KeySecretFile != "":
		b, err := os.ReadFile(g.KeySecretFile)
		if err != nil {
			return opts, nil, fmt.Errorf("mimi: key_secret_file: %w", err)
		}
		encoded = string(b)
	case g.KeySecret != "":
		v, err := repl.ReplaceOrErr(g.KeySecret, true, true)
		if err != nil {
			return opts, nil, fmt.Errorf("mimi: key_secret: %w", err)
		}
		encoded = v
	default:
		return opts, nil, nil
	}
	secret, err := provider.ParseKeySecret(encoded)
	if err != nil {
		return opts, nil, fmt.Errorf("mimi: key secret: %w", err)
	}
	return opts, secret, nil
}

// unmarshalStore parses the store option:
//
//	store sqlite
//	store postgres <dsn> {
//		max_conns <n>
//	}
func unmarshalStore(d *caddyfile.Dispenser) (*StoreConfig, error) {
	s := new(StoreConfig)
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	s.Backend = d.Val()
	switch s.Backend {
	case storeSQLite:
		if d.NextArg() || d.NextBlock(d.Nesting()) {
			return nil, d.Errf("store sqlite takes no arguments or block")
		}
		return s, nil
	case storePostgres:
		if !d.AllArgs(&s.DSN) {
			return nil, d.Errf("store postgres takes one argument, the connection string")
		}
	default:
		return nil, d.Errf("invalid store backend '%s': want sqlite or postgres", s.Backend)
	}
	for opt, err := range caddyopts.Block(d, "store") {
		if err != nil {
			return nil, err
		}
		switch opt {
		case "max_conns":
			var v string
			if !d.AllArgs(&v) {
				return nil, d.ArgErr()
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxStoreConns {
				return nil, d.Errf("invalid max_conns '%s': want 1 to %d", v, maxStoreConns)
			}
			s.MaxConns = n
		default:
			return nil, d.Errf("unrecognized store option '%s'", opt)
		}
	}
	return s, nil
}
