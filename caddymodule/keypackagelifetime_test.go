package caddymodule

import (
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
)

// TestKeyPackageLifetimeOfDataDir checks which max_key_package_lifetime
// a mimi_local handler takes from the gateways of its config and data
// directory: none gives the default (0), one its own (0 meaning the
// default), several the strictest, unlimited (-1) counting as longer
// than any; gateways of another config or directory do not count.
func TestKeyPackageLifetimeOfDataDir(t *testing.T) {
	const day = 24 * time.Hour
	config, other := make(chan struct{}), make(chan struct{})
	type gw struct {
		config <-chan struct{}
		dir    string
		lt     time.Duration
	}
	for _, tc := range []struct {
		name     string
		gateways []gw
		want     time.Duration
	}{
		{"no gateway", nil, 0},
		{"a gateway of another config", []gw{{other, "/d", 30 * day}}, 0},
		{"a gateway of another directory", []gw{{config, "/e", 30 * day}}, 0},
		{"the default", []gw{{config, "/d", 0}}, mls.DefaultMaxLifetime},
		{"one set", []gw{{config, "/d", 30 * day}}, 30 * day},
		{"unlimited", []gw{{config, "/d", -1}}, -1},
		{"unlimited and one set", []gw{{config, "/d", -1}, {config, "/d", 400 * day}}, 400 * day},
		{"one set and unlimited", []gw{{config, "/d", 400 * day}, {config, "/d", -1}}, 400 * day},
		{"the default and a longer one", []gw{{config, "/d", 0}, {config, "/d", 400 * day}}, mls.DefaultMaxLifetime},
		{"the default and a shorter one", []gw{{config, "/d", 0}, {config, "/d", 7 * day}}, 7 * day},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &dirRegistry{entries: map[*dirEntry]struct{}{}}
			for _, g := range tc.gateways {
				r.register(g.config, []string{"example.com"}, g.dir, g.lt)
			}
			if got := r.keyPackageLifetime(config, "/d"); got != tc.want {
				t.Fatalf("keyPackageLifetime = %s, want %s", got, tc.want)
			}
		})
	}
}
