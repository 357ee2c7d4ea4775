package caddymodule

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/caddymodule/internal/caddyopts"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// Attachment limits of the configuration.
const (
	// maxAttachmentSize caps max_size: the largest content_length the
	// wire allows (docs/protocol.md §1.2).
	maxAttachmentSize = 1<<30 - 9
	// attachmentsDir is the local backend's default root under data_dir.
	attachmentsDir = "attachments"
	// sweepInterval is how often the attachment sweeper runs.
	sweepInterval = 5 * time.Minute
	// uploadIdleTimeout bounds the wait for each piece of an upload's
	// content: an upload may take long, but may not stall.
	uploadIdleTimeout = 30 * time.Second
	// minCommitGrace and maxCommitGrace bound commit_grace: above the
	// backends' own bounds on a commit's answer (s3's 2 minutes, the
	// forward backend's default 30 s), and no longer than a day of
	// sweeps deleting a name's bytes again.
	minCommitGrace = 10 * time.Minute
	maxCommitGrace = 24 * time.Hour
	// maxUploadsInProgress caps max_uploads_in_progress.
	maxUploadsInProgress = 1000
	// uploadSlotRetryAfter is the Retry-After, in seconds, of an upload
	// refused because its uploader has max_uploads_in_progress uploads in
	// progress: an upload lasts seconds or more, and a refusal costs the
	// client only its header.
	uploadSlotRetryAfter = "5"
)

// Attachments configures the attachment service of the Delivery Service
// (docs/protocol.md §6). It is on by default, with the defaults below and
// the local backend under data_dir/attachments.
type Attachments struct {
	// Disabled turns attachments off: every attachment endpoint answers
	// 501 not_implemented. Default: false.
	Disabled bool `json:"disabled,omitempty"`

	// MaxSize is the largest attachment ciphertext accepted, in bytes;
	// a larger content_length is answered 413 too_large before any
	// content is read. Default: 100 MiB; at most 1,073,741,815.
	MaxSize int64 `json:"max_size,omitempty"`

	// GroupQuotaBytes and GroupQuotaCount bound what one group holds
	// (uploads and copies into it, pending uploads included); an upload
	// or copy that would pass either is answered 413 quota_exceeded.
	// Default: no bound.
	GroupQuotaBytes int64 `json:"group_quota_bytes,omitempty"`
	GroupQuotaCount int64 `json:"group_quota_count,omitempty"`

	// UploaderQuotaBytes and UploaderQuotaCount bound what one client
	// (the client URI of the uploader or copier) holds in every group.
	// Default: no bound.
	UploaderQuotaBytes int64 `json:"uploader_quota_bytes,omitempty"`
	UploaderQuotaCount int64 `json:"uploader_quota_count,omitempty"`

	// Retention is how long an attachment is kept after its upload or
	// copy; then the sweeper deletes its record and, with the last
	// reference, its bytes. Default: 30 days.
	Retention caddy.Duration `json:"retention,omitempty"`

	// UploadDeadline bounds one upload from its header to its last byte;
	// a reservation left by an upload that never finished is removed
	// after it. Default: 1h; 1m to 24h.
	UploadDeadline caddy.Duration `json:"upload_deadline,omitempty"`

	// CommitGrace is how long after an upload's deadline its object's
	// name stays recorded when the storage's commit of its bytes had no
	// answer (a timeout, a connection lost): each sweep until then
	// deletes whatever bytes the storage made visible late, and the
	// first sweep after it forgets the name. It must exceed the longest
	// a backend may still take to store an object once the gateway
	// stopped waiting. The grace of the gateway that took an upload
	// holds for it (recorded with its reservation). Default: 1h; 10m to
	// 24h.
	CommitGrace caddy.Duration `json:"commit_grace,omitempty"`

	// AllowDeleteByMembers lets any member of the group delete an
	// attachment. Default: false, only its uploader may (and expiry).
	AllowDeleteByMembers bool `json:"allow_delete_by_members,omitempty"`

	// MaxUploadsInProgress bounds the uploads one client (the client URI
	// of the uploader) may have in progress at once on this gateway,
	// from the check of its header to its answer; one more is answered
	// 429 rate_limited with Retry-After before anything is stored. The
	// count is per gateway process (the sites and configs of one
	// data_dir count together), not per cluster. Default: 4; at most
	// 1000.
	MaxUploadsInProgress int `json:"max_uploads_in_progress,omitempty"`

	// Storage is the backend that keeps the ciphertexts, a module of the
	// http.mimi.attachments namespace named by its "backend" key.
	// Default: {"backend": "local"} under data_dir/attachments.
	Storage json.RawMessage `json:"storage,omitempty" caddy:"namespace=http.mimi.attachments inline_key=backend"`
}

// validate checks the options; every error names the bad one.
func (a *Attachments) validate() error {
	if a == nil {
		return nil
	}
	if a.MaxSize < 0 || a.MaxSize > maxAttachmentSize {
		return fmt.Errorf("mimi: attachments max_size: %d is outside 1..%d bytes", a.MaxSize, maxAttachmentSize)
	}
	for name, v := range map[string]int64{"group_quota bytes": a.GroupQuotaBytes, "group_quota count": a.GroupQuotaCount,
		"uploader_quota bytes": a.UploaderQuotaBytes, "uploader_quota count": a.UploaderQuotaCount} {
		if v < 0 {
			return fmt.Errorf("mimi: attachments %s: %d is negative", name, v)
		}
	}
	if a.Retention < 0 {
		return fmt.Errorf("mimi: attachments retention: %s is negative", time.Duration(a.Retention))
	}
	if d := time.Duration(a.UploadDeadline); d != 0 && (d < time.Minute || d > 24*time.Hour) {
		return fmt.Errorf("mimi: attachments upload_deadline: %s is outside 1m..24h", d)
	}
	if d := time.Duration(a.CommitGrace); d != 0 && (d < minCommitGrace || d > maxCommitGrace) {
		return fmt.Errorf("mimi: attachments commit_grace: %s is outside %s..%s", d, minCommitGrace, maxCommitGrace)
	}
	if n := a.MaxUploadsInProgress; n < 0 || n > maxUploadsInProgress {
		return fmt.Errorf("mimi: attachments max_uploads_in_progress: %d is outside 1..%d", n, maxUploadsInProgress)
	}
	return nil
}

// validateAttachmentStorage checks that with store postgres the
// attachments are off or kept where every gateway reaches them. The
// gateways on one database serve each other's attachment records: bytes
// that only one of them holds, under its own data_dir (the default
// storage, or storage local without a root), would be 404 on the others,
// and never deleted when they expire there.
func (g *Gateway) validateAttachmentStorage() error {
	if g.Store == nil || g.Store.Backend != storePostgres {
		return nil
	}
	a := g.Attachments
	if a != nil && a.Disabled {
		return nil
	}
	if a != nil && a.Storage != nil {
		var local struct {
			Backend string `json:"backend"`
			Root    string `json:"root"`
		}
		if json.Unmarshal(a.Storage, &local) != nil || local.Backend != "local" || local.Root != "" {
			return nil // another backend, or Caddy's LoadModule reports it
		}
	}
	return errors.New("mimi: attachments: with store postgres, name the storage the gateways have in common: " +
		"storage s3, storage forward, or storage local with a root they all mount " +
		"(or switch attachments off: `attachments off`, in JSON \"disabled\": true)")
}

// dataDirDefaulter is a backend whose default location is under the
// gateway's data directory, which it learns after it is provisioned.
type dataDirDefaulter interface {
	setDataDir(dataDir string) error
}

// provisionAttachments builds the attachment service of g.ds, loading the
// storage module, and starts (or holds) the data directory's sweeper.
func (g *Gateway) provisionAttachments(ctx caddy.Context) error {
	a := g.Attachments
	if a == nil {
		a = new(Attachments)
	}
	if a.Disabled {
		return nil
	}
	var backend storage.Backend
	if a.Storage == nil {
		// Not with store postgres: validateAttachmentStorage refused it.
		l := new(LocalStorage)
		if err := l.setDataDir(g.DataDir); err != nil {
			return fmt.Errorf("mimi: attachments storage: %w", err)
		}
		backend = l
	} else {
		if err := missingClusterStorageRaw(a.Storage); err != nil {
			return fmt.Errorf("mimi: %w", err)
		}
		// From a copy: LoadModule clears the field it loads, and Caddy
		// calls Validate after Provision, whose storage check
		// (validateAttachmentStorage) must still see what was named.
		loaded := *a
		mod, err := ctx.LoadModule(&loaded, "Storage")
		if err != nil {
			return fmt.Errorf("mimi: attachments storage: %w", err)
		}
		b, ok := mod.(storage.Backend)
		if !ok {
			return fmt.Errorf("mimi: attachments storage: module %T is not a storage backend", mod)
		}
		if d, ok := mod.(dataDirDefaulter); ok {
			if err := d.setDataDir(g.DataDir); err != nil {
				return fmt.Errorf("mimi: attachments storage: %w", err)
			}
		}
		backend = b
	}
	svc := &ds.Attachments{
		Store:                g.svc.Store(),
		Backend:              backend,
		MaxSize:              a.MaxSize,
		Retention:            time.Duration(a.Retention),
		UploadDeadline:       time.Duration(a.UploadDeadline),
		CommitGrace:          time.Duration(a.CommitGrace),
		AllowDeleteByMembers: a.AllowDeleteByMembers,
		MaxUploadsInProgress: a.MaxUploadsInProgress,
		Quota: store.AttachmentQuota{GroupBytes: a.GroupQuotaBytes, GroupCount: a.GroupQuotaCount,
			UploaderBytes: a.UploaderQuotaBytes, UploaderCount: a.UploaderQuotaCount},
		Logger: g.sampled.Named("attachments"),
	}
	g.ds.Attachments = svc
	v, _, err := sweeperPool.LoadOrNew(g.DataDir, func() (caddy.Destructor, error) {
		return startSweeper(), nil
	})
	if err != nil {
		return fmt.Errorf("mimi: starting the attachment sweeper: %w", err)
	}
	// svc becomes the sweeper's current service when Caddy starts the
	// config (commit.go): a rejected config's backend is cleaned up by
	// Caddy and never swept with.
	g.sweeper = v.(*sweeper)
	g.sweeperHeld = true
	svc.Slots = &g.sweeper.slots
	register(ctx.GetMetricsRegistry(), g.logger, sweepStats{})
	return nil
}

// cleanupAttachments releases this config's hold on the sweeper.
func (g *Gateway) cleanupAttachments() error {
	if !g.sweeperHeld {
		return nil
	}
	g.sweeperHeld = false
	_, err := sweeperPool.Delete(g.DataDir)
	return err
}

// sweeperPool holds one attachment sweeper per data directory across
// handler instances and reloads, like senderPool. Its state is all in the
// store and the backend, so a restart resumes where it stopped.
var sweeperPool = caddy.NewUsagePool()

// sweeper runs the attachment service of the newest config every
// sweepInterval, and holds the data directory's counts of uploads in
// progress.
type sweeper struct {
	current atomic.Pointer[ds.Attachments]
	cancel  context.CancelFunc
	done    chan struct{}

	// slots counts the uploads in progress of every site and config of
	// the data directory, so that a reload, whose new config serves
	// while the old one's uploads still stream, or two sites of one
	// provider, do not each allow max_uploads_in_progress.
	slots ds.UploadSlots
	// slotRefusals counts the uploads refused because their uploader
	// had max_uploads_in_progress in progress, for metrics.
	slotRefusals atomic.Uint64

	// What the sweeps removed, and the sweeps that failed, for metrics.
	expired, objects, temporary, failures atomic.Uint64
}

// startSweeper starts a sweeper whose first sweep runs once a service is
// set.
func startSweeper() *sweeper {
	ctx, cancel := context.WithCancel(context.Background())
	s := &sweeper{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTimer(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			s.sweep(ctx, time.Now())
			t.Reset(sweepInterval)
		}
	}()
	return s
}

// sweep runs one sweep of the current service, counts and logs it.
func (s *sweeper) sweep(ctx context.Context, now time.Time) {
	a := s.current.Load()
	if a == nil {
		return
	}
	logger := a.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	st, err := a.Sweep(ctx, now)
	s.expired.Add(uint64(st.Expired))
	s.objects.Add(uint64(st.Objects))
	s.temporary.Add(uint64(st.Temporary))
	switch {
	case err != nil && ctx.Err() == nil:
		s.failures.Add(1)
		logger.Error("sweeping attachments", zap.Error(err))
	case st != (ds.SweepStats{}):
		logger.Info("swept attachments", zap.Int("expired", st.Expired),
			zap.Int("objects", st.Objects), zap.Int("temporary", st.Temporary))
	}
}

// Metrics of the attachment sweeper, labelled by data directory.
var (
	sweptDesc = prometheus.NewDesc("caddy_mimi_attachments_swept_total",
		"What the attachment sweeper removed: expired records (expired), objects whose bytes it deleted and whose names it forgot, each once (objects), temporary uploads of dead processes (temporary).",
		[]string{"data_dir", "kind"}, nil)
	sweepFailuresDesc = prometheus.NewDesc("caddy_mimi_attachments_sweep_failures_total",
		"Attachment sweeps that failed (store or storage unavailable); the next sweep retries.", []string{"data_dir"}, nil)
	uploadsInProgressDesc = prometheus.NewDesc("caddy_mimi_attachments_uploads_in_progress",
		"Attachment uploads in progress on this gateway, from the check of their uploader's max_uploads_in_progress to their answer.",
		[]string{"data_dir"}, nil)
	uploadsRefusedDesc = prometheus.NewDesc("caddy_mimi_attachments_uploads_refused_total",
		"Attachment uploads refused 429 because their uploader had max_uploads_in_progress uploads in progress.",
		[]string{"data_dir"}, nil)
)

// sweepStats collects the counters of every data directory's sweeper, and
// its uploads in progress and their refusals, at scrape time.
type sweepStats struct{}

// Describe implements prometheus.Collector.
func (sweepStats) Describe(ch chan<- *prometheus.Desc) {
	ch <- sweptDesc
	ch <- sweepFailuresDesc
	ch <- uploadsInProgressDesc
	ch <- uploadsRefusedDesc
}

// Collect implements prometheus.Collector.
func (sweepStats) Collect(ch chan<- prometheus.Metric) {
	sweeperPool.Range(func(key, value any) bool {
		s, ok := value.(*sweeper)
		if !ok {
			return true
		}
		dir, _ := key.(string)
		for kind, v := range map[string]*atomic.Uint64{"expired": &s.expired, "objects": &s.objects, "temporary": &s.temporary} {
			ch <- prometheus.MustNewConstMetric(sweptDesc, prometheus.CounterValue, float64(v.Load()), dir, kind)
		}
		ch <- prometheus.MustNewConstMetric(sweepFailuresDesc, prometheus.CounterValue, float64(s.failures.Load()), dir)
		ch <- prometheus.MustNewConstMetric(uploadsInProgressDesc, prometheus.GaugeValue, float64(s.slots.Total()), dir)
		ch <- prometheus.MustNewConstMetric(uploadsRefusedDesc, prometheus.CounterValue, float64(s.slotRefusals.Load()), dir)
		return true
	})
}

// Destruct stops the sweeper and waits for it.
func (s *sweeper) Destruct() error {
	s.cancel()
	<-s.done
	return nil
}

// serveUpload runs an attachment upload (docs/protocol.md §6): the
// DSRequest header, within the first maxUploadHeader bytes of the body, is
// decoded and authenticated and the member admitted; then the Delivery
// Service checks size and quota and streams the rest of the body into the
// backend. The upload is not held to max_body: it is bounded by the
// header's content_length (at most max_size), and the body must keep
// arriving (uploadIdleTimeout between reads) and end within the upload
// deadline.
func (g *Gateway) serveUpload(x *exchange) {
	if err := checkContentType(x.r, contentType); err != nil {
		g.refuse(x, err)
		return
	}
	head, err := g.readPrefix(x, maxUploadHeader)
	if err != nil {
		g.refuse(x, err)
		return
	}
	if err := x.rt.checkDSHeader(head); err != nil {
		x.closeAfter()
		g.refuse(x, err)
		return
	}
	ctx := x.r.Context()
	req, n, err := g.ds.AuthenticatePrefix(ctx, head)
	if err != nil {
		// A group hosted elsewhere: not_found here, the whole upload
		// streamed to its hub.
		if moh.DSErrorOf(err).Code != moh.CodeNotFound || !g.relayUpload(x, head) {
			x.closeAfter()
			g.refuse(x, err)
		}
		return
	}
	if cl := x.r.ContentLength; cl >= 0 && uint64(cl-int64(n)) != req.Body.Body.Upload.ContentLength {
		x.closeAfter()
		g.refuse(x, moh.Errorf(moh.CodeContentMismatch, "the body holds %d bytes of content, the header declares %d",
			cl-int64(n), req.Body.Body.Upload.ContentLength))
		return
	}
	if err := x.admitMember(ctx, req.GroupID, req.Member); err != nil {
		x.closeAfter()
		g.refuse(x, err)
		return
	}
	req.Source = x.adm.ClientIP
	deadline := ds.DefaultUploadDeadline
	if a := g.Attachments; a != nil && a.UploadDeadline > 0 {
		deadline = time.Duration(a.UploadDeadline)
	}
	body := &uploadBody{x: x, r: x.body(), end: time.Now().Add(deadline)}
	content := io.MultiReader(bytes.NewReader(head[n:]), body)
	resp, err := g.ds.Upload(ctx, req, content)
	body.stop()
	if err != nil {
		if moh.DSErrorOf(err).Code == moh.CodeRateLimited {
			// The uploader's uploads in progress are at
			// max_uploads_in_progress.
			x.w.Header().Set("Retry-After", uploadSlotRetryAfter)
			if g.sweeper != nil {
				g.sweeper.slotRefusals.Add(1)
			}
		}
		x.closeAfter() // the rest of a refused body is not read
		g.refuse(x, err)
		return
	}
	g.respond(x, resp)
}

// uploadBody is an upload's content after its header: each Read must
// return within uploadIdleTimeout, and the whole within the deadline end.
// Read errors become the DSErrors the gateway answers.
type uploadBody struct {
	x     *exchange
	r     io.Reader
	end   time.Time
	armed bool
}

// Read reads the body with a fresh read deadline.
func (u *uploadBody) Read(p []byte) (int, error) {
	d := time.Now().Add(uploadIdleTimeout)
	if u.end.Before(d) {
		d = u.end
	}
	if err := http.NewResponseController(u.x.w).SetReadDeadline(d); err == nil {
		u.armed = true
	}
	n, err := u.r.Read(p)
	switch {
	case err == nil, errors.Is(err, io.EOF):
		return n, err
	case errors.Is(err, os.ErrDeadlineExceeded):
		return n, moh.Errorf(moh.CodeBodyTimeout, "the upload stalled or outlasted its deadline")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return n, err // cut off: the service answers content_mismatch
	default:
		return n, &moh.Error{Code: moh.CodeMalformed, Message: "the body could not be read", Err: err}
	}
}

// stop clears the read deadline the upload set.
func (u *uploadBody) stop() {
	if u.armed {
		http.NewResponseController(u.x.w).SetReadDeadline(time.Time{}) //nolint:errcheck // best effort
	}
}

// serveDownload answers an attachment download (docs/protocol.md §6):
// 200 with the DSResponse attachment_content(8), its content streamed
// from the backend; with a Range header (classifyRange), 206 with the raw
// ciphertext bytes of the range as http.ServeContent serves ranges, 416
// when it is not satisfiable, or the 200 when it is ignored.
func (g *Gateway) serveDownload(x *exchange) {
	body, err := g.readBody(x, g.MaxBody, false)
	if err != nil {
		g.refuse(x, err)
		return
	}
	if err := x.rt.checkDSHeader(body); err != nil {
		g.refuse(x, err)
		return
	}
	ctx := x.r.Context()
	req, err := g.ds.Authenticate(ctx, body)
	if err != nil {
		if moh.DSErrorOf(err).Code != moh.CodeNotFound || !g.relayStream(x, body, bytes.NewReader(body), int64(len(body))) {
			g.refuse(x, err)
		}
		return
	}
	if err := x.admitMember(ctx, req.GroupID, req.Member); err != nil {
		g.refuse(x, err)
		return
	}
	req.Source = x.adm.ClientIP
	d, err := g.ds.Download(ctx, req)
	if err != nil {
		if moh.DSErrorOf(err).Code != moh.CodeNotFound || !g.relayStream(x, body, bytes.NewReader(body), int64(len(body))) {
			g.refuse(x, err)
		}
		return
	}
	defer d.Object.Close()
	h := x.w.Header()
	setAnswerHeaders(h)
	h.Set("ETag", `"`+hex.EncodeToString(d.ContentHash)+`"`)
	h.Set("Accept-Ranges", "bytes")
	if rh := x.r.Header.Get("Range"); rh != "" {
		switch answer, ranges := classifyRange(rh, d.Size); answer {
		case rangePartial:
			// servePartial reads the first bytes before the 206, as
			// below: a failure then is refused 503.
			if err := servePartial(x.w, x.r, ranges, d.Object, d.Size); err != nil {
				if ctx.Err() != nil {
					return // the client went away: nobody to answer, nothing to log
				}
				h.Del("ETag")
				h.Del("Accept-Ranges")
				g.refuse(x, moh.Errorf(moh.CodeBackendUnavailable, "reading the attachment range: %w", err))
			}
			return
		case rangeUnsatisfiable:
			refuseRange(x.w, d.Size)
			return
		}
		// rangeWhole and rangeRefused: the whole answer.
	}
	// The first bytes are read before the status is sent: a backend that
	// fails then (the forward backend's GET, which follows the HEAD of
	// Open) is answered 503 backend_unavailable, and logged, rather than
	// as a 200 cut off after its headers.
	buf := streamBuffers.Get().(*[]byte)
	defer streamBuffers.Put(buf)
	first := (*buf)[:min(d.Size, int64(len(*buf)))]
	// Read, not ReadAt: the s3 and forward backends answer a Read stream
	// with one GET, and each ReadAt with a ranged GET of its own (4,096 per
	// GiB through the buffer).
	if _, err := io.ReadFull(d.Object, first); err != nil {
		if ctx.Err() != nil {
			return // the client went away: nobody to answer, nothing to log
		}
		h.Del("ETag")
		h.Del("Accept-Ranges")
		g.refuse(x, moh.Errorf(moh.CodeBackendUnavailable, "reading the attachment: %w", err))
		return
	}
	prefix := contentPrefix(d.Size)
	h.Set("Content-Length", strconv.FormatInt(int64(len(prefix))+d.Size, 10))
	x.w.WriteHeader(http.StatusOK)
	if _, err := x.w.Write(prefix); err != nil {
		return // the client went away
	}
	if _, err := x.w.Write(first); err != nil {
		return
	}
	rest := io.LimitReader(d.Object, d.Size-int64(len(first)))
	if _, err := io.CopyBuffer(writerOnly{x.w}, rest, *buf); err != nil {
		if c := g.logger.Check(zap.DebugLevel, "attachment download cut off"); c != nil {
			c.Write(zap.String("remote_ip", remoteIP(x.r)), zap.Error(err))
		}
	}
}

// relayUpload streams an upload whose group this gateway does not host to
// the group's hub, when it knows one (relayStream): the DSRequest at the
// start of head, then the rest of the body as it arrives.
func (g *Gateway) relayUpload(x *exchange, head []byte) bool {
	_, n, err := moh.DecodeDSRequestPrefix(head)
	if err != nil {
		return false
	}
	end := time.Now().Add(ds.DefaultUploadDeadline)
	if a := g.Attachments; a != nil && a.UploadDeadline > 0 {
		end = time.Now().Add(time.Duration(a.UploadDeadline))
	}
	body := &uploadBody{x: x, r: x.body(), end: end}
	defer body.stop()
	return g.relayStream(x, head[:n], moh.UploadBody(head, body), x.r.ContentLength)
}

// relayHeaders are the headers of a hub's attachment answer that a
// relaying gateway passes on.
var relayHeaders = []string{"Content-Type", "Cache-Control", "Content-Length", "Content-Range", "ETag", "Accept-Ranges"}

// relayStream is relayToHub for the streamed attachment endpoints: signed
// is the client's DSRequest (to find the group's hub), body what goes to
// the hub (size bytes, or unknown when negative), with the client's Range
// header for a download; the hub's answer (status, its headers of
// relayHeaders and its Retry-After in seconds, body) is streamed back
// unchanged. It reports whether it answered.
func (g *Gateway) relayStream(x *exchange, signed []byte, body io.Reader, size int64) bool {
	ctx := x.r.Context()
	hub, err := g.ds.HubElsewhere(ctx, signed)
	if err != nil {
		g.refuse(x, err)
		return true
	}
	if hub == "" {
		return false
	}
	if !g.admitRelay(x, hub) {
		return true
	}
	var header http.Header
	if rng := x.r.Header.Get("Range"); rng != "" && x.rt.path == "/attachment_download" {
		header = http.Header{"Range": {rng}}
	}
	resp, err := g.svc.Fetcher().RelayStream(ctx, hub, x.rt.path, body, size, header)
	if err != nil {
		g.sampled.Warn("relaying an attachment request to the group's hub failed", zap.String("hub", hub),
			zap.String("endpoint", x.rt.path), zap.Error(err))
		x.closeAfter()
		g.refuse(x, moh.Errorf(moh.CodeBackendUnavailable, "the group's hub %s could not be reached", hub))
		return true
	}
	defer resp.Body.Close()
	h := x.w.Header()
	for _, k := range relayHeaders {
		if v := resp.Header.Values(k); len(v) > 0 {
			h[k] = v
		}
	}
	if ra := provider.RetryAfterSeconds(resp.Header.Get("Retry-After")); ra != "" {
		h.Set("Retry-After", ra) // the hub's 429 (relayToHub)
	}
	x.w.WriteHeader(resp.StatusCode)
	if _, err := copyStream(x.w, resp.Body); err != nil {
		if c := g.logger.Check(zap.DebugLevel, "relayed attachment answer cut off"); c != nil {
			c.Write(zap.String("hub", hub), zap.Error(err))
		}
	}
	return true
}

// streamBufferSize is the size of the buffers attachment content is
// copied to the client through.
const streamBufferSize = 256 << 10

// streamBuffers holds the buffers of copyStream.
var streamBuffers = sync.Pool{New: func() any { b := make([]byte, streamBufferSize); return &b }}

// writerOnly hides every method of an io.Writer but Write.
type writerOnly struct{ io.Writer }

// copyStream copies src to the response w through a pooled 256 KiB buffer,
// calling only w's Write. io.Copy would hand src to Caddy's response
// writer's ReadFrom, which (Caddy 2.11's IdleTimeoutWriter) copies in 64
// KiB pieces, each through io.Copy and a new 32 KiB buffer when the
// connection's writer has no ReadFrom of its own, as over HTTP/2: half a
// byte of garbage for every byte sent, the heap growth of a large
// download. Write still bounds every 64 KiB by the idle write deadline.
func copyStream(w io.Writer, src io.Reader) (int64, error) {
	buf := streamBuffers.Get().(*[]byte)
	defer streamBuffers.Put(buf)
	return io.CopyBuffer(writerOnly{w}, src, *buf)
}

// responseWriteOnly is a ResponseWriter without ReadFrom, for
// http.ServeContent, which copies with io.CopyN: through the response's
// ReadFrom it would make the garbage copyStream avoids; without, it
// copies through one 32 KiB buffer.
type responseWriteOnly struct{ http.ResponseWriter }

// Unwrap lets http.ResponseController reach the wrapped writer.
func (w responseWriteOnly) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// contentPrefix is the encoding of an attachment_content(8) DSResponse up
// to its content: protocol_version, the type, and the content's <V>
// length.
func contentPrefix(size int64) []byte {
	var b cryptobyte.Builder
	b.AddUint16(moh.ProtocolVersion)
	b.AddUint8(uint8(moh.ResponseAttachmentContent))
	wire.AddVarint(&b, uint64(size))
	out, _ := b.Bytes() // size is at most max_size, within the varint
	return out
}

// unmarshalAttachments parses the attachments option:
//
//	attachments off
//	attachments {
//		max_size                <size>
//		group_quota             <size> [<count>]
//		uploader_quota          <size> [<count>]
//		retention               <duration>
//		upload_deadline         <duration>
//		commit_grace            <duration>
//		allow_delete_by_members
//		max_uploads_in_progress <n>
//		storage                 <backend> [<args...>] { ... }
//	}
//
// A quota size of 0 means no bound on bytes (to bound only the count).
func unmarshalAttachments(d *caddyfile.Dispenser) (*Attachments, error) {
	a := new(Attachments)
	if d.NextArg() {
		if d.Val() != "off" || d.NextArg() {
			return nil, d.ArgErr()
		}
		a.Disabled = true
		return a, nil
	}
	for opt, err := range caddyopts.Block(d, "attachments") {
		if err != nil {
			return nil, err
		}
		switch opt {
		case "max_size":
			n, err := sizeArg(d, opt, maxAttachmentSize, "1073741815B")
			if err != nil {
				return nil, err
			}
			a.MaxSize = n
		case "group_quota", "uploader_quota":
			args := d.RemainingArgs()
			if len(args) < 1 || len(args) > 2 {
				return nil, d.ArgErr()
			}
			var size, count int64
			if args[0] != "0" {
				n, err := parseSize(args[0])
				if err != nil {
					return nil, d.Errf("invalid %s size '%s': %v", opt, args[0], err)
				}
				size = n
			}
			if len(args) == 2 {
				n, err := strconv.ParseInt(args[1], 10, 64)
				if err != nil || n < 1 {
					return nil, d.Errf("invalid %s count '%s': want a positive number", opt, args[1])
				}
				count = n
			}
			if opt == "group_quota" {
				a.GroupQuotaBytes, a.GroupQuotaCount = size, count
			} else {
				a.UploaderQuotaBytes, a.UploaderQuotaCount = size, count
			}
		case "retention", "upload_deadline", "commit_grace":
			dur, err := durationArg(d, opt)
			if err != nil {
				return nil, err
			}
			switch opt {
			case "retention":
				a.Retention = caddy.Duration(dur)
			case "upload_deadline":
				a.UploadDeadline = caddy.Duration(dur)
			default:
				a.CommitGrace = caddy.Duration(dur)
			}
		case "allow_delete_by_members":
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			a.AllowDeleteByMembers = true
		case "max_uploads_in_progress":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			v := d.Val()
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxUploadsInProgress {
				return nil, d.Errf("invalid max_uploads_in_progress '%s': want a number from 1 to %d", v, maxUploadsInProgress)
			}
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			a.MaxUploadsInProgress = n
		case "storage":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			name := d.Val()
			if err := missingClusterStorage(name); err != nil {
				return nil, d.Errf("%v", err)
			}
			unm, err := caddyfile.UnmarshalModule(d, "http.mimi.attachments."+name)
			if err != nil {
				return nil, err
			}
			a.Storage = caddyconfig.JSONModuleObject(unm, "backend", name, nil)
		default:
			return nil, d.Errf("unrecognized attachments option '%s'", opt)
		}
	}
	if err := a.validate(); err != nil {
		return nil, d.Errf("%v", err)
	}
	return a, nil
}

// parseSize reads a size such as 10GiB or 500MB.
func parseSize(v string) (int64, error) {
	n, err := humanize.ParseBytes(v)
	if err != nil {
		return 0, err
	}
	if n == 0 || n > 1<<62 {
		return 0, fmt.Errorf("%s is not a size from 1B", v)
	}
	return int64(n), nil
}
