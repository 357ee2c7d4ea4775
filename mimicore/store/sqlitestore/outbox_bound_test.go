package sqlitestore

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// truthOf counts destination's outbox rows and sums their sizes by reading
// them all, the slow way the counters spare.
func truthOf(t *testing.T, s *Store, destination string) (int, int64) {
	t.Helper()
	var n int
	var size int64
	var after uint64
	for {
		page, err := s.OutboxPending(t.Context(), destination, after, store.MaxOutboxList)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			return n, size
		}
		for _, e := range page {
			n++
			size += e.Size()
		}
		after = page[len(page)-1].ID
	}
}

// TestMigrationOutboxHeads checks the migration that adds the outbox's
// counters: outbox rows written before it are counted, with the sizes
// store.OutboxMessage.Size gives them (a non-ASCII client URI counted in
// UTF-8 bytes), and the counters stay exact as they are delivered.
func TestMigrationOutboxHeads(t *testing.T) {
	ctx := context.Background()
	path, raw, version := openBefore(t, schemaOutboxHeads)
	msgs := []store.OutboxMessage{
		{Destination: "c.example", GroupID: []byte("g1"), Recipients: []string{"mimi://c.example/d/zoë/phone", "mimi://c.example/d/bo/pc"}, Message: []byte("hello")},
		{Destination: "c.example", GroupID: []byte("g2"), Recipients: []string{"mimi://c.example/d/al/pc"}, Message: make([]byte, 3000)},
		{Destination: "e.example", GroupID: []byte("g1"), Recipients: []string{"mimi://e.example/d/ed/pc"}, Message: []byte("x")},
	}
	for _, m := range msgs {
		w, err := newOutboxRows([]store.OutboxMessage{m})
		if err != nil {
			t.Fatal(err)
		}
		r := w.rows[0]
		if _, err := raw.Exec(`INSERT INTO outbox (sender, destination, group_id, recipients, message, enqueued_ms) VALUES ('a.example', ?1, ?2, ?3, ?4, ?5)`,
			r.destination, r.groupID, r.recipients, w.bodies[r.body], time.Now().UnixMilli()); err != nil {
			t.Fatalf("writing an outbox row of version %d: %v", version, err)
		}
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	s := openAt(t, path)
	for _, tc := range []struct {
		dest  string
		n     int
		bytes int64
	}{
		{"c.example", 2, msgs[0].Size() + msgs[1].Size()},
		{"e.example", 1, msgs[2].Size()},
	} {
		t.Run(tc.dest, func(t *testing.T) {
			b, err := s.OutboxDestinationBacklog(ctx, tc.dest)
			if err != nil || b.Messages != tc.n || b.Bytes != tc.bytes || b.Oldest.IsZero() {
				t.Fatalf("backfilled backlog %+v, %v; want %d messages of %d bytes", b, err, tc.n, tc.bytes)
			}
			pending, err := s.OutboxPending(ctx, tc.dest, 0, store.MaxOutboxList)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.OutboxDelivered(ctx, tc.dest, []uint64{pending[0].ID}); err != nil {
				t.Fatal(err)
			}
			n, size := truthOf(t, s, tc.dest)
			if b, err := s.OutboxDestinationBacklog(ctx, tc.dest); err != nil || b.Messages != n || b.Bytes != size {
				t.Fatalf("after a delivery: %+v, %v; want %d messages of %d bytes", b, err, n, size)
			}
		})
	}
}

// outboxBoundChildEnv, when set to a database path, makes
// TestOutboxBoundCrashChild the writer that TestOutboxBoundCrash kills.
const outboxBoundChildEnv = "MIMI_OUTBOX_BOUND_CRASH_CHILD"

// TestOutboxBoundCrashChild, TestOutboxBoundCrash's child, writes a
// group's messages to c.example's outbox, bounded at 300 messages, from 4
// goroutines, while another delivers (removes) or resets what is pending,
// until it is killed. It prints "kept", "dropped <n>" and "reset <n>"
// once each write returned.
func TestOutboxBoundCrashChild(t *testing.T) {
	path := os.Getenv(outboxBoundChildEnv)
	if path == "" {
		t.Skip("the child of TestOutboxBoundCrash")
	}
	ctx := context.Background()
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	s.SetOutboxLimits(store.OutboxLimits{MaxMessages: 300})
	g := storetest.NewGroup(t, []byte("crash group"), 1)
	if err := s.CreateGroup(ctx, store.GroupCreation{Hub: "a.example", State: g.State}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		fmt.Printf(format+"\n", args...)
		mu.Unlock()
	}
	die := func(what string, err error) {
		fmt.Fprintln(os.Stderr, what, err)
		os.Exit(3)
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				// Two rows of one body, as a destination's recipients
				// split over two entries.
				m := store.OutboxMessage{Sender: "a.example", Destination: "c.example", GroupID: g.State.GroupID(),
					Recipients: []string{"mimi://c.example/d/carol/phone"}, Message: fmt.Appendf(nil, "message %d/%d", w, i)}
				m2 := m
				m2.Recipients = []string{"mimi://c.example/d/dave/phone"}
				d, err := s.Deliver(ctx, g.State.GroupID(), g.State.Epoch(), store.Fanout{Remote: []store.OutboxMessage{m, m2}})
				if err != nil {
					die("Deliver:", err)
				}
				if d.Outbox[0] == 0 {
					say("dropped 2")
				} else {
					say("kept")
				}
			}
		})
	}
	// The deliverer waits for the bound, lets the writers run into it
	// for a while, then delivers the oldest 100; every third round it
	// resets the destination instead. So drops, deliveries and resets
	// happen whatever the speed of the machine.
	wg.Go(func() {
		for round := 0; ; round++ {
			for {
				b, err := s.OutboxDestinationBacklog(ctx, "c.example")
				if err != nil {
					die("OutboxDestinationBacklog:", err)
				}
				if b.Messages >= 300 {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			time.Sleep(20 * time.Millisecond)
			if round%3 == 2 {
				n, err := s.OutboxReset(ctx, "c.example")
				if err != nil {
					die("OutboxReset:", err)
				}
				say("reset %d", n)
				continue
			}
			pending, err := s.OutboxPending(ctx, "c.example", 0, 100)
			if err != nil {
				die("OutboxPending:", err)
			}
			ids := make([]uint64, 0, len(pending))
			for _, e := range pending {
				ids = append(ids, e.ID)
			}
			if _, err := s.OutboxDelivered(ctx, "c.example", ids); err != nil {
				die("OutboxDelivered:", err)
			}
		}
	})
	wg.Wait()
}

// TestOutboxBoundCrash kills the child above with SIGKILL mid-stream and
// checks in the reopened database that the counters are exact (they are
// written in the transactions of the rows they count), that every
// acknowledged drop and reset is counted, and that each stored body's
// refs are its rows (the trigger runs in the deleting transaction).
func TestOutboxBoundCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestOutboxBoundCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), outboxBoundChildEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Killed after 3000 acknowledged writes with drops and a reset among
	// them, or after 60 s at the latest.
	timer := time.AfterFunc(60*time.Second, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()
	var kept, dropped, reset uint64
	count := func(line string) {
		var n uint64
		switch {
		case line == "kept":
			kept++
		case strings.HasPrefix(line, "dropped "):
			fmt.Sscanf(line, "dropped %d", &n)
			dropped += n
		case strings.HasPrefix(line, "reset "):
			fmt.Sscanf(line, "reset %d", &n)
			reset += n
		}
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		count(sc.Text())
		if kept+dropped >= 3000 && dropped > 0 && reset > 0 {
			if err := cmd.Process.Kill(); err != nil { // SIGKILL
				t.Fatal(err)
			}
			break
		}
	}
	for sc.Scan() {
		count(sc.Text())
	}
	_ = cmd.Wait()
	if kept+dropped < 3000 || dropped == 0 || reset == 0 {
		t.Fatalf("only %d kept, %d dropped and %d reset acknowledged before the child ended", kept, dropped, reset)
	}

	s := openAt(t, path)
	b, err := s.OutboxDestinationBacklog(t.Context(), "c.example")
	if err != nil {
		t.Fatal(err)
	}
	n, size := truthOf(t, s, "c.example")
	if b.Messages != n || b.Bytes != size || n > 300 {
		t.Fatalf("after kill -9 the counters read %d messages of %d bytes, the outbox holds %d of %d (bound 300)", b.Messages, b.Bytes, n, size)
	}
	if b.Dropped.BacklogFull < dropped || b.Dropped.AdminReset < reset {
		t.Fatalf("after kill -9 the drops read %+v, but %d drops and %d resets were acknowledged", b.Dropped, dropped, reset)
	}
	wantOutboxBodyRefs(t, s)
	t.Logf("%d kept, %d dropped, %d reset acknowledged; counters exact after kill -9: %+v", kept, dropped, reset, b)
}

// openBefore creates a database file migrated to the version before the
// migration whose SQL is schema, for a test of that migration: it
// returns the file's path, the open connection, which the test closes,
// and the version it is at.
func openBefore(t *testing.T, schema string) (string, *sql.DB, int) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mimi.db")
	raw, err := sql.Open("sqlite", dsn(path, url.Values{}))
	if err != nil {
		t.Fatal(err)
	}
	before := slices.IndexFunc(migrations, func(m migration) bool { return m.sql == schema })
	if before < 1 {
		t.Fatal("the migration is not listed")
	}
	version := migrations[before-1].version
	if err := migrateTo(context.Background(), raw, migrations[:before], time.Now()); err != nil {
		t.Fatalf("migrating to version %d: %v", version, err)
	}
	return path, raw, version
}
