package sqlitestore

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// TestScanSweepPages fills each table swept by scan with more rows than a
// scan page and a DELETE hold, every third expired, and checks that one
// DeleteExpired removes exactly the expired rows of each, keeps the
// others, and leaves the queues' counters and bodies exact.
func TestScanSweepPages(t *testing.T) {
	s := openTemp(t)
	ctx := context.Background()
	now := time.Now()
	const n = scanPage + 123 // two pages; the first holds more than a DELETE
	expired := func(i int) bool { return i%3 == 0 }
	exp := func(i int) time.Time {
		if expired(i) {
			return now.Add(time.Minute)
		}
		return now.Add(time.Hour)
	}
	sweepAt := now.Add(2 * time.Minute)

	// Replay records, seen signatures and spent tokens; queue entries in
	// 7 queues, a delivery per row.
	want := map[string]int{}
	for i := range n {
		var k [32]byte
		binary.BigEndian.PutUint64(k[:], uint64(i)*0x9E3779B97F4A7C15)
		if _, err := s.RecordReplay(ctx, "a.example", k[:16], k, store.Answer{Body: []byte("x")}, exp(i)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SeenSignature(ctx, k, exp(i)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.MarkSpent(ctx, k[:], exp(i)); err != nil {
			t.Fatal(err)
		}
		cl := client(fmt.Sprint("q", i%7))
		if _, err := s.Append(ctx, store.Delivery{Recipients: []string{cl, client("all")}, GroupID: []byte("g"), Sender: "a.example",
			Message: []byte(fmt.Sprint("message ", i)), Expires: exp(i)}); err != nil {
			t.Fatal(err)
		}
		if !expired(i) {
			want[cl]++
			want[client("all")]++
		}
	}
	var wantDeleted int64
	for i := range n {
		if expired(i) {
			wantDeleted += 3 + 2 // three records, two queue entries
		}
	}
	got, err := s.DeleteExpired(ctx, sweepAt)
	if err != nil {
		t.Fatal(err)
	}
	if got != wantDeleted {
		t.Errorf("DeleteExpired removed %d rows, want %d", got, wantDeleted)
	}
	for _, tc := range []struct{ table, sql string }{
		{"replay_requests", `SELECT COUNT(*) FROM replay_requests WHERE expires_ms <= ?1`},
		{"seen_signatures", `SELECT COUNT(*) FROM seen_signatures WHERE expires_ms <= ?1`},
		{"spent_tokens", `SELECT COUNT(*) FROM spent_tokens WHERE expires_ms <= ?1`},
		{"queue_messages", `SELECT COUNT(*) FROM queue_messages WHERE expires_ms <= ?1`},
	} {
		var left int
		if err := s.r.QueryRowContext(ctx, tc.sql, sweepAt.UnixMilli()).Scan(&left); err != nil {
			t.Fatal(err)
		}
		if left != 0 {
			t.Errorf("%s: %d expired rows left", tc.table, left)
		}
	}
	var alive int
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM replay_requests`).Scan(&alive); err != nil {
		t.Fatal(err)
	}
	if alive != n-(n+2)/3 {
		t.Errorf("%d replay records left, want %d", alive, n-(n+2)/3)
	}
	for cl, w := range want {
		var messages, bytes, entries, size int64
		if err := s.r.QueryRowContext(ctx, `SELECT messages, bytes FROM queue_heads WHERE client = ?1`, cl).Scan(&messages, &bytes); err != nil {
			t.Fatal(err)
		}
		if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(size), 0) FROM queue_messages WHERE client = ?1`, cl).Scan(&entries, &size); err != nil {
			t.Fatal(err)
		}
		if entries != int64(w) || messages != entries || bytes != size {
			t.Errorf("queue %s: %d entries (%d bytes), counted %d (%d bytes); want %d entries", cl, entries, size, messages, bytes, w)
		}
	}
	var orphans, wrongRefs int
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM queue_bodies b
		WHERE NOT EXISTS (SELECT 1 FROM queue_messages m WHERE m.body_id = b.id)`).Scan(&orphans); err != nil {
		t.Fatal(err)
	}
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM queue_bodies b
		WHERE b.refs <> (SELECT COUNT(*) FROM queue_messages m WHERE m.body_id = b.id)`).Scan(&wrongRefs); err != nil {
		t.Fatal(err)
	}
	if orphans != 0 || wrongRefs != 0 {
		t.Errorf("%d bodies without entries, %d with a wrong reference count", orphans, wrongRefs)
	}
	// A second pass finds nothing.
	if got, err := s.DeleteExpired(ctx, sweepAt); err != nil || got != 0 {
		t.Errorf("second DeleteExpired: %d, %v", got, err)
	}
}

// TestNoExpiryIndexOnHotTables checks that schema version 10 left the hot
// tables without the expiry indexes whose upkeep the writer paid.
func TestNoExpiryIndexOnHotTables(t *testing.T) {
	s := openTemp(t)
	for _, sw := range scanSweeps {
		var n int
		if err := s.r.QueryRowContext(context.Background(),
			`SELECT COUNT(*) FROM sqlite_schema WHERE type = 'index' AND tbl_name = ?1 AND sql LIKE '%expires%'`, sw.table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%s has %d expiry indexes", sw.table, n)
		}
	}
}
