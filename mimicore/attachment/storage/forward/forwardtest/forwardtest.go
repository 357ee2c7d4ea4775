// Package forwardtest is a legacy backend for the forward storage
// backend's tests, written from docs/protocol.md ("Attachment storage on
// the legacy backend") alone: a reference for a provider's own.
package forwardtest

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/forward"
)

// Base is the path under which Backend serves objects.
const Base = "/att/"

// Backend is a legacy backend serving the base URL Base: objects are
// files in Dir; a PUT is written to a temporary file and linked under its
// name only once its whole body has arrived.
type Backend struct {
	// Dir holds the objects and the bodies being received.
	Dir string
	// Key is the HMAC key shared with the gateway.
	Key []byte
}

// ServeHTTP serves PUT, HEAD, GET and DELETE of <base><name>.
func (b *Backend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name, ok := strings.CutPrefix(r.URL.Path, Base)
	if !ok || !storage.ValidName(name) {
		http.NotFound(w, r)
		return
	}
	var length int64
	if r.Method == http.MethodPut {
		if length = r.ContentLength; length < 0 {
			w.WriteHeader(http.StatusLengthRequired)
			return
		}
	}
	if err := forward.Verify(r, b.Key, name, length, time.Now()); err != nil {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	path := filepath.Join(b.Dir, name)
	switch r.Method {
	case http.MethodPut:
		// Refused before the body: Go's server then sends no 100 Continue.
		if _, err := os.Stat(path); err == nil {
			w.WriteHeader(http.StatusConflict)
			return
		}
		tmp, err := os.CreateTemp(b.Dir, "tmp-")
		if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		defer os.Remove(tmp.Name())
		n, err := io.Copy(tmp, r.Body)
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err != nil || n != length {
			// Cut off: nothing is kept (and nobody is left to answer).
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if err := os.Link(tmp.Name(), path); err != nil {
			w.WriteHeader(http.StatusConflict)
			return
		}
		w.WriteHeader(http.StatusCreated)
	case http.MethodHead, http.MethodGet:
		f, err := os.Open(path)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		defer f.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "", time.Time{}, f)
	case http.MethodDelete:
		os.Remove(path)
		w.WriteHeader(http.StatusNoContent)
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
	}
}
