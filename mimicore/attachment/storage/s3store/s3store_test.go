package s3store_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/caddy-mimi/caddy-mimi/internal/s3test"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/s3store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/storagetest"
)

// config returns a Config of srv under a prefix of its own.
func config(t *testing.T, srv *s3test.Server) s3store.Config {
	return s3store.Config{
		Endpoint:  srv.Endpoint,
		Bucket:    srv.Bucket,
		Prefix:    "t/" + storagetest.Name(t)[:16] + "/",
		Region:    srv.Region,
		AccessKey: srv.AccessKey,
		SecretKey: srv.SecretKey,
		Insecure:  true,
		PathStyle: true,
		PartSize:  s3store.MinPartSize,
	}
}

func open(t *testing.T, cfg s3store.Config) *s3store.Store {
	t.Helper()
	s, err := s3store.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var ctx = context.Background()

// TestContract runs the storage contract against versitygw.
func TestContract(t *testing.T) {
	srv := s3test.Start(t)
	storagetest.Run(t, func(t *testing.T) storage.Backend { return open(t, config(t, srv)) })
}

// keys lists the objects and the incomplete multipart uploads under
// prefix, straight from the server.
func keys(t *testing.T, c *minio.Client, bucket, prefix string) (objects, uploads []string) {
	t.Helper()
	for o := range c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		objects = append(objects, o.Key)
	}
	for u := range c.ListIncompleteUploads(ctx, bucket, prefix, true) {
		if u.Err != nil {
			t.Fatal(u.Err)
		}
		uploads = append(uploads, u.Key)
	}
	return objects, uploads
}

// TestServerSide checks, behind the backend's back, what the S3 server
// holds at each step of multipart uploads: no object before Commit,
// nothing at all after Abort or a wrong size, an abandoned upload until
// Sweep aborts it, and the count Sweep reports.
func TestServerSide(t *testing.T) {
	srv := s3test.Start(t)
	c := srv.Client(t)
	const part = s3store.MinPartSize
	data := bytes.Repeat([]byte("0123456789abcdef"), (2*part+1000)/16)

	t.Run("commit", func(t *testing.T) {
		cfg := config(t, srv)
		s := open(t, cfg)
		name := storagetest.Name(t)
		w, err := s.Create(ctx, name, int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		objects, uploads := keys(t, c, srv.Bucket, cfg.Prefix)
		if len(objects) != 0 || len(uploads) != 1 {
			t.Fatalf("before Commit: objects %q, uploads %q; want none and one", objects, uploads)
		}
		if err := w.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		objects, uploads = keys(t, c, srv.Bucket, cfg.Prefix)
		if len(objects) != 1 || objects[0] != cfg.Prefix+name || len(uploads) != 0 {
			t.Fatalf("after Commit: objects %q, uploads %q; want %q and none", objects, uploads, cfg.Prefix+name)
		}
	})

	for _, tc := range []struct {
		name string
		end  func(w storage.Writer) error
	}{
		{"abort", func(w storage.Writer) error { return w.Abort() }},
		{"wrong size", func(w storage.Writer) error {
			if err := w.Commit(ctx); err == nil {
				return io.ErrUnexpectedEOF
			}
			return nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config(t, srv)
			s := open(t, cfg)
			w, err := s.Create(ctx, storagetest.Name(t), int64(len(data)+1))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(data); err != nil {
				t.Fatal(err)
			}
			if err := tc.end(w); err != nil {
				t.Fatal(err)
			}
			if objects, uploads := keys(t, c, srv.Bucket, cfg.Prefix); len(objects)+len(uploads) != 0 {
				t.Fatalf("left behind: objects %q, uploads %q", objects, uploads)
			}
		})
	}

	t.Run("sweep", func(t *testing.T) {
		cfg := config(t, srv)
		s := open(t, cfg)
		w, err := s.Create(ctx, storagetest.Name(t), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		// w is abandoned. Someone else's upload in the bucket, outside
		// the prefix, is not Sweep's business.
		otherKey := "elsewhere/" + storagetest.Name(t)
		other, err := minio.Core{Client: c}.NewMultipartUpload(ctx, srv.Bucket, otherKey, minio.PutObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer minio.Core{Client: c}.AbortMultipartUpload(ctx, srv.Bucket, otherKey, other)
		n, err := s.Sweep(ctx, time.Now().Add(time.Minute))
		if err != nil || n != 1 {
			t.Fatalf("Sweep = %d, %v; want 1", n, err)
		}
		if objects, uploads := keys(t, c, srv.Bucket, cfg.Prefix); len(objects)+len(uploads) != 0 {
			t.Fatalf("left behind: objects %q, uploads %q", objects, uploads)
		}
		if _, uploads := keys(t, c, srv.Bucket, "elsewhere/"); len(uploads) != 1 {
			t.Fatalf("Sweep touched an upload outside its prefix: %q", uploads)
		}
	})
}

// rangeLog records the Range header of every GET.
type rangeLog struct {
	mu     sync.Mutex
	ranges []string
}

func (l *rangeLog) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet && r.URL.Query().Get("uploads") == "" {
		l.mu.Lock()
		l.ranges = append(l.ranges, r.Header.Get("Range"))
		l.mu.Unlock()
	}
	return http.DefaultTransport.RoundTrip(r)
}

// TestRangedReads checks that ReadAt and a Read after Seek ask the server
// for the bytes wanted (a Range header), instead of reading the object
// from its start.
func TestRangedReads(t *testing.T) {
	srv := s3test.Start(t)
	log := new(rangeLog)
	cfg := config(t, srv)
	cfg.Transport = log
	s := open(t, cfg)
	name := storagetest.Name(t)
	data := bytes.Repeat([]byte("x"), 1<<20)
	w, err := s.Create(ctx, name, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	if err := w.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	o, err := s.Open(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	log.mu.Lock()
	log.ranges = nil
	log.mu.Unlock()
	if _, err := o.ReadAt(make([]byte, 100), 500_000); err != nil {
		t.Fatal(err)
	}
	if _, err := o.Seek(900_000, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(o, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	got := strings.Join(log.ranges, ",")
	if got != "bytes=500000-500099,bytes=900000-" {
		t.Fatalf("GET ranges %q, want bytes=500000-500099 then bytes=900000-", got)
	}
}

// TestNew checks the configuration New refuses.
func TestNew(t *testing.T) {
	good := s3store.Config{Endpoint: "127.0.0.1:9000", Bucket: "b", AccessKey: "a", SecretKey: "s"}
	if _, err := s3store.New(good); err != nil {
		t.Fatalf("good config refused: %v", err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*s3store.Config)
		want   string
	}{
		{"no endpoint", func(c *s3store.Config) { c.Endpoint = "" }, "endpoint"},
		{"scheme", func(c *s3store.Config) { c.Endpoint = "https://s3.example.com" }, "endpoint"},
		{"no bucket", func(c *s3store.Config) { c.Bucket = "" }, "bucket"},
		{"leading slash", func(c *s3store.Config) { c.Prefix = "/x/" }, "prefix"},
		{"dot dot", func(c *s3store.Config) { c.Prefix = "a/../b/" }, "prefix"},
		{"control", func(c *s3store.Config) { c.Prefix = "a\n" }, "prefix"},
		{"key without secret", func(c *s3store.Config) { c.SecretKey = "" }, "secret key"},
		{"small part", func(c *s3store.Config) { c.PartSize = 1 << 20 }, "part size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.mutate(&c)
			_, err := s3store.New(c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error about %s", err, tc.want)
			}
		})
	}
}

// partLog records the UploadPart requests: part number and the length
// the request declares for the part (minio-go's streaming signature
// sends it as X-Amz-Decoded-Content-Length).
type partLog struct {
	mu    sync.Mutex
	parts []string
	// fail, when not nil, answers the part requests it returns true for
	// after reading failAfter bytes of the body: with an error, or with
	// failStatus when it is not 0.
	fail       func(part string) bool
	failAfter  int64
	failStatus int
}

func (l *partLog) RoundTrip(r *http.Request) (*http.Response, error) {
	part := r.URL.Query().Get("partNumber")
	if r.Method != http.MethodPut || part == "" {
		return http.DefaultTransport.RoundTrip(r)
	}
	declared := r.Header.Get("X-Amz-Decoded-Content-Length")
	if declared == "" {
		declared = strconv.FormatInt(r.ContentLength, 10)
	}
	l.mu.Lock()
	l.parts = append(l.parts, part+":"+declared)
	fail := l.fail != nil && l.fail(part)
	l.mu.Unlock()
	if !fail {
		return http.DefaultTransport.RoundTrip(r)
	}
	io.CopyN(io.Discard, r.Body, l.failAfter)
	r.Body.Close()
	if l.failStatus == 0 {
		return nil, errors.New("injected failure")
	}
	body := "<Error><Code>InternalError</Code><Message>injected failure</Message></Error>"
	return &http.Response{
		StatusCode: l.failStatus, Status: http.StatusText(l.failStatus),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {"application/xml"}},
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)), Request: r,
	}, nil
}

func (l *partLog) requests() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.parts...)
}

// TestStreamedParts checks that an object larger than 1 MiB goes up as
// parts of exactly their size, each request declaring it, that the
// stored object is the bytes written, and that sending a part allocates
// far less than the part: parts are streamed, not buffered. (What it
// allocates is minio-go's: over plain HTTP, the signature of every 64 KiB
// chunk.)
func TestStreamedParts(t *testing.T) {
	srv := s3test.Start(t)
	const part = s3store.MinPartSize
	for _, tc := range []struct {
		size  int
		parts []int
	}{
		{1<<20 + 1, []int{1<<20 + 1}},
		{part, []int{part}},
		{part + 1, []int{part, 1}},
		{3*part - 7, []int{part, part, part - 7}},
	} {
		t.Run(strconv.Itoa(tc.size), func(t *testing.T) {
			log := new(partLog)
			cfg := config(t, srv)
			cfg.Transport = log
			s := open(t, cfg)
			name := storagetest.Name(t)
			data := make([]byte, tc.size)
			for i := range data {
				data[i] = byte(i * 7 / 3)
			}
			w, err := s.Create(ctx, name, int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			// The first part (or the whole object when it is smaller),
			// with the allocations it costs, then the rest.
			first := min(len(data), part)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			if err := writeChunks(w, data[:first]); err != nil {
				t.Fatal(err)
			}
			runtime.ReadMemStats(&after)
			if err := writeChunks(w, data[first:]); err != nil {
				t.Fatal(err)
			}
			if err := w.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if got := after.TotalAlloc - before.TotalAlloc; got > part/2 {
				t.Errorf("writing a part of %d bytes allocated %d bytes; want under half a part (no part buffer)", first, got)
			}
			var want []string
			for i, n := range tc.parts {
				want = append(want, strconv.Itoa(i+1)+":"+strconv.Itoa(n))
			}
			if got := log.requests(); strings.Join(got, ",") != strings.Join(want, ",") {
				t.Errorf("part requests (number:declared length) %q, want %q", got, want)
			}
			o, err := s.Open(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			got, err := io.ReadAll(o)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("stored %d bytes differ from the %d written", len(got), len(data))
			}
		})
	}
}

// writeChunks writes data in chunks of 100,003 bytes, which straddle the
// parts' boundaries.
func writeChunks(w io.Writer, data []byte) error {
	for len(data) > 0 {
		n := min(len(data), 100_003)
		if _, err := w.Write(data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// TestPartFailure checks that an UploadPart that fails mid-stream, on the
// network or with an error status, fails the Write at once, is not
// retried (its bytes are gone), and leaves nothing on the server.
func TestPartFailure(t *testing.T) {
	srv := s3test.Start(t)
	c := srv.Client(t)
	const part = s3store.MinPartSize
	data := bytes.Repeat([]byte("0123456789abcdef"), 3*part/16)
	for _, tc := range []struct {
		name   string
		status int
	}{
		{"network", 0},
		{"status 500", http.StatusInternalServerError},
		{"status 503", http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := &partLog{fail: func(p string) bool { return p == "2" }, failAfter: 1 << 20, failStatus: tc.status}
			cfg := config(t, srv)
			cfg.Transport = log
			s := open(t, cfg)
			w, err := s.Create(ctx, storagetest.Name(t), int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			n, err := io.Copy(w, bytes.NewReader(data))
			if err == nil || !strings.Contains(err.Error(), "part 2") {
				t.Fatalf("Write: %v, want the failure of part 2", err)
			}
			if n >= 2*part {
				t.Fatalf("%d bytes taken after part 2 failed", n)
			}
			if _, err := w.Write(data[:1]); err == nil {
				t.Fatal("Write after a failed part succeeded")
			}
			if err := w.Commit(ctx); err == nil {
				t.Fatal("Commit after a failed part succeeded")
			}
			if err := w.Abort(); err != nil {
				t.Fatal(err)
			}
			if got := log.requests(); strings.Join(got, ",") != "1:5242880,2:5242880" {
				t.Fatalf("part requests %q, want parts 1 and 2 once each", got)
			}
			if objects, uploads := keys(t, c, srv.Bucket, cfg.Prefix); len(objects)+len(uploads) != 0 {
				t.Fatalf("left behind: objects %q, uploads %q", objects, uploads)
			}
		})
	}
}

// TestEndMidPart checks the ends of an upload cut off in the middle of a
// part's request: Abort, or the upload's context ending (the client went
// away) and the Write after it failing. Either leaves nothing behind.
func TestEndMidPart(t *testing.T) {
	srv := s3test.Start(t)
	c := srv.Client(t)
	const part = s3store.MinPartSize
	data := bytes.Repeat([]byte("x"), part+part/2)
	for _, tc := range []struct {
		name string
		end  func(w storage.Writer, cancel context.CancelFunc) error
	}{
		{"abort", func(w storage.Writer, _ context.CancelFunc) error { return w.Abort() }},
		{"context", func(w storage.Writer, cancel context.CancelFunc) error {
			cancel()
			if _, err := w.Write(data[:1]); err == nil {
				return errors.New("Write after the context ended succeeded")
			}
			return w.Abort()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config(t, srv)
			s := open(t, cfg)
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			w, err := s.Create(cctx, storagetest.Name(t), 2*part)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(data); err != nil {
				t.Fatal(err)
			}
			if err := tc.end(w, cancel); err != nil {
				t.Fatal(err)
			}
			if objects, uploads := keys(t, c, srv.Bucket, cfg.Prefix); len(objects)+len(uploads) != 0 {
				t.Fatalf("left behind: objects %q, uploads %q", objects, uploads)
			}
		})
	}
}

// TestTwoWriters: two uploads of one name, both created before either
// commits, in one PUT (small) and as multipart uploads: the first
// commits, the second's Commit is ErrExists and the object stays the
// first's. The second used to replace the first.
func TestTwoWriters(t *testing.T) {
	srv := s3test.Start(t)
	s := open(t, config(t, srv))
	for _, size := range []int{1000, 2*s3store.MinPartSize + 10} {
		name := storagetest.Name(t)
		var ws [2]storage.Writer
		for i := range ws {
			w, err := s.Create(ctx, name, int64(size))
			if err != nil {
				t.Fatal(err)
			}
			ws[i] = w
			if _, err := w.Write(bytes.Repeat([]byte{'a' + byte(i)}, size)); err != nil {
				t.Fatal(err)
			}
		}
		if err := ws[0].Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if err := ws[1].Commit(ctx); !errors.Is(err, storage.ErrExists) {
			t.Errorf("%d bytes: the second Commit of one name: %v, want ErrExists", size, err)
		}
		ws[1].Abort()
		o, err := s.Open(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(o)
		o.Close()
		if err != nil || !bytes.Equal(got, bytes.Repeat([]byte{'a'}, size)) {
			t.Errorf("%d bytes: the first committed object was replaced (%v)", size, err)
		}
	}
}

// dropProxy is an HTTP proxy on loopback in front of the S3 server. It
// forwards every request as it came (the Host header too, which the
// signature covers) and passes the answer back, except for the first
// request that drop selects: that one reaches the server, which answers
// it, and the proxy then resets the client's connection instead of
// passing the answer on, as a network that loses an answer does.
type dropProxy struct {
	upstream string
	drop     func(r *http.Request) bool
	rt       *http.Transport

	mu      sync.Mutex
	dropped []string // the requests whose answers were lost: method, query and status
	seen    []string // every request that drop selected, lost or not
}

// startDropProxy serves p on a port of PORTS and returns its address.
func startDropProxy(t *testing.T, p *dropProxy) string {
	t.Helper()
	p.rt = &http.Transport{DisableCompression: true}
	t.Cleanup(p.rt.CloseIdleConnections)
	var l net.Listener
	var err error
	for port := 31600; port < 31700; port++ {
		if l, err = net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("no free port in 31600-31699 for the proxy: %v", err)
	}
	srv := &http.Server{Handler: p}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

func (p *dropProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.URL.Scheme = "http"
	out.URL.Host = p.upstream
	out.Host = r.Host
	resp, err := p.rt.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	p.mu.Lock()
	selected := p.drop(r)
	what := r.Method + " " + r.URL.RawQuery + " " + strconv.Itoa(resp.StatusCode)
	if selected {
		p.seen = append(p.seen, what)
	}
	lose := selected && len(p.dropped) == 0
	if lose {
		p.dropped = append(p.dropped, what)
	}
	p.mu.Unlock()
	if lose {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err)
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetLinger(0) // a reset, not an orderly close
		}
		conn.Close()
		return
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	w.Write(body)
}

func (p *dropProxy) log() (dropped, seen []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.dropped), slices.Clone(p.seen)
}

// TestCommitAnswerLost: the answer to the request that makes the object
// visible (a small object's PUT, a large one's CompleteMultipartUpload)
// is lost after the server stored the object, and minio-go sends the
// request again. The retry is refused (If-None-Match: * finds the object
// the first attempt stored, or the upload is gone), yet the object is
// this writer's: Commit succeeds and the object holds the bytes written.
// Commit used to fail with ErrExists, so the gateway refused an upload
// whose bytes were stored, and left the object behind.
func TestCommitAnswerLost(t *testing.T) {
	srv := s3test.Start(t)
	c := srv.Client(t)
	for _, tc := range []struct {
		name string
		size int
		// commit selects the request that makes the object visible.
		commit func(r *http.Request) bool
	}{
		{"put", 1000, func(r *http.Request) bool {
			return r.Method == http.MethodPut && r.Header.Get("If-None-Match") == "*"
		}},
		{"complete multipart", 2*s3store.MinPartSize + 10, func(r *http.Request) bool {
			return r.Method == http.MethodPost && r.URL.Query().Has("uploadId")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &dropProxy{upstream: srv.Endpoint, drop: tc.commit}
			cfg := config(t, srv)
			cfg.Endpoint = startDropProxy(t, p)
			s := open(t, cfg)
			name := storagetest.Name(t)
			data := bytes.Repeat([]byte("mimi"), tc.size/4)
			data = append(data, make([]byte, tc.size-len(data))...)
			w := written(t, s, name, data)
			commitErr := w.Commit(ctx)
			dropped, seen := p.log()
			if len(dropped) != 1 || !strings.HasSuffix(dropped[0], " 200") || len(seen) < 2 {
				t.Fatalf("the proxy lost answers %q of requests %q: want the first commit request answered 200 and lost, then a retry", dropped, seen)
			}
			t.Logf("lost %q of %q", dropped, seen)
			if commitErr != nil {
				t.Fatalf("Commit after a lost answer to a stored object: %v", commitErr)
			}
			o, err := s.Open(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(o)
			o.Close()
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("the object holds %d bytes (%v), want the %d written", len(got), err, len(data))
			}
			if objects, uploads := keys(t, c, srv.Bucket, cfg.Prefix); len(objects) != 1 || len(uploads) != 0 {
				t.Fatalf("objects %q, uploads %q; want the object alone", objects, uploads)
			}
		})
	}
}

// written creates the object name of s and writes data, all of it, to
// the Writer it returns, not committed.
func written(t *testing.T, s *s3store.Store, name string, data []byte) storage.Writer {
	t.Helper()
	w, err := s.Create(ctx, name, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	return w
}

// openBehind serves p on a loopback port for the test and opens a Store
// of srv's bucket whose requests go through it.
func openBehind(t *testing.T, srv *s3test.Server, p *holdProxy) (*s3store.Store, s3store.Config) {
	t.Helper()
	t.Cleanup(p.rt.CloseIdleConnections)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: p}
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	cfg := config(t, srv)
	cfg.Endpoint = l.Addr().String()
	return open(t, cfg), cfg
}

// holdProxy is an HTTP proxy on loopback in front of the S3 server, as a
// load balancer that times out: the requests hold selects are answered
// 504 Gateway Timeout at once, and the first of them is kept and sent on
// to the server only when release is called, as an upstream that goes on
// processing a request after the proxy gave up on it. Every other request
// is forwarded as it came.
type holdProxy struct {
	upstream string
	hold     func(r *http.Request) bool
	slowDown bool // answer S3's 503 SlowDown, a refusal, instead of 504
	rt       *http.Transport

	mu   sync.Mutex
	held *http.Request // the first request held, its body read
	n    int           // requests answered 504
}

func (p *holdProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	out := r.Clone(context.Background())
	out.RequestURI = ""
	out.URL.Scheme = "http"
	out.URL.Host = p.upstream
	out.Host = r.Host
	if p.hold(r) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		out.Body = io.NopCloser(bytes.NewReader(body))
		p.mu.Lock()
		if p.held == nil {
			p.held = out
		}
		p.n++
		p.mu.Unlock()
		if p.slowDown {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`)
			return
		}
		http.Error(w, "upstream timed out", http.StatusGatewayTimeout)
		return
	}
	resp, err := p.rt.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

// release sends the first held request to the server and returns its
// status.
func (p *holdProxy) release(t *testing.T) int {
	t.Helper()
	p.mu.Lock()
	r := p.held
	p.mu.Unlock()
	if r == nil {
		t.Fatal("no request was held")
	}
	resp, err := p.rt.RoundTrip(r)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestCommitGatewayTimeout: the request that makes the object visible
// (a small object's PUT, a large one's CompleteMultipartUpload) is
// answered 504 by a load balancer in front of the store, on every
// attempt, and the store processes the first one afterwards. A 5xx does
// not say that the store did not, and will not, store the object: Commit
// must report ErrUncertain, so that the gateway keeps the name recorded
// and its sweeps delete the bytes when they land. Commit used to return a
// plain error, on which the gateway deletes the (absent) object and
// forgets its name at once: the object stored afterwards stayed in the
// bucket, with no record and no sweep to remove it.
func TestCommitGatewayTimeout(t *testing.T) {
	srv := s3test.Start(t)
	c := srv.Client(t)
	for _, tc := range []struct {
		name   string
		size   int
		commit func(r *http.Request) bool
		// lands: the held request stores the object (a multipart
		// upload is aborted by the failed Commit, which the proxy
		// passes on before it).
		lands bool
	}{
		{"put", 1000, func(r *http.Request) bool {
			return r.Method == http.MethodPut && r.Header.Get("If-None-Match") == "*"
		}, true},
		{"complete multipart", 2*s3store.MinPartSize + 10, func(r *http.Request) bool {
			return r.Method == http.MethodPost && r.URL.Query().Has("uploadId")
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &holdProxy{upstream: srv.Endpoint, hold: tc.commit, rt: &http.Transport{DisableCompression: true}}
			s, cfg := openBehind(t, srv, p)
			name := storagetest.Name(t)
			data := bytes.Repeat([]byte{'m'}, tc.size)
			w := written(t, s, name, data)
			commitErr := w.Commit(ctx)
			w.Abort()
			p.mu.Lock()
			held := p.n
			p.mu.Unlock()
			if held == 0 {
				t.Fatal("the commit request was not held")
			}
			if commitErr == nil {
				t.Fatal("Commit answered 504 succeeded")
			}
			if !errors.Is(commitErr, storage.ErrUncertain) {
				t.Errorf("Commit answered 504: %v, want ErrUncertain", commitErr)
			}
			if !tc.lands {
				return
			}
			// The store processes the request the proxy gave up on:
			// the object lands after Commit failed.
			if status := p.release(t); status != http.StatusOK {
				t.Fatalf("the held request was answered %d", status)
			}
			if objects, _ := keys(t, c, srv.Bucket, cfg.Prefix); len(objects) != 1 {
				t.Fatalf("objects %q after the held request, want the one it stored", objects)
			}
		})
	}
}

// TestCommitSlowDown: S3's 503 SlowDown refuses the commit request before
// processing it, on every attempt: Commit fails without ErrUncertain, so
// that the upload releases its reservation at once rather than holding
// its place in the quotas until its deadline.
func TestCommitSlowDown(t *testing.T) {
	srv := s3test.Start(t)
	p := &holdProxy{upstream: srv.Endpoint, slowDown: true, rt: &http.Transport{DisableCompression: true},
		hold: func(r *http.Request) bool { return r.Method == http.MethodPut && r.Header.Get("If-None-Match") == "*" }}
	s, _ := openBehind(t, srv, p)
	w, err := s.Create(ctx, storagetest.Name(t), 10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	err = w.Commit(ctx)
	w.Abort()
	if err == nil || errors.Is(err, storage.ErrUncertain) {
		t.Fatalf("Commit refused with SlowDown: %v, want a failure that is not ErrUncertain", err)
	}
}

// TestSmallUploadsMemory: many uploads of small objects (up to 1 MiB,
// sent by one PUT on commit) that all stall before their last byte, as
// slow or hostile clients can keep them for the whole upload deadline.
// The bytes they hold in memory must stay bounded: beyond the budget for
// such buffers, a small object streams as a multipart upload of one part,
// like a large one. Every upload still commits and reads back. The
// buffers used to be unbounded: 1 MiB per stalled upload, so that a
// member sending the bytes of a few thousand uploads, and holding back
// the last of each, exhausted the gateway's memory.
func TestSmallUploadsMemory(t *testing.T) {
	srv := s3test.Start(t)
	s := open(t, config(t, srv))
	const n, size = 128, 1 << 20
	chunk := bytes.Repeat([]byte{'s'}, size-1)
	ws := make([]storage.Writer, n)
	names := make([]string, n)
	t.Cleanup(func() {
		for _, w := range ws {
			if w != nil {
				w.Abort()
			}
		}
	})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range ws {
		names[i] = storagetest.Name(t)
		w, err := s.Create(ctx, names[i], size)
		if err != nil {
			t.Fatal(err)
		}
		ws[i] = w
		if _, err := w.Write(chunk); err != nil {
			t.Fatalf("upload %d: %v", i, err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	held := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d stalled uploads of %d bytes hold %d MiB", n, size, held>>20)
	// The 64 MiB budget, and what the requests of the streamed uploads
	// hold (over plain HTTP, minio-go's signed chunks); 1 MiB each
	// would be 128.
	if held > 104<<20 {
		t.Errorf("%d stalled uploads of %d bytes hold %d MiB of heap, want at most 104", n, size, held>>20)
	}
	for i, w := range ws {
		if _, err := w.Write([]byte{byte(i)}); err != nil {
			t.Fatalf("upload %d: last byte: %v", i, err)
		}
		if err := w.Commit(ctx); err != nil {
			t.Fatalf("upload %d: commit: %v", i, err)
		}
		ws[i] = nil
	}
	for _, i := range []int{0, n - 1} {
		o, err := s.Open(ctx, names[i])
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(o)
		o.Close()
		if err != nil || len(got) != size || !bytes.Equal(got[:size-1], chunk) || got[size-1] != byte(i) {
			t.Fatalf("upload %d read back %d bytes (%v)", i, len(got), err)
		}
	}
}
