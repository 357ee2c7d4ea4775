// Package caddyopts reads the options of a Caddyfile block, the loop that
// every block of the mimi directives shares.
package caddyopts

import (
	"iter"
	"slices"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Block returns the options of the block d is at, in order: each yields
// the option's name with d at it, for the caller to read its arguments.
// An option given a second time, unless it is one of repeatable, yields
// the error "duplicate <what> option '<name>'" and ends the block.
func Block(d *caddyfile.Dispenser, what string, repeatable ...string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		seen := map[string]bool{}
		for nesting := d.Nesting(); d.NextBlock(nesting); {
			opt := d.Val()
			if seen[opt] && !slices.Contains(repeatable, opt) {
				yield("", d.Errf("duplicate %s option '%s'", what, opt))
				return
			}
			seen[opt] = true
			if !yield(opt, nil) {
				return
			}
		}
	}
}

// Secret reads the one argument of the option d is at, a secret (a key, a
// password, or a placeholder for one), into v. Its error names the option
// and never the value: d.ArgErr quotes the token before the fault, which is
// the secret itself when a second argument follows it, and Caddy prints and
// logs that error.
func Secret(d *caddyfile.Dispenser, v *string) error {
	opt := d.Val()
	if !d.AllArgs(v) {
		return d.Errf("%s takes one argument, the secret or a placeholder such as {env.NAME} (not quoted here)", opt)
	}
	return nil
}
