package pgstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass/spenttest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// openTemp opens a store on a new database and closes it when t ends.
func openTemp(t testing.TB, opts Options) *Store {
	t.Helper()
	s, err := Open(context.Background(), pgtest.NewDB(t), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// withClock is the options of a store on clock.
func withClock(clock *storetest.Clock) Options { return Options{Now: clock.Now} }

func TestContract(t *testing.T) {
	storetest.RunContractTests(t, func(t *testing.T) store.Store { return openTemp(t, Options{}) })
}

// TestSpentStoreContract runs the privacypass package's own contract tests
// against MarkSpent.
func TestSpentStoreContract(t *testing.T) {
	spenttest.RunSpentStoreTests(t, func(t *testing.T) privacypass.SpentStore { return openTemp(t, Options{}) })
}

func TestMigrationsContiguous(t *testing.T) {
	for i, m := range migrations {
		if m.version != i+1 {
			t.Fatalf("migration %d has version %d, want %d", i, m.version, i+1)
		}
	}
}

// connect opens a connection of its own to dsn; the caller closes it.
func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatalf("connecting: %v", err)
	}
	return conn
}

// schemaVersions returns the versions recorded in dsn's schema_version.
func schemaVersions(t *testing.T, dsn string) []int {
	t.Helper()
	ctx := context.Background()
	conn := connect(t, dsn)
	defer conn.Close(ctx)
	rows, _ := conn.Query(ctx, "SELECT version FROM schema_version ORDER BY version")
	vs, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatalf("reading schema_version: %v", err)
	}
	return vs
}

// TestConcurrentOpen has gateways start at once on one empty database:
// every Open succeeds, and each migration is applied once.
func TestConcurrentOpen(t *testing.T) {
	dsn := pgtest.NewDB(t)
	const gateways = 8
	var wg sync.WaitGroup
	stores := make([]*Store, gateways)
	errs := make([]error, gateways)
	start := make(chan struct{})
	for i := range gateways {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			stores[i], errs[i] = Open(context.Background(), dsn, Options{MaxConns: 2})
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Open %d: %v", i, err)
			continue
		}
		defer stores[i].Close()
	}
	if t.Failed() {
		return
	}
	vs := schemaVersions(t, dsn)
	if len(vs) != latestVersion() {
		t.Fatalf("schema_version holds %v, want each of 1..%d once", vs, latestVersion())
	}
	for i, v := range vs {
		if v != i+1 {
			t.Fatalf("schema_version holds %v, want each of 1..%d once", vs, latestVersion())
		}
	}
	// Each store works on the one schema: a token spent through one is
	// spent for all.
	exp := time.Now().Add(time.Hour)
	for i, s := range stores {
		first, err := s.MarkSpent(context.Background(), []byte("token"), exp)
		if err != nil || first != (i == 0) {
			t.Fatalf("MarkSpent through store %d: first use %t, %v", i, first, err)
		}
	}
}

// TestSchemaTooNew checks that a database of a newer version is refused,
// and that a reopen of a current one applies nothing.
func TestSchemaTooNew(t *testing.T) {
	dsn := pgtest.NewDB(t)
	ctx := context.Background()
	s, err := Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	s.Close()
	s, err = Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatalf("reopening: %v", err)
	}
	s.Close()
	if vs := schemaVersions(t, dsn); len(vs) != latestVersion() {
		t.Fatalf("after a reopen schema_version holds %v", vs)
	}
	conn := connect(t, dsn)
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "INSERT INTO schema_version (version, name, applied_ms) VALUES ($1, 'future', 0)", latestVersion()+1); err != nil {
		t.Fatalf("recording a future version: %v", err)
	}
	if _, err := Open(ctx, dsn, Options{}); !errors.Is(err, store.ErrSchemaTooNew) {
		t.Fatalf("Open of a newer schema: got %v, want ErrSchemaTooNew", err)
	}
}

func TestOpenInvalid(t *testing.T) {
	for _, c := range []struct {
		name string
		dsn  string
		opts Options
		want error
	}{
		{"negative pool", "postgres://u@127.0.0.1:1/db", Options{MaxConns: -1}, store.ErrInvalid},
		{"bad dsn", "postgres://u@127.0.0.1:notaport/db", Options{}, nil},
		{"synchronous_commit off", "postgres://u@127.0.0.1:1/db?synchronous_commit=off", Options{}, store.ErrInvalid},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Open(context.Background(), c.dsn, c.opts)
			if err == nil || (c.want != nil && !errors.Is(err, c.want)) {
				t.Fatalf("Open: %v, want an error (%v)", err, c.want)
			}
		})
	}
}

// TestPoolSize checks that Options.MaxConns sizes the pool.
func TestPoolSize(t *testing.T) {
	for _, n := range []int32{0, 1, 5} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			s := openTemp(t, Options{MaxConns: n})
			want := n
			if want == 0 {
				want = DefaultMaxConns
			}
			if got := s.pool.Config().MaxConns; got != want {
				t.Fatalf("pool of %d connections, want %d", got, want)
			}
		})
	}
}

func TestKeyPackages(t *testing.T) {
	storetest.RunKeyPackageTests(t, func(t *testing.T, clock *storetest.Clock) store.Store {
		return openTemp(t, withClock(clock))
	})
}

// TestPublishRaceAcrossStores has publishers for the clients of one user
// race through two stores on one database, as on two gateways: the user's
// bound holds (storetest.PublishRace).
func TestPublishRaceAcrossStores(t *testing.T) {
	a, b := openPair(t, 16)
	storetest.PublishRace(t, []store.Store{a, b})
}

// TestClaimsAcrossStores has 50 claims race for 50 single-use packages
// through two stores on one database, as two gateways would: each package
// is handed out exactly once, and a claim that finds none left gets the
// last-resort package, never while a single-use one is left.
func TestClaimsAcrossStores(t *testing.T) {
	ctx := context.Background()
	var stores [2]*Store
	stores[0], stores[1] = openPair(t, 8)
	const client, claims = "mimi://a.example/d/alice/phone", 50
	exp := time.Now().Add(time.Hour)
	kps := []store.KeyPackage{storetest.KP(client, 1, "last resort", exp, true)}
	for i := range claims {
		kps = append(kps, storetest.KP(client, 1, fmt.Sprint(i), exp, false))
	}
	if err := stores[0].PublishKeyPackages(ctx, client, kps, store.KeyPackageLimits{}); err != nil {
		t.Fatalf("PublishKeyPackages: %v", err)
	}
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		got = map[string]int{}
	)
	start := make(chan struct{})
	errs := make(chan error, claims)
	for i := range claims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			kp, err := stores[i%2].ClaimKeyPackage(ctx, client, 1)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			got[string(kp.Ref)]++
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("ClaimKeyPackage: %v", err)
	}
	lastResort := string(kps[0].Ref)
	for ref, n := range got {
		if ref != lastResort && n != 1 {
			t.Errorf("package %q handed out %d times, want once", ref, n)
		}
	}
	// A claim that finds every remaining package locked by rival claims
	// waits for them rather than take the last-resort package: each of
	// the claims got a single-use one.
	if n := got[lastResort]; n != 0 {
		t.Errorf("%d claims got the last-resort package while single-use ones were left", n)
	}
	for {
		kp, err := stores[0].ClaimKeyPackage(ctx, client, 1)
		if err != nil {
			t.Fatalf("ClaimKeyPackage: %v", err)
		}
		if kp.LastResort {
			break
		}
		if got[string(kp.Ref)]++; got[string(kp.Ref)] != 1 {
			t.Fatalf("package %q handed out twice", kp.Ref)
		}
	}
	delete(got, lastResort)
	if len(got) != claims {
		t.Fatalf("%d single-use packages handed out, want %d", len(got), claims)
	}
}

func TestQueues(t *testing.T) {
	storetest.RunQueueTests(t, func(t *testing.T, clock *storetest.Clock) store.Store {
		return openTemp(t, withClock(clock))
	})
}

// TestOutboxOrderAcrossStores has writers on two stores add to one
// destination's outbox while a reader follows it with a cursor, as the
// federation sender does: the reader sees every message, none skipped
// because a smaller id committed after a larger one.
func TestOutboxOrderAcrossStores(t *testing.T) {
	ctx := context.Background()
	var stores [2]*Store
	stores[0], stores[1] = openPair(t, 8)
	const writers, adds, dest = 8, 15, "b.example"
	msg := store.OutboxMessage{Sender: "a.example", Destination: dest, GroupID: []byte("g"),
		Recipients: []string{"mimi://b.example/d/bob/x"}, Message: []byte("m")}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		written = map[uint64]bool{}
	)
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range adds {
				ids, err := stores[w%2].OutboxAdd(ctx, store.OutboxWrite{Messages: []store.OutboxMessage{msg, msg}})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				for _, id := range ids {
					written[id] = true
				}
				mu.Unlock()
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	seen := map[uint64]bool{}
	var after uint64
	for finished := false; ; {
		select {
		case <-done:
			finished = true
		default:
		}
		es, err := stores[1].OutboxPending(ctx, dest, after, store.MaxOutboxList)
		if err != nil {
			t.Fatalf("OutboxPending: %v", err)
		}
		for _, e := range es {
			if e.ID <= after {
				t.Fatalf("OutboxPending after %d returned %d", after, e.ID)
			}
			seen[e.ID], after = true, e.ID
		}
		if finished && len(es) == 0 {
			break
		}
	}
	close(errs)
	for err := range errs {
		t.Fatalf("OutboxAdd: %v", err)
	}
	if len(written) != writers*adds*2 {
		t.Fatalf("%d distinct ids written, want %d", len(written), writers*adds*2)
	}
	for id := range written {
		if !seen[id] {
			t.Errorf("message %d was written but the reader's cursor passed it", id)
		}
	}
}

func TestGroups(t *testing.T) {
	storetest.RunGroupTests(t, func(t *testing.T, clock *storetest.Clock) store.Store {
		return openTemp(t, withClock(clock))
	})
}

func TestReopen(t *testing.T) {
	storetest.RunReopenTests(t, func(t *testing.T) func() (store.Store, error) {
		dsn := pgtest.NewDB(t)
		return func() (store.Store, error) { return Open(context.Background(), dsn, Options{}) }
	})
}

// TestRacingCommitsAcrossStores has 100 commits built on one epoch race
// through two stores on one database, as two gateways would, each
// delivering a post to the group's log: exactly one wins, and only its
// post is in the log.
func TestRacingCommitsAcrossStores(t *testing.T) {
	ctx := context.Background()
	var stores [2]*Store
	stores[0], stores[1] = openPair(t, 8)
	const rivals, member = 100, "mimi://a.example/d/alice/phone"
	g := storetest.NewGroup(t, []byte("raced group"), 3)
	if err := stores[0].CreateGroup(ctx, store.GroupCreation{Hub: "a.example", State: g.State, Members: []string{member}}); err != nil {
		t.Fatalf("CreateGroup: %v", err)
	}
	nexts := make([]*storetest.Group, rivals)
	commits := make([]store.EpochCommit, rivals)
	for i := range rivals {
		nexts[i], commits[i] = g.Commit(t)
		commits[i].Fanout = store.Fanout{Group: &store.GroupPost{GroupID: g.State.GroupID(), Message: fmt.Appendf(nil, "commit %d", i)}}
	}
	errs := make([]error, rivals)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range rivals {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[i] = stores[i%2].CommitEpoch(ctx, commits[i])
		}()
	}
	close(start)
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("commits %d and %d both won epoch %d", winner, i, g.State.Epoch())
		case err == nil:
			winner = i
		case !errors.Is(err, store.ErrEpochConflict):
			t.Fatalf("commit %d: got %v, want ErrEpochConflict", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no commit won")
	}
	for i, s := range stores {
		got, err := s.LoadGroup(ctx, g.State.GroupID())
		if err != nil {
			t.Fatalf("LoadGroup through store %d: %v", i, err)
		}
		storetest.SameState(t, fmt.Sprint("the state through store ", i), got, nexts[winner].State)
	}
	msgs, err := stores[1].Fetch(ctx, member, 0, store.FetchLimit{})
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if len(msgs) != 1 || string(msgs[0].Message) != fmt.Sprint("commit ", winner) {
		t.Fatalf("the member's stream holds %d messages, want the winner's post only: %+v", len(msgs), msgs)
	}
}

// TestContextWhileWaiting checks that a write whose ctx ends while it
// waits, for a connection of the pool or for a row another transaction
// holds, returns an error wrapping ctx.Err(). One that never got a
// connection wrote nothing. One that was waiting inside its statement may
// or may not have written, as package store allows: the server may run it
// to its commit, once the row is free, before the cancel request reaches
// it.
func TestContextWhileWaiting(t *testing.T) {
	for _, c := range []struct {
		name string
		// hold blocks the next write on key until the returned function
		// is called.
		hold func(t *testing.T, s *Store, key []byte) (release func())
		// started: the blocked write had sent its statement.
		started bool
	}{
		{"connection", func(t *testing.T, s *Store, _ []byte) func() {
			conn, err := s.pool.Acquire(context.Background())
			if err != nil {
				t.Fatalf("taking the pool's connection: %v", err)
			}
			return conn.Release
		}, false},
		{"row lock", func(t *testing.T, s *Store, key []byte) func() {
			conn, err := pgx.Connect(context.Background(), s.pool.Config().ConnConfig.ConnString())
			if err != nil {
				t.Fatalf("connecting: %v", err)
			}
			tx, err := conn.Begin(context.Background())
			if err != nil {
				t.Fatalf("BEGIN: %v", err)
			}
			if _, err := tx.Exec(context.Background(), `INSERT INTO spent_tokens (key, expires_ms) VALUES ($1, 0)`, key); err != nil {
				t.Fatalf("locking the token's row: %v", err)
			}
			return func() {
				_ = tx.Rollback(context.Background())
				_ = conn.Close(context.Background())
			}
		}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := openTemp(t, Options{MaxConns: 1})
			key := []byte("token " + c.name)
			exp := time.Now().Add(time.Hour)
			release := c.hold(t, s, key)
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			first, err := s.MarkSpent(ctx, key, exp)
			release()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("MarkSpent while blocked: first use %t, %v; want an error wrapping context.DeadlineExceeded", first, err)
			}
			first, err = s.MarkSpent(context.Background(), key, exp)
			if err != nil || (!c.started && !first) {
				t.Fatalf("MarkSpent after the timed-out call: first use %t, %v; want the first use", first, err)
			}
		})
	}
}

// TestSynchronousCommit checks that the store's sessions commit durably
// even on a database configured with synchronous_commit off.
func TestSynchronousCommit(t *testing.T) {
	dsn := pgtest.NewDB(t)
	ctx := context.Background()
	conn := connect(t, dsn)
	defer conn.Close(ctx)
	var db string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		t.Fatalf("reading the database name: %v", err)
	}
	if _, err := conn.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" SET synchronous_commit = off"); err != nil {
		t.Fatalf("turning synchronous_commit off: %v", err)
	}
	s, err := Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	var v string
	if err := s.pool.QueryRow(ctx, "SHOW synchronous_commit").Scan(&v); err != nil {
		t.Fatalf("reading synchronous_commit: %v", err)
	}
	if v != "on" {
		t.Fatalf("the store's sessions run with synchronous_commit %s, want on", v)
	}
}

// TestSynchronousCommitOffRefused checks that Open refuses a DSN that
// turns synchronous_commit off, however it is spelled (in any case, as any
// of PostgreSQL's names for off), and that a DSN whose options (-c) turn
// it off opens sessions that run with it on, or is refused.
func TestSynchronousCommitOffRefused(t *testing.T) {
	dsn := pgtest.NewDB(t)
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	ctx := context.Background()
	for _, q := range []string{"synchronous_commit=off", "synchronous_commit=OFF", "synchronous_commit=Off",
		"synchronous_commit=false", "synchronous_commit=FALSE", "synchronous_commit=0", "synchronous_commit=no"} {
		t.Run(q, func(t *testing.T) {
			s, err := Open(ctx, dsn+sep+q, Options{})
			if err == nil {
				s.Close()
			}
			if !errors.Is(err, store.ErrInvalid) {
				t.Fatalf("Open: %v, want ErrInvalid", err)
			}
		})
	}
	for _, q := range []string{"options=-c%20synchronous_commit%3Doff", "options=-c%20synchronous_commit%3Dfalse"} {
		t.Run(q, func(t *testing.T) {
			s, err := Open(ctx, dsn+sep+q, Options{})
			if errors.Is(err, store.ErrInvalid) {
				return
			}
			if err != nil {
				t.Fatalf("Open: %v, want nil or ErrInvalid", err)
			}
			defer s.Close()
			var v string
			if err := s.pool.QueryRow(ctx, "SHOW synchronous_commit").Scan(&v); err != nil {
				t.Fatalf("reading synchronous_commit: %v", err)
			}
			if v == "off" {
				t.Fatalf("the store's sessions run with synchronous_commit off")
			}
		})
	}
	for _, q := range []string{"synchronous_commit=local", "synchronous_commit=ON", "synchronous_commit=remote_apply"} {
		s, err := Open(ctx, dsn+sep+q, Options{})
		if err != nil {
			t.Fatalf("%s: Open: %v", q, err)
		}
		s.Close()
	}
}

// TestAttachmentQuotaAcrossStores has 20 reservations race through two
// stores on one database for a group whose quota holds 5: exactly 5
// succeed, the others get ErrQuota.
func TestAttachmentQuotaAcrossStores(t *testing.T) {
	ctx := context.Background()
	var stores [2]*Store
	stores[0], stores[1] = openPair(t, 8)
	const racers, quota = 20, 5
	now := time.Now()
	errs := make([]error, racers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := store.Attachment{GroupID: []byte("group"), Object: fmt.Sprint("object-", i), Size: 10,
				ContentHash: []byte("hash"), Uploader: fmt.Sprintf("mimi://a.example/d/u%d/c", i),
				Created: now, Expires: now.Add(time.Hour)}
			a.TokenHash[0], a.TokenHash[1] = byte(i), 1
			<-start
			errs[i] = stores[i%2].ReserveAttachment(ctx, a, store.AttachmentQuota{GroupCount: quota})
		}()
	}
	close(start)
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, store.ErrQuota):
			t.Fatalf("reservation %d: %v, want nil or ErrQuota", i, err)
		}
	}
	if won != quota {
		t.Fatalf("%d reservations succeeded, want %d", won, quota)
	}
	u, err := stores[0].GroupAttachmentUsage(ctx, []byte("group"))
	if err != nil || u.Count != quota {
		t.Fatalf("group usage %+v, %v; want %d attachments", u, err, quota)
	}
}

// TestContractRepeatableRead runs the contract tests on a database whose
// default isolation level is REPEATABLE READ: the store's sessions and
// transactions run at READ COMMITTED still, which its checks rely on.
func TestContractRepeatableRead(t *testing.T) {
	storetest.RunContractTests(t, func(t *testing.T) store.Store {
		dsn := pgtest.NewDB(t)
		alterDatabase(t, dsn, "default_transaction_isolation", "repeatable read")
		ctx := context.Background()
		s, err := Open(ctx, dsn, Options{})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		var pooled, inTx string
		if err := s.pool.QueryRow(ctx, "SHOW transaction_isolation").Scan(&pooled); err != nil {
			t.Fatalf("reading the isolation level: %v", err)
		}
		if err := s.inTx(ctx, func(tx pgx.Tx) error {
			return tx.QueryRow(ctx, "SHOW transaction_isolation").Scan(&inTx)
		}); err != nil {
			t.Fatalf("reading the isolation level: %v", err)
		}
		if pooled != "read committed" || inTx != "read committed" {
			t.Fatalf("isolation level %q, in a transaction %q; want read committed", pooled, inTx)
		}
		return s
	})
}

// TestAckWritesNoCursorForUnknownClient runs
// storetest.CheckAckOfUnknownClient, counting the cursor rows.
func TestAckWritesNoCursorForUnknownClient(t *testing.T) {
	s := openTemp(t, Options{})
	storetest.CheckAckOfUnknownClient(t, s, func() (int, error) {
		var n int
		err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM queue_cursors").Scan(&n)
		return n, err
	})
}

// TestFetchReadsOnlyWhatItAnswers checks that a Fetch reads from the
// database the messages it answers, not every message up to its count
// bound: a client with a backlog of large messages asking for the
// default 100 got 4 MiB of them, but the store had read and decoded all
// 100 (100 MiB) to find where its byte bound cut, for every page. The
// Go memory a Fetch allocates is compared with what it answers.
func TestFetchReadsOnlyWhatItAnswers(t *testing.T) {
	allocated := func(fetch func()) int64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		fetch()
		runtime.ReadMemStats(&after)
		return int64(after.TotalAlloc - before.TotalAlloc)
	}
	limit := func(answered int64) int64 { return 2*answered + 4<<20 }
	t.Run("queue", func(t *testing.T) { storetest.CheckFetchCost(t, openTemp(t, Options{}), 40, allocated, limit) })
	t.Run("group log", func(t *testing.T) {
		storetest.CheckGroupFetchCost(t, openTemp(t, Options{}), 40, allocated, limit)
	})
}
