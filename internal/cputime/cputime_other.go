//go:build !unix

// Package cputime reads the CPU time the process has used, for benchmarks
// that report CPU per operation: on a machine shared with other work, CPU
// time per op is steadier than wall time per op.
package cputime

import "time"

// Process returns false: CPU time is not read on this system.
func Process() (time.Duration, bool) { return 0, false }
