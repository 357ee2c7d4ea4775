package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// attachbench: one large attachment uploaded to and downloaded from the
// gateway, and the same bytes downloaded from Caddy's file_server (in a
// plain Caddy of its own, -fs-caddy, or on the gateway's site), over one
// HTTP/2 TLS 1.3 client, while the processes' resident set sizes are
// sampled. See examples/loadtest/README.md.

type attachBenchFlags struct {
	dir, addr, caddy, config, log string
	file, filesPath               string
	size                          int64
	reps                          int
	sample                        time.Duration
	admin, profiles               string
	fileServer                    bool
	storage                       string
	plain                         bool
	// The file_server's own Caddy (-fs-caddy): its binary, Caddyfile,
	// loopback address and log; none when the gateway's Caddy serves it.
	fsCaddy, fsConfig, fsAddr, fsLog string
}

// measurement is one timed transfer, printed as a RESULT line.
type measurement struct {
	Kind     string  `json:"kind"` // upload, download, file_server
	Storage  string  `json:"storage,omitempty"`
	Rep      int     `json:"rep"`
	Bytes    int64   `json:"bytes"`
	Seconds  float64 `json:"seconds"`
	MBps     float64 `json:"mb_per_s"` // 10^6 bytes per second
	RSSPeak  int64   `json:"caddy_rss_peak_kib"`
	AnonPeak int64   `json:"caddy_rss_anon_peak_kib"`
	HashOK   bool    `json:"hash_ok"`
	RatioFS  float64 `json:"ratio_to_file_server,omitempty"`
	VmHWMNow int64   `json:"caddy_vmhwm_kib"`
	// Process is whose memory the peaks are: "gateway" (the Caddy of the
	// gateway, also of file_server without -fs-caddy) or "file_server"
	// (the plain Caddy of -fs-caddy).
	Process string `json:"process"`
}

// The processes a measurement's memory figures are of.
const (
	processGateway    = "gateway"
	processFileServer = "file_server"
)

func (m *measurement) print() {
	extra := ""
	if m.RatioFS > 0 {
		extra = fmt.Sprintf(", %.2f of file_server", m.RatioFS)
	}
	who := "Caddy"
	if m.Process == processFileServer {
		who = "file_server's Caddy"
	}
	fmt.Printf("%srep %d %-11s %d bytes in %.2f s: %.1f MB/s%s; %s VmRSS peak during it %.1f MiB (anonymous %.1f MiB), VmHWM so far %.1f MiB\n",
		label(m.Storage), m.Rep, m.Kind, m.Bytes, m.Seconds, m.MBps, extra, who, float64(m.RSSPeak)/1024, float64(m.AnonPeak)/1024, float64(m.VmHWMNow)/1024)
	b, _ := json.Marshal(m)
	fmt.Printf("RESULT %s\n", b)
}

// attachBenchCmd runs the benchmark: it writes the test file (random
// bytes, its SHA-256 computed as written), starts Caddy (and the plain
// Caddy of -fs-caddy), creates a group on b.localhost and, -reps times:
// uploads the file as an attachment (read from disk as it is sent),
// downloads it from the gateway and the file from file_server (in
// alternating order), each hashed and discarded, then deletes the
// attachment so that only one is stored at a time.
func attachBenchCmd(args []string) error {
	var f attachBenchFlags
	fs := flag.NewFlagSet("attachbench", flag.ExitOnError)
	fs.StringVar(&f.dir, "dir", "", "directory of setup and of the providers' data dirs (required)")
	fs.StringVar(&f.addr, "addr", "127.0.0.1:19443", "loopback address Caddy serves both providers on")
	fs.StringVar(&f.caddy, "caddy", "./caddy", "Caddy binary")
	fs.StringVar(&f.config, "config", "", "Caddyfile (required)")
	fs.StringVar(&f.log, "log", "", "file Caddy's output is appended to (default: discarded)")
	fs.StringVar(&f.file, "file", "", "test file to write, under the directory file_server serves (required)")
	fs.StringVar(&f.filesPath, "files-path", "", "URL path on b.localhost at which file_server serves -file (required)")
	fs.Int64Var(&f.size, "size", 1<<30-9, "bytes of the test file and the attachment (at most 1,073,741,815, the wire's limit)")
	fs.IntVar(&f.reps, "reps", 3, "repetitions of upload, download and file_server download")
	fs.DurationVar(&f.sample, "sample", 20*time.Millisecond, "interval of the RSS samples")
	fs.StringVar(&f.admin, "admin", "", "Caddy's admin address (host:port); with -profiles, heap profiles are taken around every transfer")
	fs.StringVar(&f.profiles, "profiles", "", "directory for the heap profiles of -admin: <rep>-<kind>-before.pb.gz and -after.pb.gz (compare with go tool pprof -sample_index=alloc_space -base)")
	fs.StringVar(&f.storage, "storage", "", "name of the gateway's attachment storage (local, s3, forward), put in the output's lines")
	fs.BoolVar(&f.plain, "plain", false, "the Caddy has no gateway (plain Caddy, the memory baseline): only the file_server downloads")
	fs.BoolVar(&f.fileServer, "file-server", true, "also download from file_server (false: the gateway's transfers alone)")
	fs.StringVar(&f.fsCaddy, "fs-caddy", "", "a plain Caddy (standard modules only) that serves -files-path on b.localhost with file_server in a process of its own, "+
		"started with -fs-config on -fs-addr and sampled on its own; without it, the gateway's Caddy serves -files-path, and its memory is then file_server's too")
	fs.StringVar(&f.fsConfig, "fs-config", "", "Caddyfile of -fs-caddy")
	fs.StringVar(&f.fsAddr, "fs-addr", "", "loopback address -fs-caddy serves b.localhost on")
	fs.StringVar(&f.fsLog, "fs-log", "", "file -fs-caddy's output is appended to (default: discarded)")
	fs.Parse(args)
	if f.dir == "" || f.config == "" || f.file == "" || f.filesPath == "" {
		return errors.New("attachbench: -dir, -config, -file and -files-path are required")
	}
	if f.fsCaddy != "" && (f.fsConfig == "" || f.fsAddr == "") {
		return errors.New("attachbench: -fs-caddy needs -fs-config and -fs-addr")
	}
	if f.fsCaddy != "" && f.plain {
		return errors.New("attachbench: -plain measures a plain Caddy's file_server already; -fs-caddy adds another")
	}
	t0 := time.Now()
	sum, err := writeRandomFile(f.file, f.size)
	if err != nil {
		return err
	}
	fmt.Printf("# wrote %s: %d random bytes in %s\n", f.file, f.size, time.Since(t0).Round(time.Millisecond))

	t, err := newTarget(f.dir, f.addr, 1)
	if err != nil {
		return err
	}
	t.client.Timeout = 0 // a transfer takes what it takes; the context bounds the run
	c := &caddyProc{bin: f.caddy, config: f.config, logPath: f.log}
	if err := c.start(); err != nil {
		return err
	}
	defer c.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	if err := t.waitHealthy(ctx, 60*time.Second); err != nil {
		return err
	}
	pid := c.cmd.Process.Pid
	rss := startRSS(pid, f.sample)
	// The file_server's target, process and sampler: the gateway's, or
	// those of the plain Caddy of -fs-caddy.
	fsT, fsPid, fsRSS := t, pid, rss
	if f.separateFileServer() {
		if fsT, err = newTarget(f.dir, f.fsAddr, 1); err != nil {
			return err
		}
		fsT.client.Timeout = 0
		fc := &caddyProc{bin: f.fsCaddy, config: f.fsConfig, logPath: f.fsLog}
		if err := fc.start(); err != nil {
			return fmt.Errorf("file_server's Caddy: %w", err)
		}
		defer fc.stop()
		if err := fsT.waitHealthy(ctx, 60*time.Second, "b.localhost"); err != nil {
			return fmt.Errorf("file_server's Caddy: %w", err)
		}
		fsPid = fc.cmd.Process.Pid
		fsRSS = startRSS(fsPid, f.sample)
		fmt.Printf("# %sfile_server's own Caddy (plain) pid %d on %s\n", label(f.storage), fsPid, f.fsAddr)
	}
	var m *attachMember
	what := "a group on b.localhost created"
	if f.plain {
		what = "no gateway"
	} else if m, err = newAttachMember(ctx, t, "bench"); err != nil {
		return err
	}
	idle, err := procStatus(pid)
	if err != nil {
		return err
	}
	fmt.Printf("# %sCaddy pid %d up, %s: VmRSS %.1f MiB (anonymous %.1f MiB, file-backed %.1f MiB), VmHWM %.1f MiB\n",
		label(f.storage), pid, what, float64(idle["VmRSS"])/1024, float64(idle["RssAnon"])/1024, float64(idle["RssFile"])/1024, float64(idle["VmHWM"])/1024)
	hwm := func(pid int) int64 {
		st, err := procStatus(pid)
		if err != nil {
			return 0
		}
		return st["VmHWM"]
	}

	var all []*measurement
	for rep := 1; rep <= f.reps; rep++ {
		if f.plain {
			rss.reset()
			d, err := fileServerDownload(ctx, &f, t, rep, sum)
			if err != nil {
				return err
			}
			d.RSSPeak, d.AnonPeak = rss.reset()
			d.VmHWMNow, d.MBps, d.Process = hwm(pid), float64(d.Bytes)/d.Seconds/1e6, processFileServer
			d.print()
			all = append(all, d)
			continue
		}
		rss.reset()
		up := &measurement{Kind: "upload", Storage: f.storage, Rep: rep, Bytes: f.size}
		file, err := os.Open(f.file)
		if err != nil {
			return err
		}
		f.profile(ctx, rep, "upload", "before")
		start := time.Now()
		token, err := m.upload(ctx, file, f.size, sum)
		up.Seconds = time.Since(start).Seconds()
		file.Close()
		if err != nil {
			return fmt.Errorf("rep %d: %w", rep, err)
		}
		f.profile(ctx, rep, "upload", "after")
		up.HashOK = true // the gateway checked content_hash
		up.RSSPeak, up.AnonPeak = rss.reset()
		up.VmHWMNow, up.MBps, up.Process = hwm(pid), float64(f.size)/up.Seconds/1e6, processGateway
		up.print()
		all = append(all, up)

		gwRun := func() (*measurement, error) {
			d := &measurement{Kind: "download", Storage: f.storage, Rep: rep}
			h := newHashingDiscard()
			f.profile(ctx, rep, d.Kind, "before")
			start := time.Now()
			n, err := m.download(ctx, token, h)
			d.Seconds, d.Bytes = time.Since(start).Seconds(), n
			f.profile(ctx, rep, d.Kind, "after")
			if err != nil {
				return nil, fmt.Errorf("rep %d: %w", rep, err)
			}
			d.HashOK = bytes.Equal(h.sum(), sum)
			return d, nil
		}
		gw := transfer{run: gwRun, rss: rss, pid: pid, process: processGateway}
		fsrv := transfer{run: func() (*measurement, error) { return fileServerDownload(ctx, &f, fsT, rep, sum) },
			rss: fsRSS, pid: fsPid, process: processGateway}
		if f.separateFileServer() {
			fsrv.process = processFileServer
		}
		order := []transfer{gw, fsrv}
		if rep%2 == 0 {
			order = []transfer{fsrv, gw}
		}
		if !f.fileServer {
			order = []transfer{gw}
		}
		pair := make([]*measurement, len(order))
		for i, tr := range order {
			tr.rss.reset()
			d, err := tr.run()
			if err != nil {
				return err
			}
			d.RSSPeak, d.AnonPeak = tr.rss.reset()
			d.VmHWMNow, d.MBps, d.Process = hwm(tr.pid), float64(d.Bytes)/d.Seconds/1e6, tr.process
			pair[i] = d
			if !d.HashOK {
				return fmt.Errorf("rep %d: the %s's content does not hash to the file's SHA-256", rep, d.Kind)
			}
		}
		if pair[0].Kind != "download" {
			pair[0], pair[1] = pair[1], pair[0]
		}
		if len(pair) == 2 {
			pair[0].RatioFS = pair[0].MBps / pair[1].MBps
		}
		for _, d := range pair {
			d.print()
			all = append(all, d)
		}
		if err := m.deleteAttachment(ctx, token); err != nil {
			return fmt.Errorf("rep %d: %w", rep, err)
		}
	}
	peak, anon, file := rss.close()
	st, err := procStatus(pid)
	if err != nil {
		return err
	}
	s := summarise(all)
	s.Storage = f.storage
	s.VmHWM, s.RSSSampledPeak, s.AnonSampledPeak, s.FileSampledPeak, s.Pid = st["VmHWM"], peak, anon, file, pid
	s.IdleRSS, s.IdleAnon, s.IdleFile = idle["VmRSS"], idle["RssAnon"], idle["RssFile"]
	who, fsMem := "Caddy", ""
	if f.separateFileServer() {
		_, fsAnon, _ := fsRSS.close()
		s.FileServerVmHWM, s.FileServerAnonPeak = hwm(fsPid), fsAnon
		who = "the gateway's Caddy"
		fsMem = fmt.Sprintf("; file_server's own Caddy VmHWM %.1f MiB (anonymous peak %.1f MiB)", float64(s.FileServerVmHWM)/1024, float64(fsAnon)/1024)
	}
	fmt.Printf("%ssummary: upload %.1f MB/s, download %.1f MB/s, file_server %.1f MB/s (medians of %d); download / file_server %.2f (per rep %v); "+
		"%s VmHWM %.1f MiB, sampled VmRSS peak %.1f MiB (peaks of anonymous %.1f MiB, file-backed %.1f MiB); idle before the transfers %.1f MiB (anonymous %.1f MiB, file-backed %.1f MiB)%s\n",
		label(f.storage), s.UploadMBps, s.DownloadMBps, s.FileServerMBps, f.reps, s.Ratio, s.Ratios, who, float64(s.VmHWM)/1024, float64(s.RSSSampledPeak)/1024,
		float64(s.AnonSampledPeak)/1024, float64(s.FileSampledPeak)/1024, float64(s.IdleRSS)/1024, float64(s.IdleAnon)/1024, float64(s.IdleFile)/1024, fsMem)
	b, _ := json.Marshal(s)
	fmt.Printf("RESULT %s\n", b)
	return nil
}

// fileServerDownload downloads the test file from file_server, hashed and
// discarded, timed.
func fileServerDownload(ctx context.Context, f *attachBenchFlags, t *target, rep int, sum []byte) (*measurement, error) {
	d := &measurement{Kind: "file_server", Storage: f.storage, Rep: rep}
	h := newHashingDiscard()
	// The admin endpoint's profiles are the gateway's Caddy's.
	profile := !f.separateFileServer()
	if profile {
		f.profile(ctx, rep, d.Kind, "before")
	}
	start := time.Now()
	n, err := getFile(ctx, t, t.url("b.localhost", f.filesPath), h)
	d.Seconds, d.Bytes = time.Since(start).Seconds(), n
	if profile {
		f.profile(ctx, rep, d.Kind, "after")
	}
	if err != nil {
		return nil, fmt.Errorf("rep %d: file_server: %w", rep, err)
	}
	d.HashOK = bytes.Equal(h.sum(), sum)
	if !d.HashOK {
		return nil, fmt.Errorf("rep %d: the file_server's content does not hash to the file's SHA-256", rep)
	}
	return d, nil
}

// benchSummary is the run's medians and the Caddy process's peak memory.
type benchSummary struct {
	Kind            string    `json:"kind"` // summary
	Storage         string    `json:"storage,omitempty"`
	Pid             int       `json:"caddy_pid"`
	UploadMBps      float64   `json:"upload_mb_per_s"`
	DownloadMBps    float64   `json:"download_mb_per_s"`
	FileServerMBps  float64   `json:"file_server_mb_per_s"`
	Ratio           float64   `json:"download_ratio_to_file_server"`
	Ratios          []float64 `json:"ratios"`
	VmHWM           int64     `json:"caddy_vmhwm_kib"`
	RSSSampledPeak  int64     `json:"caddy_rss_sampled_peak_kib"`
	AnonSampledPeak int64     `json:"caddy_rss_anon_sampled_peak_kib"`
	FileSampledPeak int64     `json:"caddy_rss_file_sampled_peak_kib"`
	IdleRSS         int64     `json:"caddy_idle_rss_kib"`
	IdleAnon        int64     `json:"caddy_idle_rss_anon_kib"`
	IdleFile        int64     `json:"caddy_idle_rss_file_kib"`
	// The plain Caddy of -fs-caddy, when file_server ran in it.
	FileServerVmHWM    int64 `json:"file_server_caddy_vmhwm_kib,omitempty"`
	FileServerAnonPeak int64 `json:"file_server_caddy_rss_anon_sampled_peak_kib,omitempty"`
}

// transfer is one kind of timed transfer of a repetition, and the process
// whose memory it is measured in.
type transfer struct {
	run     func() (*measurement, error)
	rss     *rssSampler
	pid     int
	process string
}

// separateFileServer reports whether file_server runs in a plain Caddy
// of its own (-fs-caddy), apart from the gateway's.
func (f *attachBenchFlags) separateFileServer() bool {
	return f.fsCaddy != "" && f.fileServer && !f.plain
}

// label is the storage's name as a prefix of a line, or nothing.
func label(storage string) string {
	if storage == "" {
		return ""
	}
	return "[" + storage + "] "
}

func summarise(all []*measurement) *benchSummary {
	by := map[string][]float64{}
	s := &benchSummary{Kind: "summary"}
	for _, m := range all {
		by[m.Kind] = append(by[m.Kind], m.MBps)
		if m.RatioFS > 0 {
			s.Ratios = append(s.Ratios, round(m.RatioFS, 3))
		}
	}
	med := func(v []float64, digits int) float64 {
		if len(v) == 0 {
			return 0
		}
		v = slices.Clone(v)
		slices.Sort(v)
		return round(v[len(v)/2], digits)
	}
	s.UploadMBps, s.DownloadMBps, s.FileServerMBps = med(by["upload"], 1), med(by["download"], 1), med(by["file_server"], 1)
	s.Ratio = med(s.Ratios, 2)
	return s
}

// deleteAttachment deletes the member's attachment of token.
func (m *attachMember) deleteAttachment(ctx context.Context, token []byte) error {
	body, err := m.sign(moh.RequestBody{Type: moh.AttachmentDelete, Attachment: moh.AttachmentRef{GroupID: m.gid, Token: token}})
	if err != nil {
		return err
	}
	a := m.t.do(ctx, http.MethodPost, m.t.url("b.localhost", "/attachment_delete"), body, nil)
	if a.err != nil {
		return fmt.Errorf("attachment_delete: %w", a.err)
	}
	if r, ok := decodeAnswer(a.body); a.status != http.StatusOK || !ok || r.Type == moh.ResponseError {
		return fmt.Errorf("attachment_delete: status %d: %s %q", a.status, r.Error.Code, r.Error.Message)
	}
	return nil
}

// getFile GETs url and streams the 200 answer's body into w.
func getFile(ctx context.Context, t *target, url string, w io.Writer) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if err := checkProto(resp); err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %d", resp.StatusCode)
	}
	n, err := io.CopyBuffer(w, resp.Body, make([]byte, copyBuf))
	if err != nil {
		return n, fmt.Errorf("after %d bytes: %w", n, err)
	}
	return n, nil
}

// writeRandomFile writes size random bytes to path (creating its
// directory) and returns their SHA-256.
func writeRandomFile(path string, size int64) ([]byte, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	var seed [32]byte
	crand.Read(seed[:])
	h := sha256.New()
	_, err = io.CopyBuffer(io.MultiWriter(f, h), io.LimitReader(rand.NewChaCha8(seed), size), make([]byte, 4<<20))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("writing %s: %w", path, err)
	}
	return h.Sum(nil), nil
}

// profile saves Caddy's heap profile (with the allocations since the
// start) as <rep>-<kind>-<when>.pb.gz in f.profiles, when -admin and
// -profiles are set. A failure is reported and otherwise ignored.
func (f *attachBenchFlags) profile(ctx context.Context, rep int, kind, when string) {
	if f.admin == "" || f.profiles == "" {
		return
	}
	err := func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+f.admin+"/debug/pprof/heap", nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		if err := os.MkdirAll(f.profiles, 0o700); err != nil {
			return err
		}
		out, err := os.Create(filepath.Join(f.profiles, fmt.Sprintf("%d-%s-%s.pb.gz", rep, kind, when)))
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, resp.Body); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	}()
	if err != nil {
		fmt.Fprintf(os.Stderr, "# heap profile %d-%s-%s: %v\n", rep, kind, when, err)
	}
}
