package moh

import (
	"bytes"
	"io"
)

// UploadReadSize is the most an UploadBody returns from one Read.
const UploadReadSize = 64 << 10

// UploadBody returns the body of an attachment_upload request: head, the
// encoded DSRequest, then the content as content yields it, read at most
// UploadReadSize bytes at a time.
//
// The bound is for the receiving gateway's memory: Go's HTTP/2 transport
// sends what each Read of a request body returns as one DATA frame (up to
// 512 KiB when the peer accepts frames that large, as Caddy does), and a
// Go HTTP/2 server keeps a read buffer as large as the largest frame it
// has read for as long as the connection lasts. Browsers and nghttp2 send
// 16 KiB frames.
func UploadBody(head []byte, content io.Reader) io.Reader {
	return &uploadBody{r: io.MultiReader(bytes.NewReader(head), content)}
}

// uploadBody is the io.Reader of UploadBody.
type uploadBody struct{ r io.Reader }

// Read reads at most UploadReadSize bytes into p.
func (b *uploadBody) Read(p []byte) (int, error) {
	if len(p) > UploadReadSize {
		p = p[:UploadReadSize]
	}
	return b.r.Read(p)
}
