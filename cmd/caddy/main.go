// Command caddy is Caddy with the standard modules and the caddy-mimi plugin,
// for builds without xcaddy (see xcaddy.sh): the embedded default, without
// the cluster backends and their clients (PostgreSQL, Redis, S3), which
// cmd/caddy-cluster adds.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-mimi/caddy-mimi/caddymodule"
	"github.com/caddy-mimi/caddy-mimi/internal/gcdefault"
)

func main() {
	gcdefault.Apply() // GOGC=50 unless the environment sets GOGC
	caddycmd.Main()
}
