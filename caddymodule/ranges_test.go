package caddymodule

import (
	"bytes"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// serveContentStatus is the status net/http's ServeContent answers the
// Range header h with for content of size bytes: the reference
// classifyRange must agree with wherever it hands a range over.
func serveContentStatus(h string, size int64) int {
	r := httptest.NewRequest(http.MethodPost, "/attachment_download", nil)
	r.Header.Set("Range", h)
	w := httptest.NewRecorder()
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(make([]byte, size)))
	return w.Code
}

// checkAgainstServeContent fails when classifyRange hands ServeContent a
// range it does not answer 206, or ignores as ServeContent would
// (rangeWhole) a range ServeContent would serve. A refused set
// (rangeRefused) is one ServeContent would serve; this gateway does not.
func checkAgainstServeContent(t *testing.T, h string, size int64) {
	t.Helper()
	got, _ := classifyRange(h, size)
	status := serveContentStatus(h, size)
	switch {
	case got == rangePartial && status != http.StatusPartialContent:
		t.Errorf("classifyRange(%q, %d) hands the range to ServeContent, which answers %d", h, size, status)
	case got == rangeWhole && status != http.StatusOK:
		t.Errorf("classifyRange(%q, %d) ignores the range, ServeContent answers %d", h, size, status)
	case got == rangeRefused && status != http.StatusPartialContent:
		t.Errorf("classifyRange(%q, %d) refuses a set ServeContent answers %d, not 206", h, size, status)
	}
}

func TestClassifyRange(t *testing.T) {
	for _, tc := range []struct {
		h    string
		size int64
		want rangeAnswer
	}{
		{"bytes=0-99", 1000, rangePartial},
		{"bytes=100-", 1000, rangePartial},
		{"bytes=-16", 1000, rangePartial},
		{"bytes=-5000", 1000, rangePartial}, // the whole content, as a 206
		{"bytes=990-5000", 1000, rangePartial},
		{"bytes=0-9, 20-29", 1000, rangePartial},
		{" bytes=0-9", 1000, rangeUnsatisfiable}, // not a byte-ranges-specifier
		{"bytes=1000-", 1000, rangeUnsatisfiable},
		{"bytes=1000-,2000-", 1000, rangeUnsatisfiable},
		{"bytes=1000-,0-1", 1000, rangePartial}, // one range overlaps
		{"bytes=-0", 1000, rangeUnsatisfiable},
		{"bytes=9-0", 1000, rangeUnsatisfiable},
		{"bytes=abc", 1000, rangeUnsatisfiable},
		{"bytes=0-9-1", 1000, rangeUnsatisfiable},
		{"bytes=+1-9", 1000, rangeUnsatisfiable},
		{"bytes=--1", 1000, rangeUnsatisfiable},
		{"bytes=0-99999999999999999999", 1000, rangeUnsatisfiable}, // out of int64
		{"items=0-9", 1000, rangeUnsatisfiable},
		{"bytes=0-0", 0, rangeUnsatisfiable},
		{"bytes=-1", 0, rangeUnsatisfiable},
		{"bytes=0-9,10-19", 1000, rangePartial}, // adjacent, not overlapping
		{"bytes=0-0,0-0", 1000, rangeRefused},
		{"bytes=0-9,5-14", 1000, rangeRefused},
		{"bytes=20-29,0-9", 1000, rangeRefused},
		{"bytes=-5,0-4", 1000, rangeRefused},
		{manyRanges(16), 1000, rangePartial},
		{manyRanges(17), 1000, rangeRefused},
		{"bytes=0-,0-", 1000, rangeWhole},
		{"bytes=0-599,400-", 1000, rangeWhole},
		{"bytes=", 1000, rangeWhole},
		{"bytes= , ,", 1000, rangeWhole},
	} {
		t.Run(tc.h, func(t *testing.T) {
			if got, _ := classifyRange(tc.h, tc.size); got != tc.want {
				t.Fatalf("classifyRange(%q, %d) = %d, want %d", tc.h, tc.size, got, tc.want)
			}
			checkAgainstServeContent(t, tc.h, tc.size)
		})
	}
}

// manyRanges is a Range of n one-byte ranges in ascending order, apart.
func manyRanges(n int) string {
	var b strings.Builder
	b.WriteString("bytes=")
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d-%d", 2*i, 2*i)
	}
	return b.String()
}

// FuzzClassifyRange holds classifyRange to net/http's ServeContent on any
// header: a range it hands over is answered 206, one it ignores 200; and
// what a 206 serves is at most maxRanges valid ranges in ascending order,
// apart, each with its bytes.
func FuzzClassifyRange(f *testing.F) {
	for _, h := range []string{"bytes=0-99", "bytes=-16", "bytes=0-,0-", "bytes=", "bytes=5-1", "bytes=0-9,20-29", "bytes=-0", "bytes=0-4,-0"} {
		f.Add(h, uint16(1000))
	}
	f.Fuzz(func(t *testing.T, h string, size uint16) {
		if strings.ContainsAny(h, "\r\n\x00") {
			t.Skip() // not a header value
		}
		checkAgainstServeContent(t, h, int64(size))
		status, parts, kept := serveRange(t, h, int64(size))
		if status == 0 {
			return
		}
		if status != http.StatusPartialContent {
			t.Fatalf("Range %q: servePartial answers %d, not 206", h, status)
		}
		checkServedParts(t, h, int64(size), parts)
		if len(parts) != len(kept) {
			t.Fatalf("Range %q: %d parts served, %d ranges kept", h, len(parts), len(kept))
		}
		ref := serveContentParts(t, h, int64(size))
		if len(ref) != len(kept) {
			t.Fatalf("Range %q: %d ranges kept, %d of them overlap the content", h, len(kept), len(ref))
		}
		for i, p := range parts {
			k := kept[i]
			if p.first != k.start || p.last != k.start+k.length-1 || ref[i].first != p.first || ref[i].last != p.last {
				t.Fatalf("Range %q: part %d is %d-%d, kept %d+%d, overlapping %d-%d", h, i, p.first, p.last, k.start, k.length, ref[i].first, ref[i].last)
			}
		}
	})
}

// servedPart is one range of a 206 answer: its Content-Range positions and
// its bytes.
type servedPart struct {
	first, last int64
	body        []byte
}

// serveRange answers the Range header h for content of size bytes as
// serveDownload does (classifyRange, then servePartial for rangePartial),
// and returns the status of the answer (0 when it is not rangePartial),
// the parts of a 206 and the ranges classifyRange kept.
func serveRange(t *testing.T, h string, size int64) (int, []servedPart, []byteRange) {
	t.Helper()
	answer, ranges := classifyRange(h, size)
	if answer != rangePartial {
		return 0, nil, nil
	}
	r := httptest.NewRequest(http.MethodPost, "/attachment_download", nil)
	w := httptest.NewRecorder()
	if err := servePartial(w, r, ranges, bytes.NewReader(testContent(size)), size); err != nil {
		t.Fatalf("Range %q: %v", h, err)
	}
	return w.Code, answerParts(t, w, size, true), ranges
}

// testContent is content of size bytes, byte i being byte(i*7).
func testContent(size int64) []byte {
	content := make([]byte, size)
	for i := range content {
		content[i] = byte(i * 7)
	}
	return content
}

// answerParts is the parts of the 206 w (nil for another status), one or
// those of a multipart/byteranges; valid has every Content-Range checked
// (RFC 9110 §14.4), else a part with an empty one is left out.
func answerParts(t *testing.T, w *httptest.ResponseRecorder, size int64, valid bool) []servedPart {
	t.Helper()
	if w.Code != http.StatusPartialContent {
		return nil
	}
	var parts []servedPart
	add := func(cr string, body []byte) {
		first, last, ok := parseContentRange(t, cr, size, valid)
		if ok {
			parts = append(parts, servedPart{first, last, body})
		}
	}
	mt, params, err := mime.ParseMediaType(w.Header().Get("Content-Type"))
	if err != nil || mt != "multipart/byteranges" {
		add(w.Header().Get("Content-Range"), w.Body.Bytes())
		return parts
	}
	mr := multipart.NewReader(w.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return parts
		}
		if err != nil {
			t.Fatalf("reading the multipart answer: %v", err)
		}
		body, err := io.ReadAll(p)
		if err != nil {
			t.Fatalf("reading a part: %v", err)
		}
		add(p.Header.Get("Content-Range"), body)
	}
}

// parseContentRange reads a 206's Content-Range "bytes first-last/size".
// With valid, it fails the test unless the range is valid (RFC 9110
// §14.4) for size; without, it reports an empty range as not ok.
func parseContentRange(t *testing.T, cr string, size int64, valid bool) (int64, int64, bool) {
	t.Helper()
	var first, last, total int64
	if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &first, &last, &total); err != nil {
		t.Fatalf("Content-Range %q: %v", cr, err)
	}
	if first < 0 || last < first || last >= size || total != size {
		if valid || last >= first {
			t.Fatalf("Content-Range %q is not a valid range of %d bytes", cr, size)
		}
		return 0, 0, false
	}
	return first, last, true
}

// serveContentParts is the parts net/http's ServeContent serves for the
// Range header h, as the client sent it, on content of size bytes, less
// the empty ones: the ranges of h that overlap the content.
func serveContentParts(t *testing.T, h string, size int64) []servedPart {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/attachment_download", nil)
	r.Header.Set("Range", h)
	w := httptest.NewRecorder()
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(testContent(size)))
	return answerParts(t, w, size, false)
}

// checkServedParts fails unless parts, the answer to the Range header h
// for content of size bytes (byte i being byte(i*7)), are at most
// maxRanges valid ranges in ascending order, apart, each with its bytes.
func checkServedParts(t *testing.T, h string, size int64, parts []servedPart) {
	t.Helper()
	if len(parts) == 0 || len(parts) > maxRanges {
		t.Fatalf("Range %q: %d parts served", h, len(parts))
	}
	next := int64(0)
	for i, p := range parts {
		if i > 0 && p.first < next {
			t.Fatalf("Range %q: part %d-%d overlaps or precedes the one before", h, p.first, p.last)
		}
		next = p.last + 1
		if int64(len(p.body)) != p.last-p.first+1 {
			t.Fatalf("Range %q: part %d-%d has %d bytes", h, p.first, p.last, len(p.body))
		}
		for j, c := range p.body {
			if c != byte((p.first+int64(j))*7) {
				t.Fatalf("Range %q: part %d-%d has the wrong bytes", h, p.first, p.last)
			}
		}
	}
}

// TestServePartialServesWhatIsClassified: a range that overlaps nothing
// (-0, or a first position at or beyond the size) is ignored next to one
// that overlaps, and only the ranges classifyRange kept are served.
func TestServePartialServesWhatIsClassified(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    string
		size int64
		want [][2]int64
	}{
		{"suffix -0 after", "bytes=0-4,-0", 10, [][2]int64{{0, 4}}},
		{"suffix -0 before", "bytes=-0,0-4", 10, [][2]int64{{0, 4}}},
		{"beyond the size", "bytes=1000-,0-1", 10, [][2]int64{{0, 1}}},
		{"two and -0", "bytes=0-1,-0,4-5", 10, [][2]int64{{0, 1}, {4, 5}}},
		{"5000 times -0", "bytes=0-0" + strings.Repeat(",-0", 5000), 10, [][2]int64{{0, 0}}},
		{"end clamped", "bytes=8-99", 10, [][2]int64{{8, 9}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, parts, _ := serveRange(t, tc.h, tc.size)
			if status != http.StatusPartialContent {
				t.Fatalf("Range %q: status %d, want 206", tc.h, status)
			}
			checkServedParts(t, tc.h, tc.size, parts)
			if len(parts) != len(tc.want) {
				t.Fatalf("Range %q: %d parts served, want %d", tc.h, len(parts), len(tc.want))
			}
			for i, p := range parts {
				if p.first != tc.want[i][0] || p.last != tc.want[i][1] {
					t.Fatalf("Range %q: part %d is %d-%d, want %d-%d", tc.h, i, p.first, p.last, tc.want[i][0], tc.want[i][1])
				}
			}
		})
	}
}
