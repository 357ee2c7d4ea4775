package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/pgstore"
)

type benchFlags struct {
	dir      string
	addr     string
	modes    string
	conc     int
	duration time.Duration
	pool     int
	tokens   int
	mint     string
	slices   int
	metrics  string
	// recipients is the number of members besides the sender in the
	// send mode's group.
	recipients int
	// commits is the commit mode's number of commits per group (one
	// group per concurrent request), made before the run.
	commits int
	// sender signs the signed, retry and deliver modes' provider
	// requests with the key ring in senderKeys; receiver is the provider
	// they go to, whose DS hosts the send mode's group and whose site
	// serves /bare. receiverKeys, or the PostgreSQL store receiverStore
	// (a cluster's: the keys sealed under $MIMI_KEY_SECRET), holds the
	// receiver's key ring, which issues the send mode's client bindings.
	sender, senderKeys, receiver, receiverKeys, receiverStore string
	// cpuProfiles is the directory of the generator's CPU profiles
	// (-cpuprofiles).
	cpuProfiles string
}

// signer is the signer of f.sender's requests to f.receiver.
func (f *benchFlags) signer() (*signer, error) {
	return newSigner(f.senderKeys, f.sender, f.receiver)
}

// receiverRing loads the receiver's key ring: from its PostgreSQL store,
// read-only, when f.receiverStore names one, else from f.receiverKeys.
func (f *benchFlags) receiverRing(ctx context.Context) (*provider.KeyRing, error) {
	if f.receiverStore == "" {
		ring, err := provider.LoadKeyRing(f.receiverKeys)
		if err != nil {
			return nil, fmt.Errorf("loading %s's keys: %w", f.receiver, err)
		}
		return ring, nil
	}
	secret, err := provider.ParseKeySecret(os.Getenv("MIMI_KEY_SECRET"))
	if err != nil {
		return nil, fmt.Errorf("loading %s's keys: $MIMI_KEY_SECRET: %w", f.receiver, err)
	}
	sealer, err := provider.NewKeySealer(secret)
	if err != nil {
		return nil, fmt.Errorf("loading %s's keys: %w", f.receiver, err)
	}
	st, err := pgstore.Open(ctx, f.receiverStore, pgstore.Options{MaxConns: 2})
	if err != nil {
		return nil, fmt.Errorf("loading %s's keys: %w", f.receiver, err)
	}
	defer st.Close()
	ring, err := provider.LoadSharedKeyRing(ctx, st, sealer)
	if err != nil {
		return nil, fmt.Errorf("loading %s's keys: %w", f.receiver, err)
	}
	return ring, nil
}

func benchCmd(args []string) error {
	var f benchFlags
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	fs.StringVar(&f.dir, "dir", "", "directory of setup and of the providers' data dirs a/ and b/ (required)")
	fs.StringVar(&f.addr, "addr", "127.0.0.1:19443", "loopback address Caddy serves both providers on")
	fs.StringVar(&f.modes, "modes", "signed,retry,token", "modes to run, comma-separated; each runs next to bare")
	fs.IntVar(&f.conc, "c", 64, "concurrent requests")
	fs.DurationVar(&f.duration, "duration", 10*time.Second, "length of each run")
	fs.IntVar(&f.pool, "pool", 40000, "signed requests signed before the signed run (its upper bound)")
	fs.IntVar(&f.tokens, "tokens", 40000, "tokens minted before the token run (its upper bound)")
	fs.IntVar(&f.slices, "slices", 1, "split each run into this many slices, alternating bare and the mode (bare, mode, bare, mode, ...), so that load from elsewhere on the machine weighs on both alike")
	fs.StringVar(&f.metrics, "metrics", "", "URLs of Caddy's Prometheus metrics (admin /metrics), comma-separated (several gateways: summed): report the store's commits per second (caddy_mimi_store_commits_total; one fsync may cover several) and mean batch size of each mode's slices, its round trips to PostgreSQL per request, and Caddy's CPU time per request of each mode and of bare")
	fs.StringVar(&f.sender, "sender", "a.localhost", "provider that signs the signed, retry and deliver modes' requests")
	fs.StringVar(&f.senderKeys, "sender-keys", "", "the sender's key ring directory (default DIR/a/keys)")
	fs.StringVar(&f.receiver, "receiver", "b.localhost", "provider the requests go to: its DS hosts the send mode's group, its site serves /bare")
	fs.StringVar(&f.receiverKeys, "receiver-keys", "", "the receiver's key ring directory, which issues the send mode's client bindings (default DIR/b/keys)")
	fs.StringVar(&f.receiverStore, "receiver-store", "", "instead of -receiver-keys: the receiver's PostgreSQL DSN (a cluster's), its keys sealed under $MIMI_KEY_SECRET")
	fs.IntVar(&f.recipients, "recipients", 4, "send and commit modes: members of each group besides the sender (the committer), each getting every message (commit) in its queue")
	fs.IntVar(&f.commits, "commits", 200, "commit mode: update_client commits made before the run for each of the -c groups (the run's upper bound per group)")
	fs.StringVar(&f.cpuProfiles, "cpuprofiles", "", "directory for CPU profiles of the generator itself, one per slice: <mode>-<leg>-<slice>.pprof (go tool pprof merges several files of one leg)")
	fs.StringVar(&f.mint, "mint", "direct", "how tokens are minted: direct (RSASSA-PSS with the issuer key) or blind (RFC 9578 issuance in process)")
	fs.Parse(args)
	if f.dir == "" {
		return errors.New("bench: -dir is required")
	}
	if f.senderKeys == "" {
		f.senderKeys = filepath.Join(f.dir, "a", "keys")
	}
	if f.receiverKeys == "" {
		f.receiverKeys = filepath.Join(f.dir, "b", "keys")
	}
	t, err := newTarget(f.dir, f.addr, f.conc)
	if err != nil {
		return err
	}
	ctx := context.Background()
	if err := t.waitHealthy(ctx, 30*time.Second, f.receiver); err != nil {
		return err
	}
	fmt.Printf("# mimiload bench: %d concurrent requests over one HTTP/2 client, %s per run, GOMAXPROCS %d, %s\n",
		f.conc, f.duration, runtime.GOMAXPROCS(0), time.Now().UTC().Format(time.RFC3339))
	failed := false
	for _, mode := range strings.Split(f.modes, ",") {
		prep, err := prepare(ctx, t, &f, strings.TrimSpace(mode))
		if err != nil {
			return fmt.Errorf("preparing %s: %w", mode, err)
		}
		bare, answered, r := t.interleave(ctx, &f, prep)
		bare.print()
		if answered != nil {
			answered.print()
		}
		if bare.RPS > 0 {
			r.BareRPS, r.Ratio = bare.RPS, round(r.RPS/bare.RPS, 3)
		}
		if answered != nil && answered.RPS > 0 {
			r.BareAnswerRPS, r.AnswerRatio = answered.RPS, round(r.RPS/answered.RPS, 3)
		}
		r.print()
		if prep.check != nil {
			if err := prep.check(); err != nil {
				fmt.Printf("       %s: %v\n", mode, err)
				failed = true
			}
		}
		for _, x := range []*result{bare, answered, r} {
			if x == nil {
				continue
			}
			if x.Errors > 0 || x.Unexpected > 0 || x.Requests == 0 {
				failed = true
			}
		}
	}
	if failed {
		return errors.New("bench: some requests failed or got an unexpected status (see above)")
	}
	return nil
}

// interleave runs bare and the mode in f.slices alternating slices of
// f.duration/f.slices each (one slice each when f.slices is 1) and returns
// the merged results. The mode's slices take consecutive requests of its
// pool, so a signed request is still sent once. When the mode's answers
// have the shape of /bare-answer's (prep.answer, see bareAnswerConfig),
// a slice of that baseline runs after each bare one, and answered holds
// its merged results (nil otherwise).
func (t *target) interleave(ctx context.Context, f *benchFlags, prep *prepared) (bare, answered, mode *result) {
	n := max(f.slices, 1)
	slice := *f
	slice.duration = f.duration / time.Duration(n)
	legs := []*leg{{name: "bare", expected: http.StatusOK, cfg: t.bareConfig(&slice, prep.shape)}}
	if cfg, ok := t.bareAnswerConfig(ctx, &slice, prep); ok {
		legs = append(legs, &leg{name: "bare-answer", expected: http.StatusOK, cfg: cfg})
	}
	modeLeg := &leg{name: prep.mode, expected: prep.expected, cfg: prep.cfg, pooled: true}
	modeLeg.cfg.duration = slice.duration
	legs = append(legs, modeLeg)
	var store counters // the mode's, summed over the slices
	for range n {
		for _, l := range legs {
			c0, err0 := readCounters(ctx, f.metrics)
			s0 := sampleCPU()
			cfg := l.cfg
			if l.pooled {
				cfg = cfg.offset(l.off)
			}
			stopProfile := startProfile(f.cpuProfiles, fmt.Sprintf("%s-%s-%d.pprof", prep.mode, l.name, l.res.slicesSoFar()))
			r := t.run(ctx, l.name, l.expected, cfg)
			stopProfile()
			s1 := sampleCPU()
			c1, err1 := readCounters(ctx, f.metrics)
			u := s1.since(s0)
			if f.metrics != "" && err0 == nil && err1 == nil {
				l.server.cpu += c1.cpu - c0.cpu
				l.server.roundTrips += c1.roundTrips - c0.roundTrips
				if l == modeLeg {
					store.commits += c1.commits - c0.commits
					store.writes += c1.writes - c0.writes
				}
			} else if f.metrics != "" {
				fmt.Printf("# metrics: %v\n", errors.Join(err0, err1))
			}
			l.off += r.consumed
			if l.res == nil {
				l.res, l.use = r, u
				l.res.Slices = 1
			} else {
				l.res.add(r)
				l.use.add(u)
			}
		}
		if modeLeg.res.Exhausted {
			break
		}
	}
	for _, l := range legs {
		l.finish()
	}
	mode = modeLeg.res
	if store.commits > 0 {
		mode.CommitsPerSec = round(store.commits/mode.elapsed.Seconds(), 1)
		mode.MeanBatch = round(store.writes/store.commits, 2)
	}
	bare = legs[0].res
	mode.CPURatio = cpuRatio(bare, mode)
	if len(legs) == 3 {
		answered = legs[1].res
		mode.AnswerCPURatio = cpuRatio(answered, mode)
	}
	return bare, answered, mode
}

// startProfile starts a CPU profile of this process into dir/name and
// returns what stops it; with dir empty, or when the profile cannot start
// (reported), it does nothing.
func startProfile(dir, name string) (stop func()) {
	if dir == "" {
		return func() {}
	}
	f, err := os.Create(filepath.Join(dir, name))
	if err == nil {
		err = pprof.StartCPUProfile(f)
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		fmt.Printf("# cpu profile %s: %v\n", name, err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// A leg is one of the runs that interleave alternates, and what its
// slices add up to.
type leg struct {
	name     string
	expected int
	cfg      runConfig
	pooled   bool // the mode: each slice goes on in the pool where the last one stopped
	off      int  // the pool's next request (pooled)
	res      *result
	use      cpuUse   // the generator's and the machine's CPU, summed over the slices
	server   counters // Caddy's CPU and round trips, summed over the slices
}

// finish sets the leg's CPU accounting of its merged result.
func (l *leg) finish() {
	r := l.res
	if r.Requests > 0 && l.server.cpu > 0 {
		r.ServerCPU = round(l.server.cpu/float64(r.Requests)*1e6, 1)
	}
	if r.Requests > 0 && l.server.roundTrips > 0 {
		r.RoundTrips = round(l.server.roundTrips/float64(r.Requests), 3)
	}
	r.account(l.use)
}

// cpuRatio is the ratio of mode to base that their CPU cost per request
// (server and generator) predicts; 0 when either is unknown.
func cpuRatio(base, mode *result) float64 {
	if base.ServerCPU > 0 && base.ClientCPU > 0 && mode.ServerCPU > 0 && mode.ClientCPU > 0 {
		return round((base.ServerCPU+base.ClientCPU)/(mode.ServerCPU+mode.ClientCPU), 3)
	}
	return 0
}

// counters are the values mimiload reads from Caddy's metrics: the
// store's commits and writes and its round trips to PostgreSQL (summed
// over data directories) and the CPU time of the Caddy process in seconds
// (process_cpu_seconds_total, in clock ticks of 10 ms on Linux); of
// several Caddy processes, the sums.
type counters struct {
	commits, writes, cpu, roundTrips float64
}

// readCounters reads the counters from the metrics of the Caddy
// processes at urls (comma-separated) and sums them; nothing when urls is
// empty.
func readCounters(ctx context.Context, urls string) (c counters, err error) {
	if urls == "" {
		return c, nil
	}
	for _, url := range strings.Split(urls, ",") {
		one, err := readCountersOf(ctx, url)
		if err != nil {
			return c, err
		}
		c.commits += one.commits
		c.writes += one.writes
		c.cpu += one.cpu
		c.roundTrips += one.roundTrips
	}
	return c, nil
}

// readCountersOf reads the counters of one Caddy process's metrics at url.
func readCountersOf(ctx context.Context, url string) (c counters, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return c, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return c, fmt.Errorf("reading metrics: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name, rest, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		metric, _, _ := strings.Cut(name, "{")
		if i := strings.LastIndexByte(line, ' '); i >= 0 && strings.Contains(name, "{") {
			rest = line[i+1:]
		}
		v, perr := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if perr != nil {
			continue
		}
		switch metric {
		case "caddy_mimi_store_commits_total":
			c.commits += v
		case "caddy_mimi_store_writes_total":
			c.writes += v
		case "caddy_mimi_store_round_trips_total":
			c.roundTrips += v
		case "process_cpu_seconds_total":
			c.cpu = v
		}
	}
	return c, sc.Err()
}

// bareConfig is the baseline run: requests of the mode's shape (method,
// body, headers) to a bare respond route, so that the comparison leaves
// out only what the gateway does with them. A POST with a body costs the
// HTTP/2 client and server more than a bodiless GET (DATA and
// WINDOW_UPDATE frames), and the signed modes POST.
func (t *target) bareConfig(f *benchFlags, shape request) runConfig {
	req := request{method: http.MethodGet, url: t.url(f.receiver, "/bare")}
	if shape.method != "" {
		req.method, req.body, req.header = shape.method, shape.body, shape.header
	}
	return runConfig{conc: f.conc, duration: f.duration, next: func(int) (request, bool) { return req, true }}
}

// bareAnswerPath is the second baseline's route (lib.sh): Caddy's respond
// answering 200 with a 5-byte body and the headers of a MoH answer
// (Content-Type application/octet-stream, Cache-Control no-store), the
// shape of deliver_message's success (a queueing DSResponse, status ok,
// no unknown clients).
const bareAnswerPath = "/bare-answer"

// bareAnswerConfig is the baseline that answers like the mode: requests
// of the mode's shape to bareAnswerPath, whose answer must have the shape
// of the mode's (prep.answer), checked with one request. A mode without
// a known answer shape, or whose answer differs, has no such baseline
// (false), and why is printed unless it has no known shape.
func (t *target) bareAnswerConfig(ctx context.Context, f *benchFlags, prep *prepared) (runConfig, bool) {
	if prep.answer == (answerShape{}) {
		return runConfig{}, false
	}
	cfg := t.bareConfig(f, prep.shape)
	r, _ := cfg.next(0)
	r.url = t.url(f.receiver, bareAnswerPath)
	a := t.do(ctx, r.method, r.url, r.body, r.header)
	if got := shapeOf(a); a.err != nil || got != prep.answer {
		fmt.Printf("# %s: no bare baseline answering alike: %s answers %+v (%v), the mode %+v\n",
			prep.mode, bareAnswerPath, got, a.err, prep.answer)
		return runConfig{}, false
	}
	cfg.next = func(int) (request, bool) { return r, true }
	return cfg, true
}

// answerShape is what of an answer the transport carries at a cost of its
// own: the status, the body's length and the headers a MoH answer sets.
type answerShape struct {
	status, length            int
	contentType, cacheControl string
}

// shapeOf returns a's shape; the zero shape for a failed request.
func shapeOf(a answer) answerShape {
	if a.err != nil {
		return answerShape{}
	}
	return answerShape{status: a.status, length: len(a.body),
		contentType: a.header.Get("Content-Type"), cacheControl: a.header.Get("Cache-Control")}
}

// octetStream marks a bare POST like the MoH ones (do sets the content
// type of every body anyway).
var octetStream = map[string]string{"Content-Type": "application/octet-stream"}

// prepared is a mode ready to run: pools built, warm-up sent.
type prepared struct {
	mode     string
	expected int
	cfg      runConfig
	check    func() error // after the run
	// shape is a request like the mode's (method, body, headers), which the
	// bare run sends to /bare; the zero request means a bodiless GET.
	shape request
	// answer, when known, is the shape of the mode's answers: a baseline
	// answering alike (bareAnswerPath) then runs too.
	answer answerShape
}

func prepare(ctx context.Context, t *target, f *benchFlags, mode string) (*prepared, error) {
	url := t.url(f.receiver, "/connection_request")
	// Warm up the connection (not measured).
	for range 2 * f.conc {
		if a := t.do(ctx, http.MethodGet, t.url(f.receiver, "/bare"), nil, nil); a.err != nil || a.status != http.StatusOK {
			return nil, fmt.Errorf("warm-up GET /bare: status %d, %v", a.status, a.err)
		}
	}
	switch mode {
	case "signed":
		s, err := f.signer()
		if err != nil {
			return nil, err
		}
		// The first request makes b fetch a's keys: not measured.
		first, err := s.fresh()
		if err != nil {
			return nil, err
		}
		if a := t.do(ctx, http.MethodPost, url, first.raw, nil); a.err != nil || a.status != http.StatusNotFound {
			return nil, fmt.Errorf("first signed request: status %d, %v", a.status, a.err)
		}
		t0 := time.Now()
		pool, err := s.pool(f.pool)
		if err != nil {
			return nil, err
		}
		fmt.Printf("# signed: %d distinct requests signed ahead of the run in %s (signing is not in the measured loop)\n",
			len(pool), time.Since(t0).Round(time.Millisecond))
		return &prepared{mode: mode, expected: http.StatusNotFound, cfg: runConfig{
			conc: f.conc, duration: f.duration,
			next: func(i int) (request, bool) {
				if i >= len(pool) {
					return request{}, false
				}
				return request{method: http.MethodPost, url: url, body: pool[i].raw}, true
			},
		}, shape: request{method: http.MethodPost, body: first.raw, header: octetStream}}, nil
	case "retry":
		s, err := f.signer()
		if err != nil {
			return nil, err
		}
		one, err := s.fresh()
		if err != nil {
			return nil, err
		}
		first := t.do(ctx, http.MethodPost, url, one.raw, nil)
		if first.err != nil || first.status != http.StatusNotFound {
			return nil, fmt.Errorf("request to retry: status %d, %v", first.status, first.err)
		}
		var differ atomic.Int64
		req := request{method: http.MethodPost, url: url, body: one.raw}
		return &prepared{mode: mode, expected: http.StatusNotFound, shape: request{method: http.MethodPost, body: one.raw, header: octetStream}, cfg: runConfig{
			conc: f.conc, duration: f.duration,
			next: func(int) (request, bool) { return req, true },
			done: func(_ int, a answer) {
				if a.err == nil && !bytes.Equal(a.body, first.body) {
					differ.Add(1)
				}
			},
		}, check: func() error {
			if n := differ.Load(); n > 0 {
				return fmt.Errorf("%d retries got other bytes than the recorded answer", n)
			}
			return nil
		}}, nil
	case "token":
		m, err := newMinter(f.dir, f.mint)
		if err != nil {
			return nil, err
		}
		ch, err := m.challenge(ctx, t)
		if err != nil {
			return nil, err
		}
		t0 := time.Now()
		toks, err := m.tokens(ch, f.tokens)
		if err != nil {
			return nil, err
		}
		fmt.Printf("# token: %d fresh type 2 tokens minted (%s) ahead of the run in %s (minting is not in the measured loop)\n",
			len(toks), f.mint, time.Since(t0).Round(time.Millisecond))
		tu := t.url("b.localhost", tokenPath)
		return &prepared{mode: mode, expected: http.StatusOK, cfg: runConfig{
			conc: f.conc, duration: f.duration,
			next: func(i int) (request, bool) {
				if i >= len(toks) {
					return request{}, false
				}
				return request{method: http.MethodGet, url: tu, header: map[string]string{"Authorization": toks[i]}}, true
			},
		}, shape: request{method: http.MethodGet, header: map[string]string{"Authorization": toks[0]}}}, nil
	case "send":
		return prepareSend(ctx, t, f)
	case "deliver":
		return prepareDeliver(ctx, t, f)
	case "commit":
		return prepareCommit(ctx, t, f)
	case "bare":
		return &prepared{mode: "bare", expected: http.StatusOK, cfg: t.bareConfig(f, request{})}, nil
	}
	return nil, fmt.Errorf("unknown mode %q (signed, retry, token, send, deliver, commit, bare)", mode)
}
