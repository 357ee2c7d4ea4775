package caddymodule

import (
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
)

// rangeAnswer is how a download with a Range header is answered
// (docs/protocol.md §6).
type rangeAnswer int

const (
	// rangeWhole: the Range header is ignored and the answer is the
	// whole DSResponse attachment_content(8), 200. RFC 9110 §14.2 lets a
	// server ignore a Range; this one does when the ranges add up to more
	// than the content (as net/http does) or list no range at all.
	rangeWhole rangeAnswer = iota
	// rangePartial: 206 with the ciphertext bytes of the range, or
	// multipart/byteranges for several, served by http.ServeContent.
	rangePartial
	// rangeUnsatisfiable: 416. The header is not a byte-ranges-specifier,
	// or no range of it overlaps the content.
	rangeUnsatisfiable
	// rangeRefused: the whole answer too, for a range set that RFC 9110
	// §14.2 lets a server ignore as a sign of a broken client or an
	// attack: more than maxRanges ranges that overlap the content (a range
	// that overlaps nothing is left out), or ranges that overlap or are
	// not in ascending order. ServeContent would serve them, with a read
	// (and, on the s3 and forward backends, a request to the backend) per
	// range.
	rangeRefused
)

// maxRanges is the most ranges overlapping the content a download's Range
// may list.
const maxRanges = 16

// byteRange is a range of content that overlaps it: length > 0 bytes
// from start, within the content.
type byteRange struct {
	start, length int64
}

// classifyRange decides the answer to the Range header value h for
// content of size bytes and, for rangePartial, returns the ranges to
// serve: those of h that overlap the content, in the order of h, clamped
// to it. A range that overlaps nothing (a first position at or beyond the
// size, or the suffix -0) is left out. It parses h as net/http's
// ServeContent does, so that the ranges it passes to ServeContent are
// ones ServeContent answers 206: ServeContent's own answers to the other
// cases would be a 200 with the raw ciphertext rather than the
// DSResponse, and a 416 without this gateway's headers. Content of no
// bytes has no satisfiable range. A set ServeContent would serve but that
// costs a read per range for nothing is refused (rangeRefused).
func classifyRange(h string, size int64) (rangeAnswer, []byteRange) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || size <= 0 {
		return rangeUnsatisfiable, nil
	}
	var sum, next int64 // next: the first byte after the last range
	var kept []byteRange
	noOverlap, refused := false, false
	for ra := range strings.SplitSeq(spec, ",") {
		ra = textproto.TrimString(ra)
		if ra == "" {
			continue
		}
		first, last, ok := strings.Cut(ra, "-")
		if !ok {
			return rangeUnsatisfiable, nil
		}
		first, last = textproto.TrimString(first), textproto.TrimString(last)
		var start, length int64
		if first == "" {
			// A suffix: the last n bytes, all of them when n > size;
			// the last 0 bytes overlap nothing.
			n, ok := rangeNumber(last)
			if !ok {
				return rangeUnsatisfiable, nil
			}
			if n == 0 {
				noOverlap = true
				continue
			}
			length = min(n, size)
			start = size - length
		} else {
			var ok bool
			start, ok = rangeNumber(first)
			if !ok {
				return rangeUnsatisfiable, nil
			}
			if start >= size {
				noOverlap = true
				continue
			}
			length = size - start
			if last != "" {
				end, ok := rangeNumber(last)
				if !ok || end < start {
					return rangeUnsatisfiable, nil
				}
				length = min(end, size-1) - start + 1
			}
		}
		if len(kept) > 0 && start < next {
			refused = true // overlapping, or not ascending
		}
		if len(kept) <= maxRanges {
			kept = append(kept, byteRange{start, length})
		} else {
			refused = true // more than maxRanges; the rest is not kept
		}
		sum += length
		next = start + length
	}
	switch {
	case len(kept) == 0 && noOverlap:
		return rangeUnsatisfiable, nil
	case len(kept) == 0, sum > size:
		return rangeWhole, nil
	case refused, len(kept) > maxRanges:
		return rangeRefused, nil
	}
	return rangePartial, kept
}

// rangeNumber parses a non-negative decimal position of a byte range.
func rangeNumber(s string) (int64, bool) {
	if s == "" || s[0] == '-' || s[0] == '+' {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil && n >= 0
}

// servePartial answers a download whose Range classifyRange found
// satisfiable: http.ServeContent writes the 206 (or the multipart answer)
// of exactly ranges, the ones classifyRange kept, from content. It is
// shown a request with a Range header of those ranges alone, not the
// client's (in which ServeContent would serve a -0 as an empty part with
// an invalid Content-Range), so the conditional headers of RFC 9110 §13
// are not evaluated: a ranged answer and a whole one depend on the same
// things.
//
// The first bytes of the first range are read before the status is sent
// (primedContent): when that read fails (the forward or s3 backend's GET,
// which follows the HEAD of Open), servePartial writes nothing and
// returns the error, for the caller to refuse the download rather than
// send a 206 cut off after its headers.
func servePartial(w http.ResponseWriter, r *http.Request, ranges []byteRange, content io.ReadSeeker, size int64) error {
	pc := &primedContent{rs: content, size: size, at: ranges[0].start}
	if err := pc.prime(ranges[0].length); err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString("bytes=")
	for i, ra := range ranges {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(ra.start, 10))
		b.WriteByte('-')
		b.WriteString(strconv.FormatInt(ra.start+ra.length-1, 10))
	}
	rr := new(http.Request)
	*rr = *r
	rr.Header = http.Header{"Range": {b.String()}}
	http.ServeContent(responseWriteOnly{w}, rr, "", time.Time{}, pc)
	return nil
}

// primeSize is how many bytes of a range servePartial reads before the
// status: enough to see the backend's answer to its request, little
// enough to add nothing worth counting to the buffer ServeContent copies
// the range through.
const primeSize = 512

// primedContent is content whose bytes at at, first, were read ahead
// (prime): a Read at at is answered from them, and the reads after them
// go on with the stream that read them (one backend request, as before).
// Seek only moves the offset (ServeContent's Seek to the end to learn
// the size would otherwise end the stream); the stream is moved by the
// next Read that is not at its position.
type primedContent struct {
	rs    io.ReadSeeker
	size  int64 // rs's size
	at    int64 // the offset of first
	first []byte
	buf   [primeSize]byte
	pos   int64 // the offset of the next Read
	rsPos int64 // rs's offset; -1 when unknown
}

// prime seeks to at and reads the first min(length, primeSize) bytes of
// a range of length bytes.
func (p *primedContent) prime(length int64) error {
	p.rsPos = -1
	if _, err := p.rs.Seek(p.at, io.SeekStart); err != nil {
		return err
	}
	first := p.buf[:min(length, primeSize)]
	if _, err := io.ReadFull(p.rs, first); err != nil {
		return err
	}
	p.first = first
	p.rsPos = p.at + int64(len(first))
	return nil
}

// Read reads from the offset: the bytes read ahead when it is among them,
// the content's otherwise.
func (p *primedContent) Read(b []byte) (int, error) {
	if p.pos >= p.at && p.pos < p.at+int64(len(p.first)) {
		n := copy(b, p.first[p.pos-p.at:])
		p.pos += int64(n)
		return n, nil
	}
	if p.rsPos != p.pos {
		if _, err := p.rs.Seek(p.pos, io.SeekStart); err != nil {
			p.rsPos = -1
			return 0, err
		}
		p.rsPos = p.pos
	}
	n, err := p.rs.Read(b)
	p.pos += int64(n)
	p.rsPos = p.pos
	return n, err
}

// Seek moves the offset, as the content's Seek would.
func (p *primedContent) Seek(offset int64, whence int) (int64, error) {
	pos, err := storage.SeekTarget(p.pos, p.size, offset, whence)
	if err != nil {
		return p.pos, fmt.Errorf("seeking attachment content: %w", err)
	}
	p.pos = pos
	return pos, nil
}

// refuseRange answers 416 for content of size bytes, keeping the headers
// the answer already has (Cache-Control, ETag), with the Content-Range
// RFC 9110 §15.5.17 asks for and a text body.
func refuseRange(w http.ResponseWriter, size int64) {
	msg := "the range is not satisfiable: the attachment has " + strconv.FormatInt(size, 10) + " bytes\n"
	h := w.Header()
	h.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(msg)))
	w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
	w.Write([]byte(msg)) //nolint:errcheck // the client went away
}
