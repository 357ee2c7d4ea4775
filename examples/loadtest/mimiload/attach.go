package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// What the attachbench and attachcrash commands share: a member of a group
// on b.localhost that uploads and downloads attachments, built from the
// wire format of docs/protocol.md §6 rather than with mimicore/client,
// whose PutAttachment and GetAttachment hold the whole attachment in
// memory. The server never decrypts, so the content uploaded is random
// bytes standing for a ciphertext, declared with its SHA-256 (the hash of
// suite 1) as content_hash.

// copyBuf is the size of the client's copy buffers.
const copyBuf = 256 << 10

// attachMember is the only member (leaf 0) of a group it created on
// b.localhost, with a client binding issued by b's key ring.
type attachMember struct {
	t      *target
	client *sendClient
	gid    []byte
}

// newAttachMember creates a group on b.localhost whose only member is a
// new client bound by b's key ring (read from dir/b/keys).
func newAttachMember(ctx context.Context, t *target, name string) (*attachMember, error) {
	ring, err := provider.LoadKeyRing(filepath.Join(t.dir, "b", "keys"))
	if err != nil {
		return nil, fmt.Errorf("loading b.localhost's keys: %w", err)
	}
	c, err := newSendClient(&binding.Issuer{Domains: []string{"b.localhost"}, Keys: ring}, name)
	if err != nil {
		return nil, fmt.Errorf("creating client %s: %w", name, err)
	}
	gid := make([]byte, 16)
	rand.Read(gid)
	g, err := mls.NewGroup(mls.GroupOptions{CipherSuite: sendSuite, GroupID: gid, Leaf: &c.kp.LeafNode,
		LeafKey: c.leafKey, Signer: c.signer})
	if err != nil {
		return nil, fmt.Errorf("creating the group: %w", err)
	}
	gi, err := g.GroupInfo()
	if err != nil {
		return nil, fmt.Errorf("creating the group's GroupInfo: %w", err)
	}
	create, err := ds.SignRequest(sendSuite, c.signer, moh.RequestBody{Type: moh.CreateGroup, CreateGroup: moh.CreateGroupRequest{
		GroupID: gid, LeafNode: c.kp.LeafNode,
		GroupInfo: mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}}},
		ds.ClientSignature(0, time.Now()))
	if err != nil {
		return nil, fmt.Errorf("signing create_group: %w", err)
	}
	if err := postDS(ctx, t, "b.localhost", create); err != nil {
		return nil, fmt.Errorf("create_group: %w", err)
	}
	return &attachMember{t: t, client: c, gid: gid}, nil
}

// sign signs a DS request of the member, timestamped now.
func (m *attachMember) sign(body moh.RequestBody) ([]byte, error) {
	req, err := ds.SignRequest(sendSuite, m.client.signer, body, ds.ClientSignature(0, time.Now()))
	if err != nil {
		return nil, fmt.Errorf("signing %s: %w", body.Type, err)
	}
	return req, nil
}

// uploadError is an upload the gateway answered with something other
// than 200 attachment_token.
type uploadError struct {
	status int
	answer []byte
}

func (e *uploadError) Error() string {
	r, ok := decodeAnswer(e.answer)
	if ok && r.Type == moh.ResponseError {
		return fmt.Sprintf("attachment_upload: status %d: %s %q", e.status, r.Error.Code, r.Error.Message)
	}
	return fmt.Sprintf("attachment_upload: status %d, not an attachment token", e.status)
}

// upload sends size bytes of content, whose SHA-256 is sum, to
// /attachment_upload: the signed DSRequest, then content as it is read
// (never held whole). It returns the token of the 200 answer.
func (m *attachMember) upload(ctx context.Context, content io.Reader, size int64, sum []byte) ([]byte, error) {
	head, err := m.sign(moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{
		GroupID: m.gid, ContentLength: uint64(size), ContentHash: sum}})
	if err != nil {
		return nil, err
	}
	body := moh.UploadBody(head, content)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, m.t.url("b.localhost", "/attachment_upload"), body)
	if err != nil {
		return nil, err
	}
	req.ContentLength = int64(len(head)) + size
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := m.t.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("attachment_upload: %w", err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("attachment_upload: reading the answer: %w", err)
	}
	if err := checkProto(resp); err != nil {
		return nil, err
	}
	r, ok := decodeAnswer(answer)
	if resp.StatusCode != http.StatusOK || !ok || r.Type != moh.ResponseAttachmentToken {
		return nil, &uploadError{status: resp.StatusCode, answer: answer}
	}
	return r.Token, nil
}

// download fetches the attachment of token (200 attachment_content) and
// streams its content into w; it returns the content's length.
func (m *attachMember) download(ctx context.Context, token []byte, w io.Writer) (int64, error) {
	body, err := m.sign(moh.RequestBody{Type: moh.AttachmentDownload, Attachment: moh.AttachmentRef{GroupID: m.gid, Token: token}})
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, m.t.url("b.localhost", "/attachment_download"), bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := m.t.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("attachment_download: %w", err)
	}
	defer resp.Body.Close()
	if err := checkProto(resp); err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		answer, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if r, ok := decodeAnswer(answer); ok && r.Type == moh.ResponseError {
			return 0, fmt.Errorf("attachment_download: status %d: %s %q", resp.StatusCode, r.Error.Code, r.Error.Message)
		}
		return 0, fmt.Errorf("attachment_download: status %d", resp.StatusCode)
	}
	br := bufio.NewReaderSize(resp.Body, 16)
	size, err := readContentPrefix(br)
	if err != nil {
		return 0, fmt.Errorf("attachment_download: %w", err)
	}
	// What br read ahead, then the rest straight from the body, through
	// one 256 KiB buffer (bufio's WriteTo would copy 16 bytes at a time).
	ahead, _ := br.Peek(br.Buffered())
	if _, err := w.Write(ahead); err != nil {
		return 0, fmt.Errorf("attachment_download: %w", err)
	}
	n, err := io.CopyBuffer(w, resp.Body, make([]byte, copyBuf))
	n += int64(len(ahead))
	if err != nil {
		return n, fmt.Errorf("attachment_download: after %d of %d bytes: %w", n, size, err)
	}
	if n != int64(size) {
		return n, fmt.Errorf("attachment_download: %d bytes of content, the answer declared %d", n, size)
	}
	return n, nil
}

// readContentPrefix reads an attachment_content(8) DSResponse up to its
// content: protocol_version, the type and the content's varint length.
func readContentPrefix(br *bufio.Reader) (uint64, error) {
	var fixed [4]byte
	if _, err := io.ReadFull(br, fixed[:]); err != nil {
		return 0, fmt.Errorf("reading the answer's prefix: %w", err)
	}
	if v := uint16(fixed[0])<<8 | uint16(fixed[1]); v != moh.ProtocolVersion || fixed[2] != uint8(moh.ResponseAttachmentContent) {
		return 0, fmt.Errorf("the answer is not attachment_content (version %d, type %d)", v, fixed[2])
	}
	n := 1 << (fixed[3] >> 6) // the varint's length from its first byte
	raw := make([]byte, n)
	raw[0] = fixed[3]
	if _, err := io.ReadFull(br, raw[1:]); err != nil {
		return 0, fmt.Errorf("reading the content length: %w", err)
	}
	var size uint64
	s := cryptobyte.String(raw)
	if !wire.ReadVarint(&s, &size) {
		return 0, errors.New("the content length is not a valid varint")
	}
	return size, nil
}

// checkProto refuses an answer that did not come over HTTP/2 and TLS 1.3.
func checkProto(resp *http.Response) error {
	if resp.ProtoMajor != 2 || resp.TLS == nil || resp.TLS.Version != 0x0304 {
		return fmt.Errorf("answer over %s, not HTTP/2 over TLS 1.3", resp.Proto)
	}
	return nil
}

// hashingDiscard is an io.Writer that hashes what it is given with
// SHA-256 and keeps nothing else.
type hashingDiscard struct{ h hash.Hash }

func newHashingDiscard() *hashingDiscard { return &hashingDiscard{h: sha256.New()} }

func (d *hashingDiscard) Write(p []byte) (int, error) { return d.h.Write(p) }

func (d *hashingDiscard) sum() []byte { return d.h.Sum(nil) }

// rssSampler samples a process's resident set size (VmRSS in
// /proc/<pid>/status) and its anonymous part (RssAnon: the heap, stacks
// and runtime, without the binary's file-backed pages) every interval,
// and keeps their peaks since the last reset and over the whole run.
type rssSampler struct {
	pid     int
	mu      sync.Mutex
	peak    int64 // VmRSS kB since reset
	anon    int64 // RssAnon kB since reset
	all     int64 // VmRSS kB since start
	allAnon int64 // RssAnon kB since start
	allFile int64 // RssFile kB since start
	stop    chan struct{}
	done    chan struct{}
}

// startRSS starts sampling pid every interval.
func startRSS(pid int, interval time.Duration) *rssSampler {
	s := &rssSampler{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tk := time.NewTicker(interval)
		defer tk.Stop()
		for {
			if st, err := procStatus(pid); err == nil {
				s.mu.Lock()
				s.peak = max(s.peak, st["VmRSS"])
				s.all = max(s.all, st["VmRSS"])
				s.anon = max(s.anon, st["RssAnon"])
				s.allAnon = max(s.allAnon, st["RssAnon"])
				s.allFile = max(s.allFile, st["RssFile"])
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-tk.C:
			}
		}
	}()
	return s
}

// reset returns the peaks of VmRSS and RssAnon since the last reset (kB)
// and starts new ones.
func (s *rssSampler) reset() (rss, anon int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rss, anon = s.peak, s.anon
	s.peak, s.anon = 0, 0
	return rss, anon
}

// close stops sampling and returns the run's sampled peaks (kB) of
// VmRSS, RssAnon and RssFile (each its own maximum).
func (s *rssSampler) close() (rss, anon, file int64) {
	close(s.stop)
	<-s.done
	return s.all, s.allAnon, s.allFile
}

// procStatus reads the kB fields (VmRSS, VmHWM, ...) of /proc/<pid>/status.
func procStatus(pid int) (map[string]int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil, fmt.Errorf("reading the status of process %d: %w", pid, err)
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || !strings.HasSuffix(v, " kB") {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(v, " kB")), 10, 64)
		if err == nil {
			out[k] = n
		}
	}
	return out, nil
}
