package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// target is the Caddy under test: both providers on one loopback address.
type target struct {
	dir    string // the directory setup wrote and the providers' data dirs live in
	addr   string // 127.0.0.1:port
	port   string
	client *http.Client
}

func newTarget(dir, addr string, conc int) (*target, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("parsing -addr: %w", err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("-addr %s is not a loopback address", addr)
	}
	pemData, err := os.ReadFile(filepath.Join(dir, "root-cert.pem"))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemData) {
		return nil, errors.New("no certificate in root-cert.pem")
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		// Every host name goes to the one loopback address.
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, addr)
		},
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: conc,
	}
	return &target{
		dir: dir, addr: addr, port: port,
		client: &http.Client{Transport: tr, Timeout: 30 * time.Second},
	}, nil
}

// url returns the https URL of path on provider (a.localhost or b.localhost).
func (t *target) url(provider, path string) string {
	return "https://" + provider + ":" + t.port + path
}

// answer is one HTTP exchange's outcome.
type answer struct {
	status int
	body   []byte
	header http.Header
	err    error
}

// do sends one request and reads the whole answer (at most 1 MiB). Only
// HTTP/2 over TLS 1.3 counts: anything else is an error, so a silent
// fallback cannot skew the numbers.
func (t *target) do(ctx context.Context, method, url string, body []byte, hdr map[string]string) answer {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return answer{err: err}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return answer{status: resp.StatusCode, err: fmt.Errorf("reading answer: %w", err)}
	}
	if resp.ProtoMajor != 2 || resp.TLS == nil || resp.TLS.Version != tls.VersionTLS13 {
		return answer{status: resp.StatusCode, err: fmt.Errorf("answer over %s, not HTTP/2 over TLS 1.3", resp.Proto)}
	}
	return answer{status: resp.StatusCode, body: b, header: resp.Header}
}

// waitHealthy polls the /healthz of hosts (none: of both providers,
// a.localhost and b.localhost) until they answer 200.
func (t *target) waitHealthy(ctx context.Context, limit time.Duration, hosts ...string) error {
	deadline := time.Now().Add(limit)
	if len(hosts) == 0 {
		hosts = []string{"a.localhost", "b.localhost"}
	}
	for _, p := range hosts {
		for {
			c, cancel := context.WithTimeout(ctx, 2*time.Second)
			a := t.do(c, http.MethodGet, t.url(p, "/healthz"), nil, nil)
			cancel()
			if a.err == nil && a.status == http.StatusOK {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s not healthy after %s: status %d, %v", p, limit, a.status, a.err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// request is one prepared request of a run.
type request struct {
	method string
	url    string
	body   []byte
	header map[string]string
}

// runConfig bounds a run.
type runConfig struct {
	conc     int
	duration time.Duration
	// next returns the i-th request, or false when the pool is used up.
	next func(i int) (request, bool)
	// own, when set, replaces next: worker w (0 to conc-1) sends its own
	// sequence in order, own(w) returning its next request or false when
	// it is used up (the commit mode: one group per worker, its commits
	// epoch after epoch). The sequences go on where they stopped in the
	// next slice of an interleaved run.
	own func(w int) (request, bool)
	// done, when set, sees every finished request (from the workers).
	done func(i int, a answer)
}

// result is what a run measured.
type result struct {
	Mode        string         `json:"mode"`
	Requests    int            `json:"requests"`
	Seconds     float64        `json:"seconds"`
	RPS         float64        `json:"rps"`
	P50ms       float64        `json:"p50_ms"`
	P90ms       float64        `json:"p90_ms"`
	P99ms       float64        `json:"p99_ms"`
	Status      map[string]int `json:"status"`
	Expected    int            `json:"expected_status"`
	Unexpected  int            `json:"unexpected"`
	Errors      int            `json:"errors"`
	FirstError  string         `json:"first_error,omitempty"`
	Concurrency int            `json:"concurrency"`
	Exhausted   bool           `json:"pool_exhausted"`
	BareRPS     float64        `json:"bare_rps,omitempty"`
	Ratio       float64        `json:"ratio_to_bare,omitempty"`
	Slices      int            `json:"slices,omitempty"`
	// BareAnswerRPS and AnswerRatio compare the mode with the baseline
	// that answers alike (bareAnswerPath): the same request, and an answer
	// of the mode's status, length and headers. AnswerCPURatio is
	// CPURatio against it.
	BareAnswerRPS  float64 `json:"bare_answer_rps,omitempty"`
	AnswerRatio    float64 `json:"ratio_to_bare_answer,omitempty"`
	AnswerCPURatio float64 `json:"cpu_ratio_to_bare_answer,omitempty"`
	// CommitsPerSec and MeanBatch are the store's commits (each one
	// fsync of the WAL) per second of the mode's runs and its writes per
	// commit, from Caddy's metrics (-metrics).
	CommitsPerSec float64 `json:"store_commits_per_s,omitempty"`
	MeanBatch     float64 `json:"store_mean_batch,omitempty"`
	// ServerCPU is the CPU time of the Caddy process per request of the
	// run, in microseconds, from Caddy's metrics (-metrics); Caddy runs
	// nothing else meanwhile, so it is the server's cost of a request.
	ServerCPU float64 `json:"server_cpu_us_per_req,omitempty"`
	// ClientCPU is mimiload's own CPU time per request of the run, in
	// microseconds: the load generator shares the machine's CPUs with
	// Caddy, so a request costs the machine ServerCPU + ClientCPU.
	ClientCPU float64 `json:"client_cpu_us_per_req,omitempty"`
	// Idle is the share of the machine's CPU time that was idle or
	// waiting for I/O during the run (from /proc/stat): near 0, the run
	// was bound by the CPUs. Nil where /proc/stat is not read.
	Idle *float64 `json:"machine_idle,omitempty"`
	// CPURatio, of a mode's result, is the ratio to bare that the CPU
	// cost alone predicts: bare's (ServerCPU + ClientCPU) over the
	// mode's. When both runs keep the CPUs busy, the measured Ratio is
	// close to it; it needs -metrics.
	CPURatio float64 `json:"cpu_ratio,omitempty"`
	// RoundTrips is the PostgreSQL store's round trips to the database
	// per request of the run (caddy_mimi_store_round_trips_total, summed
	// over the -metrics endpoints), background work included.
	RoundTrips float64 `json:"store_round_trips_per_req,omitempty"`

	lat      []time.Duration // sorted latencies of the answered requests
	elapsed  time.Duration
	consumed int // requests taken from cfg.next
}

// run sends requests from cfg.next on cfg.conc workers until cfg.duration
// has passed (no new request starts after it) or the pool is used up.
func (t *target) run(ctx context.Context, mode string, expected int, cfg runConfig) *result {
	var (
		idx       atomic.Int64
		exhausted atomic.Bool
		mu        sync.Mutex
		lat       []time.Duration
		status    = map[int]int{}
		nerr      int
		firstErr  string
	)
	start := time.Now()
	stop := start.Add(cfg.duration)
	var wg sync.WaitGroup
	for w := range cfg.conc {
		wg.Go(func() {
			var mine []time.Duration
			codes := map[int]int{}
			errs, first := 0, ""
			for ctx.Err() == nil && time.Now().Before(stop) {
				var (
					r  request
					ok bool
				)
				i := int(idx.Add(1) - 1)
				if cfg.own != nil {
					r, ok = cfg.own(w)
				} else {
					r, ok = cfg.next(i)
				}
				if !ok {
					exhausted.Store(true)
					break
				}
				t0 := time.Now()
				a := t.do(ctx, r.method, r.url, r.body, r.header)
				d := time.Since(t0)
				if cfg.done != nil {
					cfg.done(i, a)
				}
				if a.err != nil {
					errs++
					if first == "" {
						first = a.err.Error()
					}
					continue
				}
				mine = append(mine, d)
				codes[a.status]++
			}
			mu.Lock()
			lat = append(lat, mine...)
			for k, v := range codes {
				status[k] += v
			}
			nerr += errs
			if firstErr == "" {
				firstErr = first
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lat)
	r := &result{
		Mode: mode, Requests: len(lat) + nerr, Status: map[string]int{}, Expected: expected,
		Errors: nerr, FirstError: firstErr, Concurrency: cfg.conc, Exhausted: exhausted.Load(),
		lat: lat, elapsed: elapsed, consumed: int(min(idx.Load(), int64(math.MaxInt))),
	}
	for k, v := range status {
		r.Status[strconv.Itoa(k)] = v
	}
	r.summarise()
	return r
}

// summarise computes the derived fields from the raw ones.
func (r *result) summarise() {
	r.Seconds = round(r.elapsed.Seconds(), 3)
	r.RPS = round(float64(len(r.lat))/r.elapsed.Seconds(), 1)
	r.P50ms, r.P90ms, r.P99ms = pct(r.lat, 50), pct(r.lat, 90), pct(r.lat, 99)
	r.Unexpected = 0
	for k, v := range r.Status {
		if k != strconv.Itoa(r.Expected) {
			r.Unexpected += v
		}
	}
}

// add merges o, a later slice of the same mode, into r.
func (r *result) add(o *result) {
	r.Requests += o.Requests
	r.Errors += o.Errors
	if r.FirstError == "" {
		r.FirstError = o.FirstError
	}
	r.Exhausted = r.Exhausted || o.Exhausted
	r.lat = append(r.lat, o.lat...)
	slices.Sort(r.lat)
	r.elapsed += o.elapsed
	r.consumed += o.consumed
	for k, v := range o.Status {
		r.Status[k] += v
	}
	r.Slices++
	r.summarise()
}

// account sets r's ClientCPU and Idle from u, the CPU accounting of its
// slices.
func (r *result) account(u cpuUse) {
	if u.clientOK && r.Requests > 0 {
		r.ClientCPU = round(float64(u.client.Microseconds())/float64(r.Requests), 1)
	}
	if u.macOK && u.total > 0 {
		idle := round(float64(u.idle)/float64(u.total), 3)
		r.Idle = &idle
	}
}

// slicesSoFar is the number of slices merged into r, 0 for a nil r.
func (r *result) slicesSoFar() int {
	if r == nil {
		return 0
	}
	return r.Slices
}

// offset returns cfg with its request indexes shifted by off, so that a
// later slice of an interleaved run takes the next requests of the pool.
func (cfg runConfig) offset(off int) runConfig {
	next, done := cfg.next, cfg.done
	cfg.next = func(i int) (request, bool) { return next(off + i) }
	if done != nil {
		cfg.done = func(i int, a answer) { done(off+i, a) }
	}
	return cfg
}

// pct returns the p-th percentile of sorted latencies in milliseconds
// (nearest rank).
func pct(sorted []time.Duration, p int) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	i = min(max(i-1, 0), len(sorted)-1)
	return round(float64(sorted[i])/float64(time.Millisecond), 2)
}

func round(v float64, digits int) float64 {
	s := strconv.FormatFloat(v, 'f', digits, 64)
	f, _ := strconv.ParseFloat(s, 64)
	return f
}

// print writes the human summary and the machine-readable line.
func (r *result) print() {
	var codes []string
	for k, v := range r.Status {
		codes = append(codes, fmt.Sprintf("%s×%d", k, v))
	}
	slices.Sort(codes)
	fmt.Printf("%-6s %7d req in %6.2fs  %9.1f req/s  p50 %6.2fms  p90 %6.2fms  p99 %6.2fms  status %s  errors %d",
		r.Mode, r.Requests, r.Seconds, r.RPS, r.P50ms, r.P90ms, r.P99ms, strings.Join(codes, ","), r.Errors)
	if r.BareRPS > 0 {
		fmt.Printf("  (%.3f × bare", r.Ratio)
		if r.BareAnswerRPS > 0 {
			fmt.Printf(", %.3f × bare answering alike", r.AnswerRatio)
		}
		fmt.Print(")")
	}
	if r.Exhausted {
		fmt.Print("  [pool used up before the duration]")
	}
	if r.ServerCPU > 0 {
		fmt.Printf("  server CPU %.0f us/req", r.ServerCPU)
	}
	if r.ClientCPU > 0 {
		fmt.Printf("  client CPU %.0f us/req", r.ClientCPU)
	}
	if r.Idle != nil {
		fmt.Printf("  machine %.0f %% idle", 100**r.Idle)
	}
	if r.CPURatio > 0 {
		fmt.Printf("  (CPU cost: %.3f × bare", r.CPURatio)
		if r.AnswerCPURatio > 0 {
			fmt.Printf(", %.3f × bare answering alike", r.AnswerCPURatio)
		}
		fmt.Print(")")
	}
	if r.CommitsPerSec > 0 {
		fmt.Printf("  store: %.0f commits/s, %.2f writes per commit", r.CommitsPerSec, r.MeanBatch)
	}
	if r.RoundTrips > 0 {
		fmt.Printf("  %.2f database round trips/req", r.RoundTrips)
	}
	fmt.Println()
	if r.FirstError != "" {
		fmt.Printf("       first error: %s\n", r.FirstError)
	}
	line, _ := json.Marshal(r)
	fmt.Printf("RESULT %s\n", line)
}

// parallel calls f(i) for i in [0, n) on conc goroutines.
func parallel(n, conc int, f func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(conc, max(n, 1)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				f(i)
			}
		})
	}
	wg.Wait()
}
