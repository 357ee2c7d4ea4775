//go:build unix

package client

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
)

// lockDir takes an exclusive, non-blocking flock(2) on the lock file of a
// state directory and returns the function that releases it. The kernel
// releases it when the process dies, so a crash never leaves the
// directory locked.
func lockDir(path string) (unlock func() error, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, ErrInUse
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return sync.OnceValue(f.Close), nil // closing the file releases the lock
}
