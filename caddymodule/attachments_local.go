package caddymodule

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/localfs"
)

func init() {
	caddy.RegisterModule(LocalStorage{})
}

// LocalStorage is the local attachment backend,
// http.mimi.attachments.local, and the default one: ciphertexts as files
// under Root (package localfs: a temporary file streamed, fsynced and
// renamed into place; file names are random, never request data).
type LocalStorage struct {
	// Root is the directory of the files, created (0700) when missing.
	// Default: <data_dir>/attachments of the gateway.
	Root string `json:"root,omitempty"`

	// Backend is the opened localfs backend.
	storage.Backend `json:"-"`
}

// CaddyModule returns the Caddy module information.
func (LocalStorage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.mimi.attachments.local",
		New: func() caddy.Module { return new(LocalStorage) },
	}
}

// Provision opens the backend when Root is set; otherwise the gateway
// opens it under its data directory (setDataDir).
func (l *LocalStorage) Provision(caddy.Context) error {
	if l.Root == "" {
		return nil
	}
	return l.open(l.Root)
}

// setDataDir opens the backend under dataDir/attachments unless Root
// was set.
func (l *LocalStorage) setDataDir(dataDir string) error {
	if l.Backend != nil {
		return nil
	}
	if dataDir == "" {
		return errors.New("local: no root and no data directory")
	}
	l.Root = filepath.Join(dataDir, attachmentsDir)
	return l.open(l.Root)
}

func (l *LocalStorage) open(root string) error {
	b, err := localfs.New(root)
	if err != nil {
		return fmt.Errorf("local attachment storage: %w", err)
	}
	l.Backend = b
	return nil
}

// UnmarshalCaddyfile parses
//
//	storage local [<root>]
//
// or the same root in a block: storage local { root <dir> }.
func (l *LocalStorage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if d.NextArg() {
		l.Root = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "root":
			if l.Root != "" {
				return d.Err("local storage root given twice")
			}
			if !d.AllArgs(&l.Root) {
				return d.ArgErr()
			}
		default:
			return d.Errf("unrecognized local storage option '%s'", d.Val())
		}
	}
	return nil
}

// Interface guards.
var (
	_ caddy.Provisioner     = (*LocalStorage)(nil)
	_ caddyfile.Unmarshaler = (*LocalStorage)(nil)
	_ storage.Backend       = (*LocalStorage)(nil)
	_ dataDirDefaulter      = (*LocalStorage)(nil)
)
