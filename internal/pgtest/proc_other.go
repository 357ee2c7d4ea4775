//go:build !linux

package pgtest

import (
	"errors"
	"os"
	"os/exec"
)

// unprivileged returns a function that leaves a command as it is: on this
// system pgtest runs PostgreSQL as the test's own user, which must not be
// root.
func unprivileged(string) (func(*exec.Cmd), error) {
	if os.Geteuid() == 0 {
		return nil, errors.New("PostgreSQL refuses to run as root, and pgtest runs it as another user on Linux only")
	}
	return func(*exec.Cmd) {}, nil
}

// dieWithParent does nothing here: Main stops the server.
func dieWithParent(*exec.Cmd) {}
