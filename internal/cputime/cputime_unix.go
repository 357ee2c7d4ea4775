//go:build unix

// Package cputime reads the CPU time the process has used, for benchmarks
// that report CPU per operation: on a machine shared with other work, CPU
// time per op is steadier than wall time per op.
package cputime

import (
	"syscall"
	"time"
)

// Process returns the CPU time, user and system, this process has used so
// far, and false where it cannot be read.
func Process() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
