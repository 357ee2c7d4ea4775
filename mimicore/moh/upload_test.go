package moh

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"
	"testing/iotest"
)

// TestUploadBody checks that an upload body is the head then the content,
// byte for byte, and that no Read returns more than UploadReadSize bytes
// however large the buffer it is given (as Go's HTTP/2 transport gives
// 512 KiB).
func TestUploadBody(t *testing.T) {
	head := []byte("signed DSRequest")
	for _, tc := range []struct {
		name string
		size int
		wrap func(io.Reader) io.Reader
	}{
		{"empty content", 0, nil},
		{"smaller than a read", 1000, nil},
		{"exactly a read", UploadReadSize, nil},
		{"many reads", 5*UploadReadSize + 17, nil},
		{"content in one-byte reads", 3000, iotest.OneByteReader},
		{"content whose last read brings EOF", 3*UploadReadSize + 1, iotest.DataErrReader},
	} {
		t.Run(tc.name, func(t *testing.T) {
			content := make([]byte, tc.size)
			rand.Read(content)
			var r io.Reader = bytes.NewReader(content)
			if tc.wrap != nil {
				r = tc.wrap(r)
			}
			body := UploadBody(head, r)
			var got []byte
			buf := make([]byte, 512<<10)
			for {
				n, err := body.Read(buf)
				if n > UploadReadSize {
					t.Fatalf("a Read returned %d bytes, want at most %d", n, UploadReadSize)
				}
				got = append(got, buf[:n]...)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if want := append(bytes.Clone(head), content...); !bytes.Equal(got, want) {
				t.Fatalf("body is %d bytes, not the %d of head and content", len(got), len(want))
			}
		})
	}
}
