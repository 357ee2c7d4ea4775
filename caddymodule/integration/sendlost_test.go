package integration

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/cmd/mimictl/cli"
	mimiclient "github.com/caddy-mimi/caddy-mimi/mimicore/client"
)

// errAnswerLost is what answerLoser returns for an answer it drops.
var errAnswerLost = errors.New("connection reset after the request was sent (test)")

// answerLoser is a client's transport to the real gateway that loses
// answers: the request goes through and the gateway carries it out and
// answers, but while lose is above zero the answer to a /group_operation
// is read and dropped and the client gets a connection error instead, as
// when a connection resets (or a proxy times out) after the hub accepted.
// While drop is above zero, a /group_operation request is not sent at
// all and the client gets the same connection error: the hub never saw
// it.
type answerLoser struct {
	rt         http.RoundTripper
	mu         sync.Mutex
	lose, drop int
}

// RoundTrip implements http.RoundTripper.
func (l *answerLoser) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == "/group_operation" {
		l.mu.Lock()
		drop := l.drop > 0
		if drop {
			l.drop--
		}
		l.mu.Unlock()
		if drop {
			if r.Body != nil {
				r.Body.Close()
			}
			return nil, errAnswerLost
		}
	}
	resp, err := l.rt.RoundTrip(r)
	if err != nil || r.URL.Path != "/group_operation" {
		return resp, err
	}
	l.mu.Lock()
	lose := l.lose > 0
	if lose {
		l.lose--
	}
	l.mu.Unlock()
	if !lose {
		return resp, nil
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return nil, errAnswerLost
}

// setDrop makes the next n requests to /group_operation fail unsent.
func (l *answerLoser) setDrop(n int) {
	l.mu.Lock()
	l.drop = n
	l.mu.Unlock()
}

// setLose makes the next n answers to /group_operation lost.
func (l *answerLoser) setLose(n int) {
	l.mu.Lock()
	l.lose = n
	l.mu.Unlock()
}

// losingHTTP returns an HTTP client for the test gateway whose answers l
// may lose.
func losingHTTP() (*http.Client, *answerLoser) {
	hc := clientHTTP()
	l := &answerLoser{rt: hc.Transport}
	return &http.Client{Transport: l}, l
}

// reopenLosing closes c and opens its state again with an HTTP client
// that may lose answers.
func reopenLosing(t *testing.T, c *mimiclient.Client, user string) (*mimiclient.Client, *answerLoser) {
	t.Helper()
	dir := c.Dir()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	cfg := clientConfig(user)
	hc, l := losingHTTP()
	cfg.HTTPClient = hc
	c, err := mimiclient.Open(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, l
}

// messagesUntil has c receive until it got an application message with
// text last, and returns the texts of the application messages it got, in
// order, and how many queued messages it skipped (such as a second copy
// of a message, whose key is used up).
func messagesUntil(t *testing.T, c *mimiclient.Client, last string) ([]string, int) {
	t.Helper()
	var texts []string
	skipped := 0
	for tries := 0; tries < 10; tries++ {
		evs, err := c.Receive(t.Context(), 5*time.Second)
		if err != nil {
			t.Fatalf("%s receives: %v", c.URI(), err)
		}
		done := false
		for _, ev := range evs {
			switch ev.Kind {
			case mimiclient.EventMessage:
				texts = append(texts, string(ev.Data))
				done = done || string(ev.Data) == last
			case mimiclient.EventSkipped:
				skipped++
			}
		}
		if done {
			return texts, skipped
		}
	}
	t.Fatalf("%s never got %q; got %q", c.URI(), last, texts)
	return nil, 0
}

// TestGoClientSendAnswerLost: the Delivery Service takes alice's message
// but its answer is lost. Retrying the send, at once or after reopening
// her state, must not give bob the text twice: the kept request is sent
// again byte for byte, not encrypted again, and the hub, which delivered
// it already, answers ok and delivers no copy to bob's queue, also when
// bob committed in between, so that the resend's epoch is gone; a new
// message goes out only after the kept one.
func TestGoClientSendAnswerLost(t *testing.T) {
	for _, tc := range []struct {
		name string
		// then is what alice does after the lost answer: "retry" sends
		// the same text again, "next" sends another text, "reopen"
		// reopens her state first and retries, "lost again" loses the
		// retry's answer too, then retries; "commit" has bob commit
		// (update_client) before alice retries.
		then string
		want []string
	}{
		{"retry", "retry", []string{"hello once", "after"}},
		{"next message", "next", []string{"hello once", "another", "after"}},
		{"reopened", "reopen", []string{"hello once", "after"}},
		{"lost again", "lost again", []string{"hello once", "after"}},
		{"after a commit", "commit", []string{"after"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			alice, bob, gid := goClientPair(t, "lost"+strings.ReplaceAll(tc.then, " ", ""))
			ctx := t.Context()
			alice, loser := reopenLosing(t, alice, "alice")
			loser.setLose(1)
			if err := alice.Send(ctx, gid, []byte("hello once")); !errors.Is(err, errAnswerLost) {
				t.Fatalf("a send whose answer was lost: %v", err)
			}
			switch tc.then {
			case "retry":
				if err := alice.Send(ctx, gid, []byte("hello once")); err != nil {
					t.Fatalf("retrying the send: %v", err)
				}
			case "next":
				if err := alice.Send(ctx, gid, []byte("another")); err != nil {
					t.Fatalf("the next send: %v", err)
				}
			case "reopen":
				alice, _ = reopenLosing(t, alice, "alice")
				if err := alice.Send(ctx, gid, []byte("hello once")); err != nil {
					t.Fatalf("retrying the send from the reopened state: %v", err)
				}
			case "lost again":
				loser.setLose(1)
				if err := alice.Send(ctx, gid, []byte("hello once")); !errors.Is(err, errAnswerLost) {
					t.Fatalf("a retry whose answer was lost too: %v", err)
				}
				if err := alice.Send(ctx, gid, []byte("hello once")); err != nil {
					t.Fatalf("retrying the send again: %v", err)
				}
			case "commit":
				if got, _ := messagesUntil(t, bob, "hello once"); !slices.Equal(got, []string{"hello once"}) {
					t.Fatalf("bob got %q before his commit, want the message alice sent", got)
				}
				if err := bob.Update(ctx, gid); err != nil {
					t.Fatalf("bob's update: %v", err)
				}
				if err := alice.Send(ctx, gid, []byte("hello once")); err != nil {
					t.Fatalf("retrying the send after bob's commit: %v", err)
				}
				expectEvent(t, "alice", receive(t, alice, 1)[0], mimiclient.EventCommit, gid, "", "")
			}
			if err := alice.Send(ctx, gid, []byte("after")); err != nil {
				t.Fatal(err)
			}
			got, skipped := messagesUntil(t, bob, "after")
			if !slices.Equal(got, tc.want) || skipped != 0 {
				t.Fatalf("bob got %q and skipped %d queued messages; want %q and none skipped", got, skipped, tc.want)
			}
		})
	}
}

// TestMimictlSendAnswerLost: `mimictl send` whose answer is lost fails
// with exit status 4; running the same send again resends the kept
// message, says so on stderr and exits 0, and bob prints the text once
// and skips no second copy (the hub delivered the resent one to no one).
func TestMimictlSendAnswerLost(t *testing.T) {
	startClientSite(t)
	dir := t.TempDir()
	hc, loser := losingHTTP()
	run := mimictlAs(t, dir, hc)
	run("alice", "alice", 0, "client", "init", "mimi://m.localhost/d/alice/cli")
	run("bob", "bob", 0, "client", "init", "mimi://m.localhost/d/bob/cli")
	out, _ := run("alice", "alice", 0, "group", "create")
	gid := strings.TrimSpace(out)
	run("alice", "alice", 0, "group", "add", gid, "mimi://m.localhost/u/bob")
	run("bob", "bob", 0, "recv", "-wait", "5s")

	loser.setLose(1)
	if _, stderr := run("alice", "alice", 4, "send", gid, "hello", "once"); !strings.Contains(stderr, "kept") {
		t.Fatalf("a send whose answer was lost said %q", stderr)
	}
	if _, stderr := run("alice", "alice", 0, "send", gid, "hello", "once"); !strings.Contains(stderr, "resent") {
		t.Fatalf("the retried send said %q; want it to say it resent the kept message", stderr)
	}
	run("alice", "alice", 0, "send", gid, "after")
	var got []string
	var errs strings.Builder
	for tries := 0; tries < 10 && !slices.Contains(got, "after"); tries++ {
		out, stderr := run("bob", "bob", 0, "recv", "-wait", "5s")
		errs.WriteString(stderr)
		got = append(got, printedMessages(out)...)
	}
	if want := []string{"hello once", "after"}; !slices.Equal(got, want) || strings.Contains(errs.String(), "skipped") {
		t.Fatalf("bob printed %q, and on stderr %q; want %q and nothing skipped", got, errs.String(), want)
	}
}

// TestMimictlResendAfterCommit: alice's send fails before the hub saw
// it (exit 4, kept), bob commits, and alice's retry resends the kept
// message: the hub refuses it 409 stale_epoch, and since it answers the
// resend of a message it delivered ok even after a commit, mimictl says
// (exit 5) that the message was not delivered and may be sent again,
// which alice does after recv; bob gets it once. Whereas a send whose
// answer alone was lost, the hub having delivered it, is resent after
// bob's next commit with an ok (exit 0), and bob gets it once.
func TestMimictlResendAfterCommit(t *testing.T) {
	startClientSite(t)
	dir := t.TempDir()
	hc, loser := losingHTTP()
	run := mimictlAs(t, dir, hc)
	var got []string
	var errs strings.Builder
	bobRecv := func() {
		t.Helper()
		out, stderr := run("bob", "bob", 0, "recv", "-wait", "5s")
		errs.WriteString(stderr)
		got = append(got, printedMessages(out)...)
	}
	run("alice", "alice", 0, "client", "init", "mimi://m.localhost/d/alice/cli")
	run("bob", "bob", 0, "client", "init", "mimi://m.localhost/d/bob/cli")
	out, _ := run("alice", "alice", 0, "group", "create")
	gid := strings.TrimSpace(out)
	run("alice", "alice", 0, "group", "add", gid, "mimi://m.localhost/u/bob")
	run("bob", "bob", 0, "recv", "-wait", "5s")

	loser.setDrop(1)
	run("alice", "alice", 4, "send", gid, "never", "sent")
	run("bob", "bob", 0, "group", "update", gid)
	_, stderr := run("alice", "alice", 5, "send", gid, "never", "sent")
	if !strings.Contains(stderr, "was not delivered by a hub that remembers the messages it delivered") || strings.Contains(stderr, "check with the recipients") {
		t.Fatalf("the resend refused with stale_epoch said %q", stderr)
	}
	run("alice", "alice", 0, "recv", "-wait", "5s")
	run("alice", "alice", 0, "send", gid, "never", "sent")

	loser.setLose(1)
	run("alice", "alice", 4, "send", gid, "delivered")
	bobRecv()
	run("bob", "bob", 0, "group", "update", gid)
	run("alice", "alice", 0, "send", gid, "delivered")
	run("alice", "alice", 0, "recv", "-wait", "5s")
	run("alice", "alice", 0, "send", gid, "after")

	for tries := 0; tries < 10 && !slices.Contains(got, "after"); tries++ {
		bobRecv()
	}
	if want := []string{"never sent", "delivered", "after"}; !slices.Equal(got, want) || strings.Contains(errs.String(), "skipped") {
		t.Fatalf("bob printed %q, and on stderr %q; want %q", got, errs.String(), want)
	}
}

// mimictlAs returns a function that runs mimictl as user (with the
// user's password) on the state directory state under dir, over hc, and
// requires its exit status to be wantStatus; it returns what mimictl
// printed on stdout and stderr.
func mimictlAs(t *testing.T, dir string, hc *http.Client) func(user, state string, wantStatus int, args ...string) (string, string) {
	return func(user, state string, wantStatus int, args ...string) (string, string) {
		t.Helper()
		environ := map[string]string{"MIMI_GATEWAY": "https://m.localhost:9443", "MIMI_USER": user,
			"MIMI_PASSWORD": clientUsers[user], "MIMI_STATE": filepath.Join(dir, state)}
		var stdout, stderr bytes.Buffer
		status := cli.Run(t.Context(), args, cli.Env{Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr,
			Getenv: func(k string) string { return environ[k] }, HTTPClient: hc})
		if status != wantStatus {
			t.Fatalf("mimictl %v (%s): exit %d, want %d: %s", args, state, status, wantStatus, stderr.String())
		}
		return stdout.String(), stderr.String()
	}
}

// printedMessages returns the texts of the message lines that mimictl
// recv printed in out.
func printedMessages(out string) []string {
	var texts []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Split(line, "\t"); len(f) == 4 && f[0] == "message" {
			texts = append(texts, f[3])
		}
	}
	return texts
}
