package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// queueRows reads what the queue tables hold: bodies, the sum of their
// refs, entries, and whether every head's counters match its entries.
func queueRows(t *testing.T, s *Store) (bodies, refs, entries int, headsOK bool) {
	t.Helper()
	if err := s.r.QueryRow("SELECT count(*), COALESCE(SUM(refs), 0) FROM queue_bodies").Scan(&bodies, &refs); err != nil {
		t.Fatal(err)
	}
	if err := s.r.QueryRow("SELECT count(*) FROM queue_messages").Scan(&entries); err != nil {
		t.Fatal(err)
	}
	var bad int
	if err := s.r.QueryRow(`SELECT count(*) FROM queue_heads h WHERE h.messages <> (SELECT count(*) FROM queue_messages m WHERE m.client = h.client)
		OR h.bytes <> (SELECT COALESCE(SUM(size), 0) FROM queue_messages m WHERE m.client = h.client)`).Scan(&bad); err != nil {
		t.Fatal(err)
	}
	return bodies, refs, entries, bad == 0
}

// TestAppendFanOut checks what a fan-out costs and leaves: one op in one
// commit for 100 recipients, its bytes stored once, and the body deleted
// with its last entry, whether acknowledged, reclaimed by a full queue or
// swept; the heads' counters always match their entries.
func TestAppendFanOut(t *testing.T) {
	clock := storetest.NewClock()
	s := openTemp(t, WithClock(clock.Now))
	ctx := context.Background()
	recipients := make([]string, 100)
	for i := range recipients {
		recipients[i] = fmt.Sprintf("mimi://a.example/d/u%d/d", i)
	}
	before := s.Stats()
	if _, err := s.Append(ctx, store.Delivery{Recipients: recipients, Message: make([]byte, 1000),
		Expires: clock.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	after := s.Stats()
	if after.Commits-before.Commits != 1 || after.Ops-before.Ops != 1 {
		t.Fatalf("a fan-out to 100 took %d ops in %d commits, want 1 in 1", after.Ops-before.Ops, after.Commits-before.Commits)
	}
	check := func(what string, wantBodies, wantRefs int) {
		t.Helper()
		bodies, refs, entries, ok := queueRows(t, s)
		if bodies != wantBodies || refs != wantRefs || entries != wantRefs || !ok {
			t.Fatalf("%s: %d bodies with %d refs, %d entries, heads consistent %t; want %d bodies, %d refs and entries",
				what, bodies, refs, entries, ok, wantBodies, wantRefs)
		}
	}
	check("after the fan-out", 1, 100)
	for _, r := range recipients[:60] {
		if _, err := s.Ack(ctx, r, 1); err != nil {
			t.Fatal(err)
		}
	}
	check("after 60 acks", 1, 40)
	if _, err := s.Append(ctx, store.Delivery{Recipients: recipients[:50], Message: []byte("second")}); err != nil {
		t.Fatal(err)
	}
	check("after a second fan-out", 2, 90)
	// Recipient 99's queue is full but for its expired message, which the
	// append reclaims.
	clock.Advance(time.Hour)
	out, err := s.Append(ctx, store.Delivery{Recipients: recipients[99:], Message: []byte("third"),
		Limits: store.QueueLimits{MaxMessages: 1}})
	if err != nil || out[0].Err != nil || out[0].Seq != 3 {
		t.Fatalf("append to a queue full of expired messages: %+v, %v", out, err)
	}
	check("after the reclaim", 3, 90)
	if n, err := s.DeleteExpired(ctx, clock.Now()); err != nil || n != 39 {
		t.Fatalf("DeleteExpired = %d, %v; want 39", n, err)
	}
	check("after the sweep", 2, 51)
	for i, r := range recipients {
		last := uint64(1) // each queue's last sequence number
		switch {
		case i == 99:
			last = 3
		case i < 50:
			last = 2
		}
		if _, err := s.Ack(ctx, r, last); err != nil {
			t.Fatal(err)
		}
	}
	check("after acknowledging everything", 0, 0)
}

// TestWatchCleanup checks that waiters that give up, woken or not, leave
// no entry in the Store's notifier.
func TestWatchCleanup(t *testing.T) {
	s := openTemp(t)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ready, stop := s.WatchQueue(fmt.Sprint("mimi://q/", i%10), 0)
			defer stop()
			select {
			case <-ready:
			case <-time.After(time.Duration(i%5) * time.Millisecond):
			}
		}()
	}
	for i := range 5 {
		if _, err := s.Append(context.Background(), store.Delivery{Recipients: []string{fmt.Sprint("mimi://q/", i)}, Message: []byte("m")}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if n := s.notifier.Waiters(); n != 0 {
		t.Fatalf("%d waiters left in the notifier", n)
	}
}

// TestMigrationV7 checks the upgrade to one global sequence and group
// logs: the sequence starts above every number a version 6 queue gave, so
// existing cursors stay valid and below new messages; a group created
// before version 7 has no recorded local members, and a post to it fails
// with store.ErrGroupMembersUnknown, writing nothing, until one brings
// them (store.GroupPost.Members).
func TestMigrationV7(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mimi.db")
	ctx := context.Background()
	raw, err := sql.Open("sqlite", dsn(path, url.Values{}))
	if err != nil {
		t.Fatal(err)
	}
	if err := migrateTo(ctx, raw, migrations[:6], time.Now()); err != nil {
		t.Fatalf("migrating to version 6: %v", err)
	}
	const alice, bob = "mimi://a.example/d/alice/phone", "mimi://a.example/d/bob/phone"
	exp := time.Now().Add(time.Hour).UnixMilli()
	for _, q := range []string{
		`INSERT INTO queue_bodies (id, message, refs) VALUES (1, x'6f6c64', 1)`,
		`INSERT INTO queue_heads (client, last_seq, messages, bytes) VALUES ('` + alice + `', 5, 1, 3), ('` + bob + `', 2, 0, 0)`,
		fmt.Sprintf(`INSERT INTO queue_messages (client, seq, body_id, size, group_id, sender, arrived_ms, expires_ms)
			VALUES ('%s', 5, 1, 3, x'', 'b.example', 0, %d)`, alice, exp),
	} {
		if _, err := raw.Exec(q); err != nil {
			t.Fatalf("writing version 6 rows: %v", err)
		}
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("Open (migrating to the latest version): %v", err)
	}
	defer s.Close()
	msgs, err := s.Fetch(ctx, alice, 4, store.FetchLimit{})
	if err != nil || len(msgs) != 1 || msgs[0].Seq != 5 || string(msgs[0].Message) != "old" {
		t.Fatalf("alice's version 6 message: %+v, %v", msgs, err)
	}
	out, err := s.Append(ctx, store.Delivery{Recipients: []string{bob, alice}, Message: []byte("new")})
	if err != nil || out[0].Seq != 6 || out[1].Seq != 6 {
		t.Fatalf("first Append after the upgrade: %+v, %v; want seq 6 for both", out, err)
	}

	// A group as version 6 left it: no recorded members.
	g := storetest.NewGroup(t, []byte("old group"), 2)
	gid := g.State.GroupID()
	if err := s.CreateGroup(ctx, store.GroupCreation{Hub: "a.example", State: g.State, Members: []string{alice}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.w.Exec(`DELETE FROM group_members`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.w.Exec(`UPDATE mls_groups SET members_known = 0`); err != nil {
		t.Fatal(err)
	}
	p := &store.GroupPost{GroupID: gid, Sender: alice, Message: []byte("post"), Except: alice}
	if _, err := s.Deliver(ctx, gid, g.State.Epoch(), store.Fanout{Group: p}); !errors.Is(err, store.ErrGroupMembersUnknown) {
		t.Fatalf("post without members: %v, want ErrGroupMembersUnknown", err)
	}
	if n := tableRows(t, s)["group_log"]; n != 0 {
		t.Fatalf("the refused post left %d log rows", n)
	}
	p.Members = []string{alice, bob}
	d, err := s.Deliver(ctx, gid, g.State.Epoch(), store.Fanout{Group: p})
	if err != nil || d.Group != 7 {
		t.Fatalf("post with members: %+v, %v; want seq 7", d, err)
	}
	// Known from now on: Members are ignored, and nobody else is one.
	p.Members, p.Message = []string{"mimi://a.example/d/eve/phone"}, []byte("second")
	if _, err := s.Deliver(ctx, gid, g.State.Epoch(), store.Fanout{Group: p}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		client string
		want   []string
	}{
		{bob, []string{"new", "post", "second"}},
		{alice, []string{"old", "new"}},
		{"mimi://a.example/d/eve/phone", nil},
	} {
		msgs, err := s.Fetch(ctx, tc.client, 0, store.FetchLimit{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range msgs {
			got = append(got, string(m.Message))
		}
		if !slices.Equal(got, tc.want) {
			t.Fatalf("%s reads %q, want %q", tc.client, got, tc.want)
		}
	}
}

// TestAckWritesNoCursorForUnknownClient runs
// storetest.CheckAckOfUnknownClient, counting the cursor rows.
func TestAckWritesNoCursorForUnknownClient(t *testing.T) {
	s := openTemp(t)
	storetest.CheckAckOfUnknownClient(t, s, func() (int, error) {
		var n int
		err := s.r.QueryRow("SELECT count(*) FROM queue_cursors").Scan(&n)
		return n, err
	})
}

// threadReadBytes is the bytes the calling OS thread has read from files
// (rchar of /proc/thread-self/io); ok is false where the kernel does not
// count them.
func threadReadBytes() (n int, ok bool) {
	b, err := os.ReadFile("/proc/thread-self/io")
	if err != nil {
		return 0, false
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, found := strings.CutPrefix(l, "rchar:"); found {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			return n, err == nil
		}
	}
	return 0, false
}

// TestFetchReadsOnlyWhatItAnswers checks that a Fetch reads from the
// database file the messages it answers, not every message up to its
// count bound: a client with a backlog of large messages asking for the
// default 100 got 4 MiB of them, but SQLite read the bytes of all 100 to
// merge and cut the list, 0.3-1 s of a CPU for every page. SQLite runs
// a query on the goroutine that steps it, so the reads of the Fetch are
// those of the OS thread it is locked to.
func TestFetchReadsOnlyWhatItAnswers(t *testing.T) {
	if _, ok := threadReadBytes(); !ok {
		t.Skip("the kernel does not count a thread's reads (/proc/thread-self/io)")
	}
	// At most 8 of the backlog's 200 MiB are answered; reading the
	// messages up to the count bound reads 100 MiB or more.
	const n = 200
	readBytes := func(fetch func()) int64 {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		before, _ := threadReadBytes()
		fetch()
		after, _ := threadReadBytes()
		return int64(after - before)
	}
	limit := func(int64) int64 { return n << 20 / 4 }
	t.Run("queue", func(t *testing.T) { storetest.CheckFetchCost(t, openTemp(t), n, readBytes, limit) })
	t.Run("group log", func(t *testing.T) { storetest.CheckGroupFetchCost(t, openTemp(t), n, readBytes, limit) })
}

// TestMigrationGroupLogView applies the migration that gives the group
// log its covering index to a database of the version before it: a post
// written before is fetched after, the old index is gone, and a Fetch's
// plan reads the posts' sizes from the new index.
func TestMigrationGroupLogView(t *testing.T) {
	path, raw, version := openBefore(t, schemaGroupLogView)
	const alice = "mimi://a.example/d/alice/phone"
	exp := time.Now().Add(time.Hour).UnixMilli()
	for _, q := range []string{
		`UPDATE queue_sequence SET last = 7`,
		`INSERT INTO group_members (client, group_id, from_seq, to_seq) VALUES ('` + alice + `', x'6701', 0, NULL)`,
		fmt.Sprintf(`INSERT INTO group_log (seq, group_id, sender, except_client, message, size, arrived_ms, expires_ms)
			VALUES (7, x'6701', 'b.example', '', x'6f6c64', 3, 0, %d)`, exp),
	} {
		if _, err := raw.Exec(q); err != nil {
			t.Fatalf("writing version %d rows: %v", version, err)
		}
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	s := openAt(t, path)
	msgs, err := s.Fetch(t.Context(), alice, 0, store.FetchLimit{})
	if err != nil || len(msgs) != 1 || msgs[0].Seq != 7 || string(msgs[0].Message) != "old" ||
		string(msgs[0].GroupID) != "g\x01" || msgs[0].Sender != "b.example" {
		t.Fatalf("alice's post of version %d: %+v, %v", version, msgs, err)
	}
	var indexes []string
	rows, err := s.r.Query(`SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'group_log' ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		indexes = append(indexes, name)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"group_log_expires", "group_log_view"}; !slices.Equal(indexes, want) {
		t.Fatalf("group_log indexes %v, want %v", indexes, want)
	}
	// The member's half of the Fetch reads the log through the index
	// alone.
	plan, err := s.r.Query(`EXPLAIN QUERY PLAN `+queueFetchSQL, alice, 0, 0, 100, 1<<22)
	if err != nil {
		t.Fatal(err)
	}
	defer plan.Close()
	covered := false
	for plan.Next() {
		var id, parent, unused int
		var detail string
		if err := plan.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(detail, "USING COVERING INDEX group_log_view") {
			covered = true
		}
	}
	if !covered {
		t.Fatal("Fetch's plan does not read the group log through its covering index")
	}
}
