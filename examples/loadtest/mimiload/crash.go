package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

type crashFlags struct {
	dir, addr, caddy, config, log string
	rounds, conc, pool, tokens    int
	control                       int
	killMin, killMax              time.Duration
	mint                          string
	wipe                          bool
}

// crashCmd kills Caddy with SIGKILL while signed and token load runs,
// restarts it on the same data directories and checks, from what the
// generator recorded, that every acknowledged write survived:
//
//   - a signed request that got its 404 before the kill: the same
//     request_id with other bytes (another payload, signed afresh with the
//     same timestamp) must get 409 replay, which only a surviving record
//     can cause (every fresh request is answered 404, so identical
//     answer bytes alone prove nothing); then the byte-identical request
//     must get exactly the recorded answer bytes. The other-bytes probe
//     goes first: had the record been lost, the identical retry would be
//     processed afresh and write a record the probe would then hit.
//   - a token that got its 200 before the kill must be refused (401
//     token_required, refusal reason replay) when presented again; control
//     tokens minted from the same challenge but never sent must still be
//     accepted, so the refusals are double-spend refusals, not an expired
//     challenge.
//
// Requests in flight at the kill (no answer) are retried too and their
// answers counted, for information: they may or may not have been
// processed.
func crashCmd(args []string) error {
	var f crashFlags
	fs := flag.NewFlagSet("crash", flag.ExitOnError)
	fs.StringVar(&f.dir, "dir", "", "directory of setup and of the providers' data dirs (required)")
	fs.StringVar(&f.addr, "addr", "127.0.0.1:19443", "loopback address Caddy serves both providers on")
	fs.StringVar(&f.caddy, "caddy", "./caddy", "Caddy binary")
	fs.StringVar(&f.config, "config", "", "Caddyfile (required)")
	fs.StringVar(&f.log, "log", "", "file Caddy's output is appended to (default: discarded)")
	fs.IntVar(&f.rounds, "rounds", 3, "kill/restart rounds")
	fs.IntVar(&f.conc, "c", 64, "concurrent requests, split between signed and token load")
	fs.IntVar(&f.pool, "pool", 20000, "signed requests prepared per round")
	fs.IntVar(&f.tokens, "tokens", 10000, "tokens minted per round")
	fs.IntVar(&f.control, "control", 32, "tokens per round that are never sent before the kill")
	fs.DurationVar(&f.killMin, "kill-min", time.Second, "earliest kill after the load starts")
	fs.DurationVar(&f.killMax, "kill-max", 3*time.Second, "latest kill after the load starts")
	fs.StringVar(&f.mint, "mint", "direct", "how tokens are minted: direct or blind (see bench)")
	fs.BoolVar(&f.wipe, "wipe-store", false, "self-check: delete b's SQLite store after each kill, so the check must report every acknowledged write lost")
	fs.Parse(args)
	if f.dir == "" || f.config == "" {
		return errors.New("crash: -dir and -config are required")
	}
	if f.killMax < f.killMin {
		return errors.New("crash: -kill-max is before -kill-min")
	}
	t, err := newTarget(f.dir, f.addr, f.conc)
	if err != nil {
		return err
	}
	c := &caddyProc{bin: f.caddy, config: f.config, logPath: f.log}
	if err := c.start(); err != nil {
		return err
	}
	defer c.stop()
	ctx := context.Background()
	if err := t.waitHealthy(ctx, 60*time.Second); err != nil {
		return err
	}
	var total roundResult
	for round := 1; round <= f.rounds; round++ {
		r, err := crashRound(ctx, t, c, &f, round)
		if err != nil {
			return fmt.Errorf("round %d: %w", round, err)
		}
		r.print()
		total.add(r)
	}
	total.Round = 0
	fmt.Print("total: ")
	total.print()
	if total.SignedLost+total.TokenLost+total.Inconclusive+total.ControlRefused > 0 {
		return errors.New("crash: acknowledged writes were lost or could not be checked (see above)")
	}
	if total.SignedAcked == 0 || total.TokenAcked == 0 {
		return errors.New("crash: nothing was acknowledged before a kill; the test proved nothing")
	}
	return nil
}

// caddyProc is the Caddy under test, run as a child process.
type caddyProc struct {
	bin, config, logPath string
	cmd                  *exec.Cmd
	logf                 *os.File
}

func (c *caddyProc) start() error {
	c.cmd = exec.Command(c.bin, "run", "--config", c.config, "--adapter", "caddyfile")
	if c.logPath != "" {
		f, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		c.logf = f
		c.cmd.Stdout, c.cmd.Stderr = f, f
	}
	if err := c.cmd.Start(); err != nil {
		return fmt.Errorf("starting caddy: %w", err)
	}
	return nil
}

// kill sends SIGKILL (kill -9) and reaps the process.
func (c *caddyProc) kill() error {
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("killing caddy: %w", err)
	}
	c.cmd.Wait()
	c.cmd = nil
	if c.logf != nil {
		c.logf.Close()
		c.logf = nil
	}
	return nil
}

// stop ends Caddy with SIGTERM (SIGKILL after 10 s).
func (c *caddyProc) stop() {
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
	c.cmd = nil
	if c.logf != nil {
		c.logf.Close()
	}
}

// roundResult is one round's counts (or their sum).
type roundResult struct {
	Round          int            `json:"round"`
	KillPlannedMs  int64          `json:"kill_planned_ms"`
	KilledAfterMs  int64          `json:"killed_after_ms"`
	SignedSent     int            `json:"signed_sent"`
	SignedAcked    int            `json:"signed_acked"`
	SignedChecked  int            `json:"signed_checked"`
	SignedLost     int            `json:"signed_lost"`
	TokenSent      int            `json:"token_sent"`
	TokenAcked     int            `json:"token_acked"`
	TokenChecked   int            `json:"token_checked"`
	TokenLost      int            `json:"token_lost"`
	ControlOK      int            `json:"control_ok"`
	ControlRefused int            `json:"control_refused"`
	Inconclusive   int            `json:"inconclusive"`
	InFlight       map[string]int `json:"in_flight_after_restart,omitempty"`
	Samples        []string       `json:"samples,omitempty"`
}

func (r *roundResult) add(o *roundResult) {
	r.SignedSent += o.SignedSent
	r.SignedAcked += o.SignedAcked
	r.SignedChecked += o.SignedChecked
	r.SignedLost += o.SignedLost
	r.TokenSent += o.TokenSent
	r.TokenAcked += o.TokenAcked
	r.TokenChecked += o.TokenChecked
	r.TokenLost += o.TokenLost
	r.ControlOK += o.ControlOK
	r.ControlRefused += o.ControlRefused
	r.Inconclusive += o.Inconclusive
	for k, v := range o.InFlight {
		if r.InFlight == nil {
			r.InFlight = map[string]int{}
		}
		r.InFlight[k] += v
	}
}

func (r *roundResult) print() {
	if r.Round > 0 {
		fmt.Printf("round %d: killed %d ms into the load; ", r.Round, r.KilledAfterMs)
	}
	fmt.Printf("signed: sent %d, acknowledged %d, checked %d, lost %d; tokens: sent %d, acknowledged %d, checked %d, lost %d; control tokens accepted %d, refused %d; inconclusive %d\n",
		r.SignedSent, r.SignedAcked, r.SignedChecked, r.SignedLost, r.TokenSent, r.TokenAcked, r.TokenChecked, r.TokenLost,
		r.ControlOK, r.ControlRefused, r.Inconclusive)
	if len(r.InFlight) > 0 {
		var parts []string
		for k, v := range r.InFlight {
			parts = append(parts, fmt.Sprintf("%s %d", k, v))
		}
		slices.Sort(parts)
		fmt.Printf("  in flight at the kill, answered after the restart (information): %s\n", strings.Join(parts, ", "))
	}
	for _, s := range r.Samples {
		fmt.Printf("  %s\n", s)
	}
	line, _ := json.Marshal(r)
	fmt.Printf("CRASH %s\n", line)
}

// record is what the generator saw of one request before the kill.
type record struct {
	sent   bool
	acked  bool
	answer []byte
}

func crashRound(ctx context.Context, t *target, c *caddyProc, f *crashFlags, round int) (*roundResult, error) {
	s, err := defaultSigner(f.dir)
	if err != nil {
		return nil, err
	}
	gkp := t.url("b.localhost", "/connection_request")
	// Make b fetch a's keys before the load (the cache survives restarts).
	warm, err := s.fresh()
	if err != nil {
		return nil, err
	}
	if a := t.do(ctx, http.MethodPost, gkp, warm.raw, nil); a.err != nil || a.status != http.StatusNotFound {
		return nil, fmt.Errorf("warm-up signed request: got %s (%q), %v", describe(a), dsMessage(a), a.err)
	}
	pool, err := s.pool(f.pool)
	if err != nil {
		return nil, err
	}
	m, err := newMinter(f.dir, f.mint)
	if err != nil {
		return nil, err
	}
	ch, err := m.challenge(ctx, t)
	if err != nil {
		return nil, err
	}
	all, err := m.tokens(ch, f.tokens+f.control)
	if err != nil {
		return nil, err
	}
	toks, control := all[:f.tokens], all[f.tokens:]
	tokURL := t.url("b.localhost", tokenPath)

	sigRec := make([]record, len(pool))
	tokRec := make([]record, len(toks))
	var mu sync.Mutex // guards the records
	// Set just before the kill: no request starts after it, so "sent"
	// counts requests that were on their way or answered, not the ones
	// refused by a dead listener.
	var killing atomic.Bool
	loadCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	half := max(f.conc/2, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		t.run(loadCtx, "signed", http.StatusNotFound, runConfig{conc: half, duration: time.Minute,
			next: func(i int) (request, bool) {
				if i >= len(pool) || killing.Load() {
					return request{}, false
				}
				mu.Lock()
				sigRec[i].sent = true
				mu.Unlock()
				return request{method: http.MethodPost, url: gkp, body: pool[i].raw}, true
			},
			done: func(i int, a answer) {
				if a.err == nil && a.status == http.StatusNotFound {
					mu.Lock()
					sigRec[i].acked, sigRec[i].answer = true, a.body
					mu.Unlock()
				}
			},
		})
	})
	wg.Go(func() {
		t.run(loadCtx, "token", http.StatusOK, runConfig{conc: half, duration: time.Minute,
			next: func(i int) (request, bool) {
				if i >= len(toks) || killing.Load() {
					return request{}, false
				}
				mu.Lock()
				tokRec[i].sent = true
				mu.Unlock()
				return request{method: http.MethodGet, url: tokURL, header: map[string]string{"Authorization": toks[i]}}, true
			},
			done: func(i int, a answer) {
				if a.err == nil && a.status == http.StatusOK {
					mu.Lock()
					tokRec[i].acked = true
					mu.Unlock()
				}
			},
		})
	})
	start := time.Now()
	wait := f.killMin + rand.N(f.killMax-f.killMin+1)
	time.Sleep(wait)
	killing.Store(true)
	if err := c.kill(); err != nil {
		return nil, err
	}
	killedAfter := time.Since(start)
	if f.wipe {
		for _, suffix := range []string{"", "-wal", "-shm", "-journal"} {
			if err := os.Remove(filepath.Join(f.dir, "b", "mimi.db"+suffix)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, err
			}
		}
	}
	// Answers already received count as acknowledged; nothing can arrive
	// from a dead process, so stop the workers.
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()

	if err := c.start(); err != nil {
		return nil, err
	}
	t.client.CloseIdleConnections()
	if err := t.waitHealthy(ctx, 60*time.Second); err != nil {
		return nil, fmt.Errorf("after restart: %w", err)
	}

	r := &roundResult{Round: round, KillPlannedMs: wait.Milliseconds(), KilledAfterMs: killedAfter.Milliseconds(), InFlight: map[string]int{}}
	var rmu sync.Mutex
	sample := func(format string, args ...any) {
		if len(r.Samples) < 5 {
			r.Samples = append(r.Samples, fmt.Sprintf(format, args...))
		}
	}
	now := uint64(time.Now().Unix())
	parallel(len(pool), f.conc, func(i int) {
		rec, req := sigRec[i], pool[i]
		if !rec.sent {
			return
		}
		if !rec.acked {
			a := t.do(ctx, http.MethodPost, gkp, req.raw, nil)
			rmu.Lock()
			r.SignedSent++
			r.InFlight["signed "+describe(a)]++
			rmu.Unlock()
			return
		}
		if req.timestamp+300 <= now {
			rmu.Lock()
			r.SignedSent++
			r.SignedAcked++
			r.Inconclusive++
			sample("signed %x: timestamp already outside the 300 s window", req.id)
			rmu.Unlock()
			return
		}
		other, err := s.sign(req.id, req.timestamp, 1)
		var probe, retry answer
		if err == nil {
			probe = t.do(ctx, http.MethodPost, gkp, other, nil)
			retry = t.do(ctx, http.MethodPost, gkp, req.raw, nil)
		}
		rmu.Lock()
		defer rmu.Unlock()
		r.SignedSent++
		r.SignedAcked++
		switch {
		case err != nil:
			r.Inconclusive++
			sample("signed %x: signing the probe: %v", req.id, err)
		case probe.err == nil && probe.status == http.StatusNotFound:
			r.SignedLost++
			sample("LOST signed %x: the same id with other bytes was processed afresh (404)", req.id)
		case !isDSError(probe, http.StatusConflict, moh.CodeReplay):
			r.Inconclusive++
			sample("signed %x: the same id with other bytes got %s, want 409 replay", req.id, describe(probe))
		case retry.err != nil || retry.status != http.StatusNotFound || !bytes.Equal(retry.body, rec.answer):
			r.SignedLost++
			sample("LOST signed %x: the identical retry got %s, not the recorded answer", req.id, describe(retry))
		default:
			r.SignedChecked++
		}
	})
	parallel(len(toks), f.conc, func(i int) {
		rec := tokRec[i]
		if !rec.sent {
			return
		}
		a := t.do(ctx, http.MethodGet, tokURL, nil, map[string]string{"Authorization": toks[i]})
		rmu.Lock()
		defer rmu.Unlock()
		r.TokenSent++
		if !rec.acked {
			r.InFlight["token "+describe(a)]++
			return
		}
		r.TokenAcked++
		switch {
		case a.err == nil && a.status == http.StatusOK:
			r.TokenLost++
			sample("LOST token %d: accepted again after the restart", i)
		case isDSError(a, http.StatusUnauthorized, moh.CodeTokenRequired) && strings.HasSuffix(dsMessage(a), ": replay"):
			r.TokenChecked++
		default:
			r.Inconclusive++
			sample("token %d: presented again got %s, want 401 refused as replay", i, describe(a))
		}
	})
	parallel(len(control), f.conc, func(i int) {
		a := t.do(ctx, http.MethodGet, tokURL, nil, map[string]string{"Authorization": control[i]})
		rmu.Lock()
		defer rmu.Unlock()
		if a.err == nil && a.status == http.StatusOK {
			r.ControlOK++
		} else {
			r.ControlRefused++
			sample("control token %d: got %s, want 200", i, describe(a))
		}
	})
	return r, nil
}

// isDSError reports whether a is an error answer of status with code.
func isDSError(a answer, status int, code moh.Code) bool {
	if a.err != nil || a.status != status {
		return false
	}
	resp, ok := decodeAnswer(a.body)
	return ok && resp.Type == moh.ResponseError && resp.Error.Code == code
}

// dsMessage returns the DSError message of an error answer. The protocol
// says receivers must not parse it; this test does, only to tell a
// double-spend refusal from an expired challenge.
func dsMessage(a answer) string {
	resp, ok := decodeAnswer(a.body)
	if !ok || resp.Type != moh.ResponseError {
		return ""
	}
	return string(resp.Error.Message)
}

// describe names an answer: its status and DSError code, or the error.
func describe(a answer) string {
	if a.err != nil {
		return "transport error"
	}
	if resp, ok := decodeAnswer(a.body); ok && resp.Type == moh.ResponseError {
		return fmt.Sprintf("%d %s", a.status, resp.Error.Code)
	}
	return fmt.Sprintf("%d", a.status)
}
