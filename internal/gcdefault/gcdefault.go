// Package gcdefault sets the garbage collector's target for the gateway's
// own Caddy builds (cmd/caddy and cmd/caddy-cluster, which xcaddy.sh
// builds when xcaddy is not used).
//
// The gateway's live heap is small (about 5 MiB at rest, most of it
// Caddy's standard modules) and its transfers make little garbage, so
// with Go's default GOGC of 100 the heap's peak is set by that headroom:
// a 1 GiB attachment's few MiB of garbage fill it before a collection. At
// 50 the headroom halves, which lowered the peak resident set by about
// 3 MiB in examples/loadtest/attachbench.sh, with no measurable change
// in deliver_message's throughput (README, "Memory"). The setting is the
// process's, as Caddy's own GOMEMLIMIT and GOMAXPROCS tuning is: it
// belongs to a main package, never to a module, which would impose it on
// every site of the Caddy that loads it. A Caddy built by xcaddy runs
// Caddy's main, without it; GOGC in the environment has the same effect.
package gcdefault

import (
	"os"
	"runtime/debug"
)

// Percent is the GOGC value Apply sets.
const Percent = 50

// Apply sets the garbage collector's target percentage to Percent unless
// the environment sets GOGC, which then keeps its meaning (including
// "off"). It returns whether it changed the setting.
func Apply() bool {
	return apply(os.LookupEnv)
}

// apply is Apply with the environment's lookup given.
func apply(lookup func(string) (string, bool)) bool {
	if _, set := lookup("GOGC"); set {
		return false
	}
	debug.SetGCPercent(Percent)
	return true
}
