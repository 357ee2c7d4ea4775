package privacypass_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass/spenttest"
)

// memStore is an in-process SpentStore for tests only: a mutex-guarded map
// from key to expiry, swept of expired entries every 1024 inserts. It is not
// part of the product; production stores live elsewhere and run the same
// contract tests.
type memStore struct {
	mu      sync.Mutex
	m       map[string]time.Time
	inserts int
	now     func() time.Time
	fail    error // when set, MarkSpent returns it
}

func newMemStore() *memStore { return &memStore{m: make(map[string]time.Time), now: time.Now} }

func (s *memStore) MarkSpent(ctx context.Context, key []byte, expires time.Time) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return false, s.fail
	}
	now := s.now()
	k := string(key) // copies
	if exp, ok := s.m[k]; ok && exp.After(now) {
		return false, nil
	}
	s.m[k] = expires
	s.inserts++
	if s.inserts%1024 == 0 {
		for k, exp := range s.m {
			if !exp.After(now) {
				delete(s.m, k)
			}
		}
	}
	return true, nil
}

func (s *memStore) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

func TestMemStoreContract(t *testing.T) {
	spenttest.RunSpentStoreTests(t, func(t *testing.T) privacypass.SpentStore { return newMemStore() })
}

// brokenStore violates the contract in the ways spenttest must catch; the
// test proves the contract tests can fail.
type brokenStore struct {
	mode   string
	mu     sync.Mutex
	m      map[string]bool
	checks map[string]int // racy's checks per key
}

func (s *brokenStore) MarkSpent(_ context.Context, key []byte, _ time.Time) (bool, error) {
	switch s.mode {
	case "always-first":
		return true, nil
	case "racy":
		// Check, then set: a caller that finds key new keeps the window
		// open until another caller has checked key too (30 s only
		// against a hang: the contract's race runs several callers per
		// key), so that concurrent callers both find it new however the
		// scheduler runs them, where a window of 1 ms let callers that a
		// loaded machine ran 1 ms apart pass one after the other.
		s.mu.Lock()
		seen := s.m[string(key)]
		s.checks[string(key)]++
		s.mu.Unlock()
		for end := time.Now().Add(30 * time.Second); !seen && time.Now().Before(end); time.Sleep(100 * time.Microsecond) {
			s.mu.Lock()
			n := s.checks[string(key)]
			s.mu.Unlock()
			if n >= 2 {
				break
			}
		}
		s.mu.Lock()
		s.m[string(key)] = true
		s.mu.Unlock()
		return !seen, nil
	}
	return false, nil
}

// TestBrokenStoreHelper runs the contract against a broken store when
// re-executed by TestSpentStoreContractCatchesBrokenStores.
func TestBrokenStoreHelper(t *testing.T) {
	mode := os.Getenv("SPENTTEST_BROKEN_MODE")
	if mode == "" {
		t.Skip("helper for TestSpentStoreContractCatchesBrokenStores")
	}
	spenttest.RunSpentStoreTests(t, func(t *testing.T) privacypass.SpentStore {
		return &brokenStore{mode: mode, m: make(map[string]bool), checks: make(map[string]int)}
	})
}

// TestSpentStoreContractCatchesBrokenStores proves that the contract tests
// can fail: each broken store must make them fail.
func TestSpentStoreContractCatchesBrokenStores(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	for mode, run := range map[string]string{
		"always-first": "^TestBrokenStoreHelper$",
		"never-first":  "^TestBrokenStoreHelper$",
		// Only the race: racy's window waits for a second caller.
		"racy": "^TestBrokenStoreHelper$/^ConcurrentSameKey$",
	} {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run="+run, "-test.count=1")
			cmd.Env = append(os.Environ(), "SPENTTEST_BROKEN_MODE="+mode)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("contract tests passed a %s store:\n%s", mode, out)
			}
			if !strings.Contains(string(out), "--- FAIL") {
				t.Fatalf("helper failed without a test failure (%v):\n%s", err, out)
			}
		})
	}
}
