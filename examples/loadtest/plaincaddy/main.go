// Command plaincaddy is Caddy with its standard modules only, built from
// the Caddy version go.mod pins and with the flags of xcaddy.sh: the
// baseline attachbench.sh measures the gateway's memory against.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func main() {
	caddycmd.Main()
}
