// Command caddy-cluster is Caddy with the standard modules, the caddy-mimi
// plugin and its cluster backends (PostgreSQL store, Redis rate-limit
// zones, S3 attachment storage; package caddymodule/cluster), for builds
// without xcaddy (see xcaddy.sh, CLUSTER=1).
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-mimi/caddy-mimi/caddymodule"
	_ "github.com/caddy-mimi/caddy-mimi/caddymodule/cluster"
	"github.com/caddy-mimi/caddy-mimi/internal/gcdefault"
)

func main() {
	gcdefault.Apply() // GOGC=50 unless the environment sets GOGC
	caddycmd.Main()
}
