// Command mimictl is a command-line MIMI client for operators and scripts:
// it keeps one MLS client's state in a directory, gets its client binding
// and publishes its KeyPackages through the gateway's local client API,
// and creates and runs groups, sends and receives messages through the
// gateway's Delivery Service. Run mimictl -h for the commands; package cli
// holds the implementation.
package main

import (
	"os"

	"github.com/caddy-mimi/caddy-mimi/cmd/mimictl/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], cli.Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}))
}
