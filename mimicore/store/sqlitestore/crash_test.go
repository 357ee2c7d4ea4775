package sqlitestore

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// crashChildEnv, when set to a database path, turns the test binary into the
// writer that TestCrashDurability kills (see TestMain).
const crashChildEnv = "SQLITESTORE_CRASH_CHILD_DB"

// crashRoundEnv names the round, so keys of different rounds differ.
const crashRoundEnv = "SQLITESTORE_CRASH_ROUND"

const crashSender = "crash.example"

// crashWriters is the number of concurrent writers of the child: enough
// that the writer's batches really hold many writes when it is killed.
const crashWriters = 64

// crashChild opens the store and writes until it is killed, from
// crashWriters goroutines. Each acknowledged write is printed as one line,
// in one write call, only after the store method returned: "spent <hex>"
// for MarkSpent, "reply <hex>" for a Reserve + Complete, "sig <hex>" for
// SeenSignature, "logged <hex>" for a RecordReplay; beside them the group
// writers (crashCommits), the queue writers (crashAppends), a KeyPackage
// publisher (crashPublish) and claimers (crashClaims) print their own
// lines. Every 50 ms it prints the writer's Stats to stderr as
// "stats <commits> <ops> <max batch>".
func crashChild(path string) int {
	round := os.Getenv(crashRoundEnv)
	s, err := Open(context.Background(), path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "opening store: %v\n", err)
		return 2
	}
	exp := time.Now().Add(time.Hour)
	go func() {
		for range time.Tick(50 * time.Millisecond) {
			st := s.Stats()
			fmt.Fprintf(os.Stderr, "stats %d %d %d\n", st.Commits, st.Ops, st.MaxBatch)
		}
	}()
	var wg sync.WaitGroup
	for w := 0; w < crashQueueWriters; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := crashAppends(s, round, w); err != nil {
				fmt.Fprintf(os.Stderr, "queue writer: %v\n", err)
				os.Exit(3)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := crashPublish(s, round); err != nil {
			fmt.Fprintf(os.Stderr, "KeyPackage publisher: %v\n", err)
			os.Exit(3)
		}
	}()
	for w := 0; w < crashClaimers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := crashClaims(s, round); err != nil {
				fmt.Fprintf(os.Stderr, "KeyPackage claimer: %v\n", err)
				os.Exit(3)
			}
		}()
	}
	for w := 0; w < crashGroupWriters; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := crashCommits(s, fmt.Sprintf("%s/group/%d", round, w)); err != nil {
				fmt.Fprintf(os.Stderr, "group writer: %v\n", err)
				os.Exit(3)
			}
		}()
	}
	for w := 0; w < crashWriters; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				key := []byte(fmt.Sprintf("%s/%d/%d", round, w, i))
				var line string
				switch i % 4 {
				case 0:
					first, err := s.MarkSpent(context.Background(), key, exp)
					if err != nil || !first {
						fmt.Fprintf(os.Stderr, "MarkSpent: %t %v\n", first, err)
						os.Exit(3)
					}
					line = "spent " + hex.EncodeToString(key)
				case 1:
					d := sha256.Sum256(key)
					r, err := s.Reserve(context.Background(), crashSender, key, d, exp)
					if err == nil && r.Status != store.ReplayNew {
						err = fmt.Errorf("status %s", r.Status)
					}
					if err == nil {
						err = s.Complete(context.Background(), crashSender, key, d, store.Answer{Body: key})
					}
					if err != nil {
						fmt.Fprintf(os.Stderr, "Reserve/Complete: %v\n", err)
						os.Exit(3)
					}
					line = "reply " + hex.EncodeToString(key)
				case 2:
					first, err := s.SeenSignature(context.Background(), sha256.Sum256(key), exp)
					if err != nil || !first {
						fmt.Fprintf(os.Stderr, "SeenSignature: %t %v\n", first, err)
						os.Exit(3)
					}
					line = "sig " + hex.EncodeToString(key)
				case 3:
					// The one-write path: the answer alone.
					if _, err := s.RecordReplay(context.Background(), crashSender, key, sha256.Sum256(key),
						store.Answer{Body: key}, exp); err != nil {
						fmt.Fprintf(os.Stderr, "RecordReplay: %v\n", err)
						os.Exit(3)
					}
					line = "logged " + hex.EncodeToString(key)
				}
				if _, err := os.Stdout.WriteString(line + "\n"); err != nil {
					os.Exit(4)
				}
			}
		}()
	}
	wg.Wait()
	return 0
}

// crashQueueWriters is the number of goroutines of the child that append
// to queues; crashClaimers the number that claim KeyPackages, which one
// more goroutine publishes.
const (
	crashQueueWriters = 4
	crashClaimers     = 4
)

// crashAppends appends, until the process is killed, message after message
// to three queues at once: two of its own and one that every queue writer
// of the round shares. After each Append returned it prints one line per
// recipient, "queue <client> <seq> <message>" (client and message in hex),
// all in one write.
func crashAppends(s *Store, round string, w int) error {
	recipients := []string{
		fmt.Sprintf("mimi://crash/%s/%d/a", round, w),
		fmt.Sprintf("mimi://crash/%s/%d/b", round, w),
		fmt.Sprintf("mimi://crash/%s/shared", round),
	}
	for i := 0; ; i++ {
		msg := fmt.Sprintf("%s/%d/%d", round, w, i)
		out, err := s.Append(context.Background(), store.Delivery{Recipients: recipients, GroupID: []byte("g"),
			Sender: crashSender, Message: []byte(msg), Limits: store.QueueLimits{MaxMessages: 1 << 30}})
		if err != nil {
			return fmt.Errorf("Append: %w", err)
		}
		var b strings.Builder
		for j, r := range recipients {
			if out[j].Err != nil {
				return fmt.Errorf("Append to %s: %w", r, out[j].Err)
			}
			fmt.Fprintf(&b, "queue %s %d %s\n", hex.EncodeToString([]byte(r)), out[j].Seq, hex.EncodeToString([]byte(msg)))
		}
		if _, err := os.Stdout.WriteString(b.String()); err != nil {
			return err
		}
	}
}

// crashKPClient is the client whose KeyPackages a round publishes and
// claims.
func crashKPClient(round string) string { return "mimi://crash/" + round + "/kp" }

// crashPublish publishes a last-resort package, then single-use packages
// 16 at a time, as fast as the claimers make room, printing "published
// <ref>" for each once its publish returned.
func crashPublish(s *Store, round string) error {
	client := crashKPClient(round)
	exp := time.Now().Add(time.Hour)
	if err := s.PublishKeyPackages(context.Background(), client, []store.KeyPackage{{Suite: 1,
		Ref: []byte(round + "/lr"), KeyPackage: []byte("lr"), NotAfter: exp, LastResort: true}}, store.KeyPackageLimits{}); err != nil {
		return fmt.Errorf("publishing the last resort: %w", err)
	}
	for i := 0; ; {
		kps := make([]store.KeyPackage, 16)
		for j := range kps {
			ref := fmt.Sprintf("%s/kp/%d", round, i+j)
			kps[j] = store.KeyPackage{Suite: 1, Ref: []byte(ref), KeyPackage: []byte("kp " + ref), NotAfter: exp}
		}
		err := s.PublishKeyPackages(context.Background(), client, kps, store.KeyPackageLimits{})
		if errors.Is(err, store.ErrTooManyKeyPackages) {
			time.Sleep(time.Millisecond)
			continue
		}
		if err != nil {
			return fmt.Errorf("PublishKeyPackages: %w", err)
		}
		var b strings.Builder
		for _, kp := range kps {
			fmt.Fprintf(&b, "published %s\n", hex.EncodeToString(kp.Ref))
		}
		if _, err := os.Stdout.WriteString(b.String()); err != nil {
			return err
		}
		i += len(kps)
	}
}

// crashClaims claims single-use packages until the process is killed,
// printing "claimed <ref>" after each claim returned; when only the last
// resort is left it waits a little for the publisher.
func crashClaims(s *Store, round string) error {
	client := crashKPClient(round)
	for {
		kp, err := s.ClaimKeyPackage(context.Background(), client, 1)
		if errors.Is(err, store.ErrNotFound) || (err == nil && kp.LastResort) {
			time.Sleep(time.Millisecond)
			continue
		}
		if err != nil {
			return fmt.Errorf("ClaimKeyPackage: %w", err)
		}
		if _, err := os.Stdout.WriteString("claimed " + hex.EncodeToString(kp.Ref) + "\n"); err != nil {
			return err
		}
	}
}

// crashGroupWriters is the number of goroutines of the child that each
// create a group and commit to it until the kill.
const crashGroupWriters = 4

// crashCommits creates group id and commits to it, epoch after epoch, until
// the process is killed. Before each write it prints "try <id> <epoch>
// <digest>" (the state it is about to store), after the write returned
// "group <id> <epoch> <digest>" (an acknowledgement), where digest is the
// SHA-256 of the state's MarshalBinary: the verifier then knows every state
// the group may be in. Every fifth commit adds a member and every seventh
// removes one, so commits grow and shrink the tree and keep Welcome trees.
// Each commit fans out "epoch <n>" to the group's log, which its local
// member (crashMember) reads, and to the outbox of crashPeer, in its own write (crashFanout); after it, an
// application message "msg <n>" goes to both with Deliver, conditional on
// the epoch, between "send <id> <epoch>" and "sent <id> <epoch>".
func crashCommits(s *Store, id string) error {
	g, err := storetest.MakeGroup([]byte(id), 3)
	if err != nil {
		return err
	}
	line := func(kind string, st *mls.GroupState) error {
		enc, err := st.MarshalBinary()
		if err != nil {
			return err
		}
		d := sha256.Sum256(enc)
		_, err = fmt.Fprintf(os.Stdout, "%s %s %d %s\n", kind, hex.EncodeToString([]byte(id)), st.Epoch(), hex.EncodeToString(d[:]))
		return err
	}
	if err := line("try", g.State); err != nil {
		return err
	}
	if err := s.CreateGroup(context.Background(), store.GroupCreation{Hub: "crash.example", State: g.State,
		Members: []string{crashMember(id)}}); err != nil {
		return fmt.Errorf("CreateGroup: %w", err)
	}
	if err := line("group", g.State); err != nil {
		return err
	}
	first := g.State.Epoch() // commit i starts epoch first + i
	for i := 1; ; i++ {
		var props []*mls.Proposal
		switch {
		case i%5 == 0:
			if props, err = storetest.MakeAdds(1); err != nil {
				return err
			}
		case i%7 == 0 && g.State.MemberCount() > 2:
			members := g.State.Tree().Members()
			props = []*mls.Proposal{storetest.Remove(members[len(members)-1])}
		}
		next, c, err := g.MakeCommit(props...)
		if err != nil {
			return err
		}
		if err := line("try", next.State); err != nil {
			return err
		}
		c.Fanout = crashFanout(id, next.State.Epoch())
		// Local clients join and leave the group's log with the
		// commits (crashJoinEpoch, crashLeaveEpoch).
		if i%crashJoinEvery == 0 {
			c.Fanout.Group.Join = []string{crashJoiner(id, next.State.Epoch())}
		}
		if i%crashLeaveEvery == 0 && i > crashJoinEvery {
			c.Fanout.Group.Leave = []string{crashJoiner(id, first+uint64((i-1)/crashJoinEvery*crashJoinEvery))}
		}
		if err := commitErr(s.CommitEpoch(context.Background(), c)); err != nil {
			return fmt.Errorf("CommitEpoch to epoch %d: %w", next.State.Epoch(), err)
		}
		if err := line("group", next.State); err != nil {
			return err
		}
		g = next
		e := g.State.Epoch()
		if _, err := fmt.Fprintf(os.Stdout, "send %s %d\n", hex.EncodeToString([]byte(id)), e); err != nil {
			return err
		}
		f := crashFanout(id, e)
		msg := []byte(fmt.Sprintf("msg %d", e))
		f.Group.Message, f.Remote[0].Message = msg, msg
		if _, err := s.Deliver(context.Background(), []byte(id), e, f); err != nil {
			return fmt.Errorf("Deliver in epoch %d: %w", e, err)
		}
		if _, err := fmt.Fprintf(os.Stdout, "sent %s %d\n", hex.EncodeToString([]byte(id)), e); err != nil {
			return err
		}
	}
}

// crashPeer is the destination of the crash test's outbox messages.
const crashPeer = "crash-peer.example"

// crashMember is the local member of group id, which reads its commits
// and messages in the group's log.
func crashMember(id string) string { return "mimi://crash/" + id + "/member" }

// Every crashJoinEvery-th commit of a group has a local client join its
// log (crashJoiner), and every crashLeaveEvery-th has the last one that
// joined before it leave.
const crashJoinEvery, crashLeaveEvery = 5, 7

// crashJoiner is the local client that joins group id's log with the
// commit to epoch.
func crashJoiner(id string, epoch uint64) string {
	return fmt.Sprintf("mimi://crash/%s/joiner/%d", id, epoch)
}

// crashFanout is the delivery of group id's commit to epoch.
func crashFanout(id string, epoch uint64) store.Fanout {
	msg := []byte(fmt.Sprintf("epoch %d", epoch))
	return store.Fanout{
		Group: &store.GroupPost{GroupID: []byte(id), Message: msg},
		Remote: []store.OutboxMessage{{Sender: "crash.example", Destination: crashPeer, GroupID: []byte(id),
			Recipients: []string{"mimi://" + crashPeer + "/d/member/phone"}, Message: msg}},
	}
}

// TestCrashDurability runs a child process whose 64 concurrent writers
// write and acknowledge through group commit, beside 4 that each commit
// epoch after epoch to an MLS group, 4 that append to queues (fan-outs of
// three, one queue shared by all four), one that publishes KeyPackages and
// 4 that claim them, kills it with SIGKILL mid-stream, and checks that
// every acknowledged write is in the reopened database, that every group
// holds its last acknowledged commit or the one in flight and no
// half-applied state, with the fan-out of exactly the commits it holds and
// of every acknowledged message sent between them (in the group's log, as
// its creator reads it, and as each client that joined or left the log
// with a stored commit reads it over its membership), that every queue holds
// each acknowledged append under its sequence number, that no claimed KeyPackage is available
// or handed out again, and that the database is intact, three times over.
func TestCrashDurability(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	var all []string
	for round := 0; round < 3; round++ {
		acks, stats := runAndKill(t, path, round)
		if len(acks) < 10 {
			t.Fatalf("round %d: only %d acknowledged writes before the kill", round, len(acks))
		}
		all = append(all, acks...)
		ahead := verifyAcks(t, path, all)
		_, tries := splitGroupLines(acks)
		t.Logf("round %d: %d acknowledged writes (%s), all %d present after kill -9 "+
			"(%d groups so far hold the commit in flight at their kill, none half applied); child's last stats: %s",
			round, len(acks)-countTries(tries), countKinds(acks), len(all)-countTries(all), ahead, stats)
	}
}

// countKinds summarises acknowledgements by kind.
func countKinds(acks []string) string {
	n := map[string]int{}
	for _, a := range acks {
		kind, _, _ := strings.Cut(a, " ")
		n[kind]++
	}
	return fmt.Sprintf("%d spent, %d reply, %d sig, %d logged, %d group commits, %d group messages, %d queue appends, %d KeyPackages published, %d claimed",
		n["spent"], n["reply"], n["sig"], n["logged"], n["group"], n["sent"], n["queue"], n["published"], n["claimed"])
}

// lastStats turns the child's last "stats" line into words.
func lastStats(stderr string) string {
	lines := strings.Split(stderr, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		var commits, ops, maxBatch uint64
		if _, err := fmt.Sscanf(lines[i], "stats %d %d %d", &commits, &ops, &maxBatch); err == nil && commits > 0 {
			return fmt.Sprintf("%d ops in %d commits, mean batch %.1f, max %d",
				ops, commits, float64(ops)/float64(commits), maxBatch)
		}
	}
	return "none"
}

// crashMinAcks is how many acknowledgements the child prints before its
// kill is scheduled.
const crashMinAcks = 200

// runAndKill starts the child on path, reads its acknowledgements for a
// while, kills it and returns every complete acknowledgement line and the
// child's last reported stats.
func runAndKill(t *testing.T, path string, round int) ([]string, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path, fmt.Sprintf("%s=%d", crashRoundEnv, round))
	var stderr lockedBuilder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("stdout pipe: %v", err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting child: %v", err)
	}
	lines := make(chan string, 1024)
	readErr := make(chan error, 1)
	go func() {
		defer close(lines)
		r := bufio.NewReader(out)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				// A line cut short by the kill was never acknowledged.
				if errors.Is(err, io.EOF) {
					err = nil
				}
				readErr <- err
				return
			}
			lines <- strings.TrimSuffix(line, "\n")
		}
	}()

	var acks []string
	var killAt <-chan time.Time
	timeout := time.After(60 * time.Second)
	for killAt == nil || lines != nil {
		select {
		case line, ok := <-lines:
			if !ok {
				lines = nil
				if killAt == nil {
					_ = cmd.Wait()
					t.Fatalf("child exited before it was killed: %s", stderr.String())
				}
				continue
			}
			acks = append(acks, line)
			if killAt == nil && len(acks) >= crashMinAcks {
				// Kill a random-ish moment after writing got going (a
				// count, not a time: a slow machine, -race, is slower).
				killAt = time.After(time.Duration(300+100*round) * time.Millisecond)
			}
		case <-killAt:
			if err := cmd.Process.Kill(); err != nil { // SIGKILL
				t.Fatalf("killing child: %v", err)
			}
			killAt = make(chan time.Time) // never fires again
		case <-timeout:
			_ = cmd.Process.Kill()
			t.Fatalf("child wrote %d acknowledgements in 60 s, fewer than %d or never died: %s", len(acks), crashMinAcks, stderr.String())
		}
	}
	if err := <-readErr; err != nil {
		t.Fatalf("reading child output: %v", err)
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != -1 { // -1: killed by a signal
		t.Fatalf("child ended with %v, not by the kill: %s", err, stderr.String())
	}
	return acks, lastStats(stderr.String())
}

// lockedBuilder is a strings.Builder that the child's stderr copier and the
// test may use at once.
type lockedBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuilder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuilder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// countTries counts the "try" lines of the group writers, which are not
// acknowledgements.
func countTries(lines []string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "try ") || strings.HasPrefix(l, "send ") {
			n++
		}
	}
	return n
}

// verifyAcks reopens the database and checks each acknowledged write. It
// returns how many groups hold a commit that was written but not
// acknowledged when the child died.
func verifyAcks(t *testing.T, path string, acks []string) int {
	t.Helper()
	ctx := context.Background()
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("reopening after kill: %v", err)
	}
	defer s.Close()
	var result string
	if err := s.w.QueryRowContext(ctx, "PRAGMA integrity_check").Scan(&result); err != nil {
		t.Fatalf("integrity check: %v", err)
	}
	if result != "ok" {
		t.Fatalf("integrity check: %s", result)
	}
	acks, groupLines := splitGroupLines(acks)
	ahead, err := verifyGroups(ctx, s, groupLines)
	if err != nil {
		t.Fatal(err)
	}
	acks, dsLines := splitQueueLines(acks)
	if err := verifyQueues(ctx, s, dsLines); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	// Checked by concurrent workers: the checks are writes (a replay
	// records nothing, but each is an op of the writer), so they batch.
	const workers = 32
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(acks); i += workers {
				if err := verifyAck(ctx, s, acks[i], exp); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return ahead
}

// verifyAck checks that the write of one acknowledgement line is in s.
func verifyAck(ctx context.Context, s *Store, ack string, exp time.Time) error {
	kind, hexKey, ok := strings.Cut(ack, " ")
	key, err := hex.DecodeString(hexKey)
	if !ok || err != nil {
		return fmt.Errorf("malformed acknowledgement %q", ack)
	}
	switch kind {
	case "spent":
		first, err := s.MarkSpent(ctx, key, exp)
		if err != nil || first {
			return fmt.Errorf("acknowledged spent token %q lost after kill -9 (first use %t, %v)", key, first, err)
		}
	case "reply":
		r, err := s.Reserve(ctx, crashSender, key, sha256.Sum256(key), exp)
		if err != nil || r.Status != store.ReplayDuplicate || string(r.Answer.Body) != string(key) {
			return fmt.Errorf("acknowledged answer for %q lost after kill -9 (%s, %v)", key, r.Status, err)
		}
	case "sig":
		first, err := s.SeenSignature(ctx, sha256.Sum256(key), exp)
		if err != nil || first {
			return fmt.Errorf("acknowledged signature %q lost after kill -9 (first use %t, %v)", key, first, err)
		}
	case "logged":
		e, err := s.FindReplay(ctx, crashSender, key)
		if err != nil || e.Pending || e.Digest != sha256.Sum256(key) || string(e.Answer.Body) != string(key) {
			return fmt.Errorf("acknowledged recorded answer for %q lost after kill -9 (%+v, %v)", key, e, err)
		}
	default:
		return fmt.Errorf("unknown acknowledgement %q", ack)
	}
	return nil
}

// splitGroupLines separates the group writers' lines ("try" and "group")
// from the other acknowledgements.
func splitGroupLines(lines []string) (acks, groups []string) {
	for _, l := range lines {
		if strings.HasPrefix(l, "try ") || strings.HasPrefix(l, "group ") ||
			strings.HasPrefix(l, "send ") || strings.HasPrefix(l, "sent ") {
			groups = append(groups, l)
		} else {
			acks = append(acks, l)
		}
	}
	return acks, groups
}

// verifyGroups checks each group the child wrote after the kill: its last
// acknowledged commit is there, or the one commit it had started after it
// (written but not acknowledged when the process died), and nothing in
// between: the stored state is exactly one of the states the child tried
// to store, and its tree, rebuilt from its nodes and fully verified
// (leaf signatures, parent hashes), hashes to its context's tree hash, so
// no commit is half applied.
func verifyGroups(ctx context.Context, s *Store, lines []string) (ahead int, err error) {
	type history struct {
		acked int64             // last acknowledged epoch, -1 for none
		tries map[uint64]string // epoch -> digest of the state tried
	}
	groups := map[string]*history{}
	created := map[string]uint64{} // the epoch each group was created at
	// The messages sent in each group's last epoch(s): tried, acknowledged.
	sendTried, sendAcked := map[string]uint64{}, map[string]uint64{}
	for _, l := range lines {
		var id string
		var epoch uint64
		if _, err := fmt.Sscanf(l, "send %s %d", &id, &epoch); err == nil {
			sendTried[id] = epoch
			continue
		}
		if _, err := fmt.Sscanf(l, "sent %s %d", &id, &epoch); err == nil {
			sendAcked[id] = epoch
			continue
		}
		var kind, digest string
		if _, err := fmt.Sscanf(l, "%s %s %d %s", &kind, &id, &epoch, &digest); err != nil {
			return 0, fmt.Errorf("malformed group line %q", l)
		}
		h := groups[id]
		if h == nil {
			h = &history{acked: -1, tries: map[uint64]string{}}
			groups[id] = h
		}
		switch kind {
		case "try":
			if len(h.tries) == 0 {
				created[id] = epoch
			}
			h.tries[epoch] = digest
		case "group":
			if h.tries[epoch] != digest {
				return 0, fmt.Errorf("group %s: epoch %d acknowledged without its try line", id, epoch)
			}
			h.acked = int64(epoch)
		}
	}
	outbox, err := crashOutbox(ctx, s)
	if err != nil {
		return 0, err
	}
	for id, h := range groups {
		raw, _ := hex.DecodeString(id)
		g, err := s.LoadGroup(ctx, raw)
		if errors.Is(err, store.ErrNotFound) && h.acked < 0 {
			continue // created, never acknowledged, lost: allowed
		}
		if err != nil {
			return 0, fmt.Errorf("group %s (acknowledged up to epoch %d) after kill -9: %w", raw, h.acked, err)
		}
		// The write in flight is the first one tried after the last
		// acknowledged (for a group whose creation was not acknowledged,
		// the creation, at its first epoch).
		inFlight := int64(-1)
		for e := range h.tries {
			if int64(e) > h.acked && (inFlight < 0 || int64(e) < inFlight) {
				inFlight = int64(e)
			}
		}
		if e := int64(g.Epoch()); e == inFlight {
			ahead++
		} else if e != h.acked {
			return 0, fmt.Errorf("group %s at epoch %d after kill -9, acknowledged up to %d", raw, e, h.acked)
		}
		enc, err := g.MarshalBinary()
		if err != nil {
			return 0, err
		}
		d := sha256.Sum256(enc)
		if want, ok := h.tries[g.Epoch()]; !ok || want != hex.EncodeToString(d[:]) {
			return 0, fmt.Errorf("group %s at epoch %d holds a state the child never wrote (half applied?)", raw, g.Epoch())
		}
		tree, err := mls.TreeFromRatchetTree(g.CipherSuite(), g.Tree().RatchetTree())
		if err != nil {
			return 0, fmt.Errorf("group %s: stored tree: %w", raw, err)
		}
		if err := tree.Validate(raw); err != nil {
			return 0, fmt.Errorf("group %s: stored tree does not verify: %w", raw, err)
		}
		if th, err := tree.TreeHash(); err != nil || !bytes.Equal(th, g.TreeHash()) {
			return 0, fmt.Errorf("group %s: stored nodes do not hash to the stored context's tree hash (%v)", raw, err)
		}
		// The fan-out of every stored commit and of no other, each
		// followed by the message sent in its epoch: acknowledged ones
		// all there, the one in flight at the kill there or not.
		var want []string
		last := g.Epoch()
		for e := created[id] + 1; e <= last; e++ {
			want = append(want, fmt.Sprintf("epoch %d", e))
			if e < last {
				want = append(want, fmt.Sprintf("msg %d", e))
			}
		}
		withLast := append(slices.Clone(want), fmt.Sprintf("msg %d", last))
		tried, isTried := sendTried[id]
		acked, isAcked := sendAcked[id]
		// okIn reports whether got is part(want), with the message of
		// the last epoch as it may be.
		okIn := func(got []string, part func([]string) []string) bool {
			switch {
			case isAcked && acked == last:
				return slices.Equal(got, part(withLast))
			case isTried && tried == last:
				return slices.Equal(got, part(want)) || slices.Equal(got, part(withLast))
			default:
				return slices.Equal(got, part(want))
			}
		}
		ok := func(got []string) bool { return okIn(got, func(l []string) []string { return l }) }
		queued, err := crashQueue(ctx, s, crashMember(string(raw)))
		if err != nil {
			return 0, err
		}
		// Each joiner of a stored commit reads from the post after its
		// join up to the commit that made it leave, if stored; the
		// joiner of the commit in flight, if it was not stored, nothing.
		for e := created[id] + crashJoinEvery; e <= last+1; e += crashJoinEvery {
			joiner := crashJoiner(string(raw), e)
			got, err := crashQueue(ctx, s, joiner)
			if err != nil {
				return 0, err
			}
			if e > last {
				if len(got) != 0 {
					return 0, fmt.Errorf("group %s at epoch %d: %s, who joins with the commit to %d, reads %v", raw, last, joiner, e, head(got))
				}
				continue
			}
			leave := uint64(0)
			for i := e - created[id] + 1; i <= e-created[id]+crashJoinEvery; i++ {
				if i%crashLeaveEvery == 0 {
					leave = created[id] + i
				}
			}
			span := func(l []string) []string {
				from := slices.Index(l, fmt.Sprintf("epoch %d", e)) + 1
				if leave != 0 && leave <= last {
					return l[from : slices.Index(l, fmt.Sprintf("epoch %d", leave))+1]
				}
				return l[from:]
			}
			if !okIn(got, span) {
				return 0, fmt.Errorf("group %s at epoch %d: %s (joined at %d, leaves at %d) reads %d messages %v..., want %v",
					raw, last, joiner, e, leave, len(got), head(got), head(span(want)))
			}
		}
		if !ok(queued) {
			return 0, fmt.Errorf("group %s at epoch %d: its member's queue holds %d messages %v..., want the %d commits stored and their messages",
				raw, g.Epoch(), len(queued), head(queued), len(want))
		}
		if got := outbox[string(raw)]; !ok(got) {
			return 0, fmt.Errorf("group %s at epoch %d: the outbox holds %d messages %v..., want the %d commits stored and their messages",
				raw, g.Epoch(), len(got), head(got), len(want))
		}
	}
	return ahead, nil
}

// head is the start of a list, for messages.
func head(l []string) []string { return l[:min(len(l), 3)] }

// crashQueue reads every message of client's queue.
func crashQueue(ctx context.Context, s *Store, client string) ([]string, error) {
	var out []string
	var after uint64
	for {
		msgs, err := s.Fetch(ctx, client, after, store.FetchLimit{Messages: store.MaxFetchMessages})
		if err != nil {
			return nil, fmt.Errorf("queue of %s after kill -9: %w", client, err)
		}
		if len(msgs) == 0 {
			return out, nil
		}
		for _, m := range msgs {
			if m.Seq <= after {
				return nil, fmt.Errorf("queue of %s: seq %d after %d", client, m.Seq, after)
			}
			after = m.Seq
			out = append(out, string(m.Message))
		}
	}
}

// crashOutbox reads crashPeer's whole outbox, by group.
func crashOutbox(ctx context.Context, s *Store) (map[string][]string, error) {
	out := map[string][]string{}
	var after uint64
	for {
		page, err := s.OutboxPending(ctx, crashPeer, after, store.MaxOutboxList)
		if err != nil {
			return nil, fmt.Errorf("outbox after kill -9: %w", err)
		}
		if len(page) == 0 {
			return out, nil
		}
		for _, e := range page {
			out[string(e.GroupID)] = append(out[string(e.GroupID)], string(e.Message))
			after = e.ID
		}
	}
}

// splitQueueLines separates the queue writers' and KeyPackage lines from
// the other acknowledgements.
func splitQueueLines(lines []string) (acks, ds []string) {
	for _, l := range lines {
		if strings.HasPrefix(l, "queue ") || strings.HasPrefix(l, "published ") || strings.HasPrefix(l, "claimed ") {
			ds = append(ds, l)
		} else {
			acks = append(acks, l)
		}
	}
	return acks, ds
}

// verifyQueues checks the queues and KeyPackages after the kill: every
// acknowledged append is in its queue under the sequence number Append
// answered, in strictly increasing order (numbers have gaps: they are
// global); every acknowledged publish is there; a
// package acknowledged as claimed is claimed, listed nowhere, and handed
// out by no claim after the restart, and no package was handed out twice.
func verifyQueues(ctx context.Context, s *Store, lines []string) error {
	queues := map[string]map[uint64]string{}
	published, claimed := map[string]bool{}, map[string]bool{}
	for _, l := range lines {
		f := strings.Fields(l)
		switch {
		case f[0] == "queue" && len(f) == 4:
			client, err1 := hex.DecodeString(f[1])
			msg, err2 := hex.DecodeString(f[3])
			var seq uint64
			_, err3 := fmt.Sscan(f[2], &seq)
			if err := errors.Join(err1, err2, err3); err != nil {
				return fmt.Errorf("malformed queue line %q: %w", l, err)
			}
			q := queues[string(client)]
			if q == nil {
				q = map[uint64]string{}
				queues[string(client)] = q
			}
			if prev, dup := q[seq]; dup {
				return fmt.Errorf("queue %s: seq %d answered for %q and %q", client, seq, prev, msg)
			}
			q[seq] = string(msg)
		case f[0] == "published" && len(f) == 2:
			published[f[1]] = true
		case f[0] == "claimed" && len(f) == 2:
			if claimed[f[1]] {
				return fmt.Errorf("KeyPackage %s handed out twice before the kill", f[1])
			}
			claimed[f[1]] = true
		default:
			return fmt.Errorf("malformed line %q", l)
		}
	}
	for client, acked := range queues {
		var stored []store.QueuedMessage
		for after := uint64(0); ; {
			page, err := s.Fetch(ctx, client, after, store.FetchLimit{Messages: store.MaxFetchMessages})
			if err != nil {
				return fmt.Errorf("queue %s after kill -9: %w", client, err)
			}
			if len(page) == 0 {
				break
			}
			stored = append(stored, page...)
			after = page[len(page)-1].Seq
		}
		bySeq := make(map[uint64]string, len(stored))
		for i, m := range stored {
			if i > 0 && m.Seq <= stored[i-1].Seq {
				return fmt.Errorf("queue %s after kill -9: message %d has seq %d after %d", client, i, m.Seq, stored[i-1].Seq)
			}
			bySeq[m.Seq] = string(m.Message)
		}
		for seq, msg := range acked {
			if got, ok := bySeq[seq]; !ok || got != msg {
				return fmt.Errorf("queue %s: acknowledged append %q (seq %d) lost after kill -9", client, msg, seq)
			}
		}
	}
	for ref := range published {
		raw, _ := hex.DecodeString(ref)
		if _, err := s.KeyPackageByRef(ctx, raw); err != nil {
			return fmt.Errorf("acknowledged KeyPackage %s lost after kill -9: %w", raw, err)
		}
	}
	clients := map[string]bool{}
	for ref := range claimed {
		raw, _ := hex.DecodeString(ref)
		kp, err := s.KeyPackageByRef(ctx, raw)
		if err != nil || !kp.Claimed {
			return fmt.Errorf("claimed KeyPackage %s after kill -9: claimed %t, %v", raw, kp.Claimed, err)
		}
		clients[kp.Client] = true
	}
	for client := range clients {
		kps, err := s.ListKeyPackages(ctx, client)
		if err != nil {
			return err
		}
		for _, kp := range kps {
			if claimed[hex.EncodeToString(kp.Ref)] {
				return fmt.Errorf("claimed KeyPackage %s available again after kill -9", kp.Ref)
			}
		}
		for {
			kp, err := s.ClaimKeyPackage(ctx, client, 1)
			if err != nil {
				return fmt.Errorf("claiming after kill -9: %w", err)
			}
			if kp.LastResort {
				break
			}
			if claimed[hex.EncodeToString(kp.Ref)] {
				return fmt.Errorf("claimed KeyPackage %s handed out again after kill -9", kp.Ref)
			}
		}
	}
	return nil
}
