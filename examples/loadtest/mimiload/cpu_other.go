//go:build !unix

package main

import "time"

// ownCPU reports that mimiload's CPU time is not read on this system.
func ownCPU() (time.Duration, bool) { return 0, false }
