package sqlitestore

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// outboxAddChildEnv, when set to a database path, makes
// TestOutboxAddCrashChild the writer that TestOutboxAddCrash kills.
const outboxAddChildEnv = "MIMI_OUTBOX_ADD_CRASH_CHILD"

// outboxAddWrite is the receipt the crash test writes for message i of
// writer w: one message to the backend's outbox, with its dedup key.
func outboxAddWrite(w, i int) store.OutboxWrite {
	msg := fmt.Sprintf("forward %d/%d", w, i)
	key := sha256.Sum256([]byte(msg))
	return store.OutboxWrite{Messages: []store.OutboxMessage{{Sender: "b.example", Destination: store.BackendDestination,
		GroupID: []byte("crash"), Recipients: []string{"mimi://a.example/d/alice/phone"}, Message: []byte(msg)}},
		Dedup: key[:], DedupExpires: time.Now().Add(time.Hour)}
}

// TestOutboxAddCrashChild writes receipts from 8 goroutines until it is
// killed, printing each message's text once its OutboxAdd returned; it
// runs only as TestOutboxAddCrash's child.
func TestOutboxAddCrashChild(t *testing.T) {
	path := os.Getenv(outboxAddChildEnv)
	if path == "" {
		t.Skip("the child of TestOutboxAddCrash")
	}
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				wr := outboxAddWrite(w, i)
				if _, err := s.OutboxAdd(context.Background(), wr); err != nil {
					fmt.Fprintln(os.Stderr, "OutboxAdd:", err)
					os.Exit(3)
				}
				mu.Lock()
				fmt.Println(string(wr.Messages[0].Message))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

// TestOutboxAddCrash kills a process that writes deliver_message receipts
// for the legacy backend (OutboxAdd) with SIGKILL mid-stream, and checks
// in the reopened database that every acknowledged message is in the
// outbox and that its dedup record is too: the same receipt again is a
// duplicate, so a peer's retry after the crash is not forwarded twice.
func TestOutboxAddCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestOutboxAddCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), outboxAddChildEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var acked []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "forward ") {
			acked = append(acked, line)
		}
		if len(acked) == 2000 {
			if err := cmd.Process.Kill(); err != nil { // SIGKILL
				t.Fatal(err)
			}
			break
		}
	}
	for sc.Scan() { // what was acknowledged before the kill landed
		if line := sc.Text(); strings.HasPrefix(line, "forward ") {
			acked = append(acked, line)
		}
	}
	_ = cmd.Wait()
	if len(acked) < 2000 {
		t.Fatalf("only %d acknowledged writes before the child ended", len(acked))
	}

	s := openAt(t, path)
	have := map[string]bool{}
	var after uint64
	for {
		page, err := s.OutboxPending(t.Context(), store.BackendDestination, after, store.MaxOutboxList)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, e := range page {
			have[string(e.Message)] = true
		}
		after = page[len(page)-1].ID
	}
	for _, a := range acked {
		if !have[a] {
			t.Fatalf("acknowledged %q is not in the outbox after kill -9", a)
		}
		var w, i int
		if _, err := fmt.Sscanf(a, "forward %d/%d", &w, &i); err != nil {
			t.Fatal(err)
		}
		if _, err := s.OutboxAdd(t.Context(), outboxAddWrite(w, i)); !errors.Is(err, store.ErrDuplicate) {
			t.Fatalf("acknowledged %q written again after kill -9: %v, want a duplicate", a, err)
		}
	}
	t.Logf("%d acknowledged receipts, all in the outbox with their dedup records after kill -9 (%d rows)", len(acked), len(have))
}

// openAt opens the store at path and closes it when t ends.
func openAt(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
