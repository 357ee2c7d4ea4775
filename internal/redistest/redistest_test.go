package redistest

import (
	"testing"
)

func TestStartStopRestart(t *testing.T) {
	s := New(t)
	addr := s.Addr()
	if err := ping(s.port); err != nil {
		t.Fatalf("ping %s: %v", addr, err)
	}
	s.Stop(t)
	if err := ping(s.port); err == nil {
		t.Fatal("server answers after Stop")
	}
	s.Restart(t)
	if s.Addr() != addr {
		t.Fatalf("restarted on %s, want %s", s.Addr(), addr)
	}
	if err := ping(s.port); err != nil {
		t.Fatalf("ping after restart: %v", err)
	}
}
