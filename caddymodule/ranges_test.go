package caddymodule

import (
	"bytes"
	"fmt"
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
	got := classifyRange(h, size)
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
			if got := classifyRange(tc.h, tc.size); got != tc.want {
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
// header: a range it hands over is answered 206, one it ignores 200.
func FuzzClassifyRange(f *testing.F) {
	for _, h := range []string{"bytes=0-99", "bytes=-16", "bytes=0-,0-", "bytes=", "bytes=5-1", "bytes=0-9,20-29", "bytes=-0"} {
		f.Add(h, uint16(1000))
	}
	f.Fuzz(func(t *testing.T, h string, size uint16) {
		if strings.ContainsAny(h, "\r\n\x00") {
			t.Skip() // not a header value
		}
		checkAgainstServeContent(t, h, int64(size))
	})
}
