//go:build unix

package sqlitestore

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// lockFile takes an exclusive, non-blocking flock(2) on the file at path,
// creating it with mode 0600, and returns the function that releases it.
// The kernel releases the lock when the process dies, kill -9 included, so
// a crash never leaves the database locked. exclusive is true: on this
// platform the lock is real, and the Store may trust its in-memory filter.
func lockFile(path string) (unlock func() error, exclusive bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("opening lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, fmt.Errorf("lock file %s is held: %w", path, store.ErrInUse)
		}
		return nil, false, fmt.Errorf("locking %s: %w", path, err)
	}
	return sync.OnceValue(f.Close), true, nil // closing the file releases the lock
}
