package service

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
)

// Restart backoff of a worker that panicked: the first restart waits
// minRestartDelay, each further one twice as long up to maxRestartDelay.
// A worker that ran healthyRun or longer before panicking starts over at
// minRestartDelay.
const (
	minRestartDelay = time.Second
	maxRestartDelay = time.Minute
	healthyRun      = 5 * time.Minute
)

// maxRotationSleep bounds the rotation loop's sleep, so a suspended
// machine or a clock jump is noticed without waiting a whole rotation
// interval.
const maxRotationSleep = time.Hour

// Go runs run in a goroutine the service owns, with a context that Close
// cancels; Close waits for run to return. name identifies the worker in
// logs. A worker that returns is done. A worker that panics is not allowed
// to take the process (and every site Caddy serves) down: the panic is
// logged with its stack at error level and run is called again after a
// backoff (1 s, doubling up to 1 min, reset after 5 min without a panic),
// since a stopped outbox or retention worker would fail silently. run must
// therefore be safe to restart: keep its progress in the store, not in
// memory. After Close, Go does nothing.
func (s *Service) Go(name string, run func(ctx context.Context)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		s.log().Warn("not starting worker: service closed", zap.String("worker", name))
		return
	}
	s.workers.Add(1)
	go s.supervise(name, run)
}

// supervise runs one worker until it returns or the service closes.
func (s *Service) supervise(name string, run func(ctx context.Context)) {
	defer s.workers.Done()
	delay := minRestartDelay
	for {
		start := time.Now()
		if !s.runOnce(name, run) || s.ctx.Err() != nil {
			return
		}
		if time.Since(start) >= healthyRun {
			delay = minRestartDelay
		}
		s.log().Info("restarting worker after panic", zap.String("worker", name), zap.Duration("delay", delay))
		t := time.NewTimer(delay)
		select {
		case <-s.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(2*delay, maxRestartDelay)
	}
}

// runOnce calls run and reports whether it panicked.
func (s *Service) runOnce(name string, run func(ctx context.Context)) (panicked bool) {
	defer func() {
		if v := recover(); v != nil {
			panicked = true
			s.log().Error("worker panicked", zap.String("worker", name),
				zap.String("panic", fmt.Sprint(v)), zap.ByteString("stack", debug.Stack()))
		}
	}()
	run(s.ctx)
	return false
}

// rotateLoop runs KeyRing.Rotate whenever it next has work, until Close.
// Apply wakes it to recompute the time after changing the key options.
func (s *Service) rotateLoop() {
	defer s.workers.Done()
	for {
		wait := min(max(time.Until(s.keys.NextRotation()), time.Second), maxRotationSleep)
		if s.keys.Shared() {
			// The keys live in a shared store: load the keys other
			// gateways created at least this often.
			wait = min(wait, provider.StoreReloadEvery)
		}
		t := time.NewTimer(wait)
		select {
		case <-s.ctx.Done():
			t.Stop()
			return
		case <-s.rotateWake:
			t.Stop()
		case now := <-t.C:
			created, err := s.keys.Rotate(s.ctx, now)
			if err != nil {
				if s.ctx.Err() == nil {
					s.log().Error("rotating signing keys", zap.Error(err))
				}
				continue
			}
			if created {
				// The newest key, which in store mode signs only from its
				// not_before, once every gateway publishes it.
				if pub := s.keys.Published(now); len(pub) > 0 {
					s.log().Info("rotated signing key", zap.Binary("key_id", pub[0].KeyID),
						zap.String("scheme", schemeName(pub[0].Scheme)), zap.Time("signs_from", time.Unix(int64(pub[0].NotBefore), 0)))
				}
			}
		}
	}
}

// sweepLoop deletes expired records every SweepEvery, until Close. Apply
// wakes it to restart its ticker after changing the interval.
func (s *Service) sweepLoop() {
	defer s.workers.Done()
	for {
		t := time.NewTicker(time.Duration(s.sweepEvery.Load()))
		if !s.sweepUntilWoken(t) {
			t.Stop()
			return
		}
		t.Stop()
	}
}

// sweepUntilWoken sweeps at every tick of t; it returns false when the
// service closes and true when Apply changed the interval.
func (s *Service) sweepUntilWoken(t *time.Ticker) bool {
	for {
		select {
		case <-s.ctx.Done():
			return false
		case <-s.sweepWake:
			return true
		case now := <-t.C:
			n, err := s.store.DeleteExpired(s.ctx, now)
			if err != nil && s.ctx.Err() == nil {
				s.log().Error("deleting expired records", zap.Error(err))
			} else if n > 0 {
				if c := s.log().Check(zap.DebugLevel, "deleted expired records"); c != nil {
					c.Write(zap.Int64("count", n))
				}
			}
		}
	}
}
