//go:build unix

package sqlitestore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// TestOpenInUse: a database is open in one Store at a time; Close hands
// it on.
func TestOpenInUse(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "mimi.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if s.known == nil {
		t.Fatal("no replay filter on a platform with flock")
	}
	if _, err := Open(ctx, path); !errors.Is(err, store.ErrInUse) {
		t.Fatalf("second Open: got %v, want ErrInUse", err)
	}
	// Tests of a backend shared by several gateways open without the
	// lock, and without the filter.
	shared, err := Open(ctx, path, withSharedFile())
	if err != nil {
		t.Fatalf("Open withSharedFile: %v", err)
	}
	if shared.known != nil {
		t.Error("a Store without the lock trusts an in-memory filter")
	}
	if err := errors.Join(shared.Close(), s.Close()); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestOpenInUseThroughSymlinks: the lock belongs to the database file,
// however its path is spelled. SQLite follows symbolic links, so a second
// Store opened through a link writes the same file, and would trust a
// replay filter the first Store's writes outdate.
func TestOpenInUseThroughSymlinks(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "real", "mimi.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	linkedFile := filepath.Join(dir, "linked.db")
	if err := os.Symlink(path, linkedFile); err != nil {
		t.Fatal(err)
	}
	linkedDir := filepath.Join(dir, "linked")
	if err := os.Symlink(filepath.Dir(path), linkedDir); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path string }{
		{"linked file", linkedFile},
		{"linked directory", filepath.Join(linkedDir, "mimi.db")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s2, err := Open(ctx, tc.path)
			if err == nil {
				s2.Close()
			}
			if !errors.Is(err, store.ErrInUse) {
				t.Fatalf("Open through %s: got %v, want ErrInUse", tc.path, err)
			}
		})
	}
}

// TestOpenThroughLinkToNewFile: a database path that is a symbolic link
// to a file not created yet (a data directory whose database the
// operator placed on another volume before the first start) opens, as
// SQLite follows the link and creates the file; the file is created with
// mode 0600, and the lock belongs to it.
func TestOpenThroughLinkToNewFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	target := filepath.Join(dir, "volume", "mimi.db")
	if err := os.Mkdir(filepath.Dir(target), 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "mimi.db")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, link)
	if err != nil {
		t.Fatalf("Open through a link to a file not created yet: %v", err)
	}
	defer s.Close()
	fi, err := os.Stat(target)
	if err != nil {
		t.Fatalf("the link's target: %v", err)
	}
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Errorf("the database file was created with mode %v, want 0600", m)
	}
	s2, err := Open(ctx, target)
	if err == nil {
		s2.Close()
	}
	if !errors.Is(err, store.ErrInUse) {
		t.Fatalf("Open of the link's target while open through the link: got %v, want ErrInUse", err)
	}
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Set(t time.Time)     { c.mu.Lock(); defer c.mu.Unlock(); c.now = t }
func (c *fakeClock) Add(d time.Duration) { c.Set(c.Now().Add(d)) }

// TestReplayFilter checks FindReplay through the in-memory filter against
// the database: entries recorded before a reopen (loaded at Open) and after
// it are found, unknown ids are not, expired entries are not, and a clock
// stepped back within the grace period finds again what the database calls
// alive.
func TestReplayFilter(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "mimi.db")
	clock := &fakeClock{now: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)}
	open := func() *Store {
		t.Helper()
		s, err := Open(ctx, path, WithClock(clock.Now))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	id := func(i int) []byte { return fmt.Appendf(nil, "request-%04d", i) }
	record := func(s *Store, i int, ttl time.Duration) {
		t.Helper()
		if _, err := s.RecordReplay(ctx, "a.example", id(i), digestOf(fmt.Sprint(i)), store.Answer{Body: []byte{byte(i)}}, clock.Now().Add(ttl)); err != nil {
			t.Fatalf("RecordReplay %d: %v", i, err)
		}
	}
	found := func(s *Store, i int) bool {
		t.Helper()
		e, err := s.FindReplay(ctx, "a.example", id(i))
		if errors.Is(err, store.ErrNotFound) {
			return false
		}
		if err != nil || e.Digest != digestOf(fmt.Sprint(i)) {
			t.Fatalf("FindReplay %d: %+v, %v", i, e, err)
		}
		return true
	}

	s := open()
	for i := range 500 {
		record(s, i, 11*time.Minute)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open()
	defer func() { s.Close() }()
	for i := 500; i < 1000; i++ {
		record(s, i, 11*time.Minute)
	}
	for _, tc := range []struct {
		name      string
		from, to  int
		wantFound bool
	}{
		{name: "recorded before reopen", from: 0, to: 500, wantFound: true},
		{name: "recorded after reopen", from: 500, to: 1000, wantFound: true},
		{name: "never recorded", from: 1000, to: 2000, wantFound: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := tc.from; i < tc.to; i++ {
				if got := found(s, i); got != tc.wantFound {
					t.Fatalf("id %d: found %t, want %t", i, got, tc.wantFound)
				}
			}
		})
	}

	t.Run("expired, then clock stepped back", func(t *testing.T) {
		clock.Add(12 * time.Minute)
		record(s, 5000, time.Minute) // lets the filter drop what it may
		if found(s, 1) {
			t.Fatal("expired entry found")
		}
		clock.Add(-2 * time.Minute) // 10 minutes after recording
		if !found(s, 1) {
			t.Fatal("entry alive for the database not found after the clock stepped back")
		}
	})

	t.Run("expired at reopen, then clock stepped back", func(t *testing.T) {
		// Open loads the entries alive then, and those expired within
		// the filter's grace, which a clock stepped back finds alive.
		record(s, 6000, time.Minute)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		clock.Add(2 * time.Minute) // a clock fast at reopen
		s = open()
		if found(s, 6000) {
			t.Fatal("expired entry found")
		}
		clock.Add(-2 * time.Minute) // set right
		if !found(s, 6000) {
			t.Fatal("entry alive for the database not found after the clock stepped back, the store opened since")
		}
	})
}
