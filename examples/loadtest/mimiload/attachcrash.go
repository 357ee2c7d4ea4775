package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// attachcrash: kill -9 of Caddy during a stream of concurrent attachment
// uploads, then a restart on the same data directory and a check of what
// the uploaders recorded and of what is on disk. See
// examples/loadtest/README.md.

type attachCrashFlags struct {
	dir, addr, caddy, config, log string
	rounds, conc                  int
	minSize, maxSize              int64
	killMin, killMax              time.Duration
	sweepWait                     time.Duration
	truncate                      bool
}

// attachRound is one round's counts (or their sum).
type attachRound struct {
	Round          int   `json:"round"`
	KilledAfterMs  int64 `json:"killed_after_ms"`
	Started        int   `json:"started"`
	Acknowledged   int   `json:"acknowledged"`
	Verified       int   `json:"verified"`
	Lost           int   `json:"lost"`
	Refused        int   `json:"refused"`
	Unanswered     int   `json:"unanswered"`
	AckedBytes     int64 `json:"acknowledged_bytes"`
	TmpAtKill      int   `json:"tmp_files_at_kill"`
	TmpSwept       int   `json:"tmp_files_swept"`
	TmpLeft        int   `json:"tmp_files_left"`
	Objects        int   `json:"objects_on_disk"`
	ObjectsUnacked int   `json:"objects_of_unacknowledged_uploads"`
	ObjectsBad     int   `json:"objects_partial_or_unknown"`
}

func (r *attachRound) add(o *attachRound) {
	r.Started += o.Started
	r.Acknowledged += o.Acknowledged
	r.Verified += o.Verified
	r.Lost += o.Lost
	r.Refused += o.Refused
	r.Unanswered += o.Unanswered
	r.AckedBytes += o.AckedBytes
	r.TmpAtKill += o.TmpAtKill
	r.TmpSwept += o.TmpSwept
	r.TmpLeft += o.TmpLeft
	r.Objects = o.Objects
	r.ObjectsUnacked = o.ObjectsUnacked
	r.ObjectsBad += o.ObjectsBad
}

func (r *attachRound) print() {
	name := fmt.Sprintf("round %d (killed after %d ms)", r.Round, r.KilledAfterMs)
	if r.Round == 0 {
		name = "total"
	}
	fmt.Printf("%s: uploads started %d, acknowledged %d (%.1f MiB), verified %d, lost %d; refused %d, unanswered %d; "+
		"temporary files at the kill %d, swept %d, left %d; objects on disk %d (of unacknowledged uploads %d), partial or unknown %d\n",
		name, r.Started, r.Acknowledged, float64(r.AckedBytes)/(1<<20), r.Verified, r.Lost, r.Refused, r.Unanswered,
		r.TmpAtKill, r.TmpSwept, r.TmpLeft, r.Objects, r.ObjectsUnacked, r.ObjectsBad)
	b, _ := json.Marshal(r)
	fmt.Printf("CRASH %s\n", b)
}

// upload is one attempted upload: its content is the ChaCha8 stream of
// seed, size bytes long, whose SHA-256 is sum.
type upload struct {
	seed  [32]byte
	size  int64
	sum   []byte
	token []byte // set once acknowledged
}

// content returns a reader of the upload's bytes.
func (u *upload) content() io.Reader { return io.LimitReader(rand.NewChaCha8(u.seed), u.size) }

// attachCrashCmd kills Caddy with SIGKILL while -c uploaders send distinct
// random attachments, restarts it on the same data directory, and checks:
//
//   - every acknowledged upload (200 with a token) downloads whole and
//     hashes to what was sent (lost, which must be 0, counts the others);
//   - every object file in b's local backend (objects/) hashes to the
//     content of an upload that was started, with its size: nothing
//     partial is stored where a record can point (an unacknowledged upload
//     may have been committed, but then whole);
//   - the temporary files of the uploads cut off by the kill are removed
//     by the sweeper after the restart. They are aged by two hours before
//     the restart (the sweeper removes only temporary files older than the
//     upload deadline, 1 h by default), as if Caddy had come back that
//     much later; the sweeper's first run is 1 s after the start.
func attachCrashCmd(args []string) error {
	var f attachCrashFlags
	fs := flag.NewFlagSet("attachcrash", flag.ExitOnError)
	fs.StringVar(&f.dir, "dir", "", "directory of setup and of the providers' data dirs (required)")
	fs.StringVar(&f.addr, "addr", "127.0.0.1:19443", "loopback address Caddy serves both providers on")
	fs.StringVar(&f.caddy, "caddy", "./caddy", "Caddy binary")
	fs.StringVar(&f.config, "config", "", "Caddyfile (required)")
	fs.StringVar(&f.log, "log", "", "file Caddy's output is appended to (default: discarded)")
	fs.IntVar(&f.rounds, "rounds", 3, "kill/restart rounds")
	fs.IntVar(&f.conc, "c", 8, "concurrent uploaders")
	fs.Int64Var(&f.minSize, "min-size", 64<<10, "smallest attachment, bytes")
	fs.Int64Var(&f.maxSize, "max-size", 8<<20, "largest attachment, bytes")
	fs.DurationVar(&f.killMin, "kill-min", time.Second, "earliest kill after the uploads start")
	fs.DurationVar(&f.killMax, "kill-max", 3*time.Second, "latest kill after the uploads start")
	fs.DurationVar(&f.sweepWait, "sweep-wait", 20*time.Second, "how long to wait for the sweeper to remove the aged temporary files")
	fs.BoolVar(&f.truncate, "truncate-objects", false, "self-check: cut every stored object to half its size after each kill, so the check must report every acknowledged upload lost and the objects partial")
	fs.Parse(args)
	if f.dir == "" || f.config == "" {
		return errors.New("attachcrash: -dir and -config are required")
	}
	if f.killMax < f.killMin || f.maxSize < f.minSize || f.minSize < 1 {
		return errors.New("attachcrash: -kill-max before -kill-min, or bad sizes")
	}
	t, err := newTarget(f.dir, f.addr, f.conc)
	if err != nil {
		return err
	}
	t.client.Timeout = 0
	c := &caddyProc{bin: f.caddy, config: f.config, logPath: f.log}
	if err := c.start(); err != nil {
		return err
	}
	defer c.stop()
	ctx := context.Background()
	if err := t.waitHealthy(ctx, 60*time.Second); err != nil {
		return err
	}
	m, err := newAttachMember(ctx, t, "crash")
	if err != nil {
		return err
	}
	root := filepath.Join(f.dir, "b", "attachments")
	var total attachRound
	var started []*upload // every upload started, all rounds
	for round := 1; round <= f.rounds; round++ {
		r, ups, err := attachCrashRound(ctx, m, c, &f, root, round, started)
		if err != nil {
			return fmt.Errorf("round %d: %w", round, err)
		}
		started = append(started, ups...)
		r.print()
		total.add(r)
	}
	total.print()
	switch {
	case total.Lost > 0 || total.ObjectsBad > 0:
		return errors.New("attachcrash: an acknowledged attachment was lost or a partial object is stored (see above)")
	case total.TmpLeft > 0:
		return errors.New("attachcrash: the sweeper left temporary files of cut-off uploads")
	case total.Acknowledged == 0:
		return errors.New("attachcrash: nothing was acknowledged before a kill; the test proved nothing")
	}
	return nil
}

// attachCrashRound runs one round; before holds the uploads of the
// earlier rounds, for the check of the objects on disk.
func attachCrashRound(ctx context.Context, m *attachMember, c *caddyProc, f *attachCrashFlags, root string,
	round int, before []*upload) (*attachRound, []*upload, error) {
	r := &attachRound{Round: round}
	loadCtx, stopLoad := context.WithCancel(ctx)
	var (
		mu      sync.Mutex
		ups     []*upload
		refused []string
		wg      sync.WaitGroup
	)
	start := time.Now()
	for range f.conc {
		wg.Go(func() {
			for loadCtx.Err() == nil {
				u := &upload{size: f.minSize + rand.Int64N(f.maxSize-f.minSize+1)}
				crand.Read(u.seed[:])
				h := sha256.New()
				io.Copy(h, u.content())
				u.sum = h.Sum(nil)
				mu.Lock()
				ups = append(ups, u)
				mu.Unlock()
				token, err := m.upload(loadCtx, u.content(), u.size, u.sum)
				mu.Lock()
				var ue *uploadError
				switch {
				case err == nil:
					u.token = token
				case errors.As(err, &ue):
					refused = append(refused, err.Error())
				}
				mu.Unlock()
			}
		})
	}
	kill := f.killMin + rand.N(f.killMax-f.killMin+1)
	time.Sleep(kill)
	if err := c.kill(); err != nil {
		stopLoad()
		return nil, nil, err
	}
	r.KilledAfterMs = time.Since(start).Milliseconds()
	stopLoad()
	wg.Wait()
	r.Started = len(ups)
	for _, u := range ups {
		if u.token != nil {
			r.Acknowledged++
			r.AckedBytes += u.size
		}
	}
	r.Refused = len(refused)
	r.Unanswered = r.Started - r.Acknowledged - r.Refused
	if len(refused) > 0 {
		fmt.Printf("# round %d: %d uploads refused, e.g. %s\n", round, len(refused), refused[0])
	}

	// Age the temporary files the kill left, so that the first sweep
	// after the restart must remove them.
	tmp, err := tmpFiles(root)
	if err != nil {
		return nil, nil, err
	}
	r.TmpAtKill = len(tmp)
	old := time.Now().Add(-2 * time.Hour)
	for _, p := range tmp {
		if err := os.Chtimes(p, old, old); err != nil {
			return nil, nil, fmt.Errorf("ageing %s: %w", p, err)
		}
	}

	if f.truncate {
		err := filepath.WalkDir(filepath.Join(root, "objects"), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			return os.Truncate(p, info.Size()/2)
		})
		if err != nil {
			return nil, nil, fmt.Errorf("truncating the objects: %w", err)
		}
	}
	if err := c.start(); err != nil {
		return nil, nil, err
	}
	if err := m.t.waitHealthy(ctx, 60*time.Second); err != nil {
		return nil, nil, err
	}
	// Every acknowledged upload downloads whole and intact.
	for _, u := range ups {
		if u.token == nil {
			continue
		}
		h := newHashingDiscard()
		n, err := m.download(ctx, u.token, h)
		if err != nil || n != u.size || !bytes.Equal(h.sum(), u.sum) {
			r.Lost++
			fmt.Printf("# round %d: LOST an acknowledged upload of %d bytes: %d bytes back, err %v\n", round, u.size, n, err)
			continue
		}
		r.Verified++
	}
	// Every stored object is the whole content of an upload started.
	known := map[string]*upload{}
	for _, u := range append(before, ups...) {
		known[hex.EncodeToString(u.sum)] = u
	}
	acked := map[string]bool{}
	for _, u := range append(before, ups...) {
		if u.token != nil {
			acked[hex.EncodeToString(u.sum)] = true
		}
	}
	err = filepath.WalkDir(filepath.Join(root, "objects"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		r.Objects++
		sum, size, err := hashFile(p)
		if err != nil {
			return err
		}
		u, ok := known[sum]
		switch {
		case !ok || u.size != size:
			r.ObjectsBad++
			fmt.Printf("# round %d: object %s (%d bytes) is no upload's whole content\n", round, d.Name(), size)
		case !acked[sum]:
			r.ObjectsUnacked++
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("checking the stored objects: %w", err)
	}
	// The sweeper removes the aged temporary files.
	deadline := time.Now().Add(f.sweepWait)
	for {
		left := 0
		for _, p := range tmp {
			if _, err := os.Stat(p); err == nil {
				left++
			}
		}
		r.TmpSwept, r.TmpLeft = len(tmp)-left, left
		if left == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	return r, ups, nil
}

// tmpFiles lists the local backend's temporary upload files under root.
func tmpFiles(root string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(root, "tmp"))
	if err != nil {
		return nil, fmt.Errorf("listing temporary files: %w", err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "up-") {
			out = append(out, filepath.Join(root, "tmp", e.Name()))
		}
	}
	return out, nil
}

// hashFile returns the hex SHA-256 and the size of the file at p.
func hashFile(p string) (string, int64, error) {
	file, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer file.Close()
	h := sha256.New()
	n, err := io.Copy(h, file)
	if err != nil {
		return "", 0, fmt.Errorf("hashing %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
