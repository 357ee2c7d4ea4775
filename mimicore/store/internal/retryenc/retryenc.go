// Package retryenc checks a store.OutboxRetry and encodes its group
// backoffs into the one column both backends keep them in: per group,
// the id's length (one byte), the id, then the level and the next
// attempt as big-endian Unix milliseconds (eight bytes each).
package retryenc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// Check validates r as store.OutboxRetries.SetOutboxRetry documents it.
func Check(r store.OutboxRetry) error {
	if err := check.Domain("destination", r.Destination); err != nil {
		return err
	}
	if r.Failures < 0 || r.Backoff.Level < 0 {
		return fmt.Errorf("negative failures or backoff: %w", store.ErrInvalid)
	}
	if r.RateLimited && r.Backoff.Level == 0 {
		return fmt.Errorf("rate limited without a destination backoff: %w", store.ErrInvalid)
	}
	if len(r.LastError) > store.MaxOutboxRetryError || !utf8.ValidString(r.LastError) || strings.IndexByte(r.LastError, 0) >= 0 {
		// PostgreSQL's text holds no NUL: refused by both stores alike.
		return fmt.Errorf("last error is %d bytes, not UTF-8 or holds a NUL, want at most %d bytes of UTF-8 without NUL: %w",
			len(r.LastError), store.MaxOutboxRetryError, store.ErrInvalid)
	}
	if len(r.Groups) > store.MaxOutboxRetryGroups {
		return fmt.Errorf("%d group backoffs, want at most %d: %w", len(r.Groups), store.MaxOutboxRetryGroups, store.ErrInvalid)
	}
	seen := make(map[string]bool, len(r.Groups))
	for _, g := range r.Groups {
		if err := check.GroupID(g.GroupID); err != nil {
			return err
		}
		if g.Level < 0 {
			return fmt.Errorf("negative group backoff: %w", store.ErrInvalid)
		}
		if seen[string(g.GroupID)] {
			return fmt.Errorf("group %x appears twice: %w", g.GroupID, store.ErrInvalid)
		}
		seen[string(g.GroupID)] = true
	}
	return nil
}

// EncodeGroups encodes gs, which Check accepted.
func EncodeGroups(gs []store.OutboxGroupBackoff) []byte {
	b := []byte{}
	for _, g := range gs {
		b = append(b, byte(len(g.GroupID)))
		b = append(b, g.GroupID...)
		b = binary.BigEndian.AppendUint64(b, uint64(g.Level.Milliseconds()))
		b = binary.BigEndian.AppendUint64(b, uint64(check.Millis(g.Next)))
	}
	return b
}

// errCorrupt reports a column that EncodeGroups did not write.
var errCorrupt = errors.New("corrupt group backoffs")

// DecodeGroups decodes what EncodeGroups wrote.
func DecodeGroups(b []byte) ([]store.OutboxGroupBackoff, error) {
	var gs []store.OutboxGroupBackoff
	for len(b) > 0 {
		n := int(b[0])
		if n == 0 || len(b) < 1+n+16 {
			return nil, errCorrupt
		}
		g := store.OutboxGroupBackoff{GroupID: append([]byte(nil), b[1:1+n]...)}
		g.Level = time.Duration(int64(binary.BigEndian.Uint64(b[1+n:]))) * time.Millisecond
		g.Next = check.Time(int64(binary.BigEndian.Uint64(b[9+n:])))
		gs = append(gs, g)
		b = b[17+n:]
	}
	return gs, nil
}
