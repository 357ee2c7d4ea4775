//go:build !linux

package redistest

import "os/exec"

// dieWithParent does nothing here: the test's cleanup stops the server.
func dieWithParent(*exec.Cmd) {}
