package client

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// lockRetry is how often Open and Init, waiting for a state directory in
// use (Config.LockWait), try to lock it again.
const lockRetry = 100 * time.Millisecond

// lockDirWait is lockDir trying again while the directory is in use, until
// wait has passed (then ErrInUse) or ctx is done.
func lockDirWait(ctx context.Context, path string, wait time.Duration) (unlock func() error, err error) {
	deadline := time.Now().Add(wait)
	for {
		unlock, err := lockDir(path)
		if !errors.Is(err, ErrInUse) || !time.Now().Before(deadline) {
			return unlock, err
		}
		t := time.NewTimer(min(lockRetry, time.Until(deadline)))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (waiting for it: %w)", err, ctx.Err())
		case <-t.C:
		}
	}
}
