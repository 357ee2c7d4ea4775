package retryenc

import (
	"bytes"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// TestGroupsRoundTrip checks that DecodeGroups gives back what
// EncodeGroups wrote, and refuses truncated or zero-length entries.
func TestGroupsRoundTrip(t *testing.T) {
	gs := []store.OutboxGroupBackoff{
		{GroupID: []byte{1}, OutboxBackoff: store.OutboxBackoff{Level: time.Second, Next: time.UnixMilli(1_790_000_000_123).UTC()}},
		{GroupID: bytes.Repeat([]byte{7}, 255), OutboxBackoff: store.OutboxBackoff{Level: time.Hour, Next: time.UnixMilli(0).UTC()}},
	}
	enc := EncodeGroups(gs)
	got, err := DecodeGroups(enc)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(gs) {
		t.Fatalf("decoded %d groups, want %d", len(got), len(gs))
	}
	for i := range gs {
		if !bytes.Equal(got[i].GroupID, gs[i].GroupID) || got[i].Level != gs[i].Level || !got[i].Next.Equal(gs[i].Next) {
			t.Errorf("group %d: got %+v, want %+v", i, got[i], gs[i])
		}
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"zero-length id", append([]byte{0}, make([]byte, 16)...)},
		{"truncated times", enc[:len(enc)-1]},
		{"length past the end", []byte{200, 1, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := DecodeGroups(tc.b); err == nil {
				t.Fatal("decoded a column EncodeGroups did not write")
			}
		})
	}
}

// FuzzDecodeGroups checks that DecodeGroups never panics and that the
// groups it accepts encode back to the same ids (a level past the range
// of a time.Duration in milliseconds does not round-trip; the sender caps
// every resumed level).
func FuzzDecodeGroups(f *testing.F) {
	f.Add(EncodeGroups([]store.OutboxGroupBackoff{{GroupID: []byte("g"), OutboxBackoff: store.OutboxBackoff{Level: time.Minute, Next: time.UnixMilli(5)}}}))
	f.Add([]byte{})
	f.Add([]byte{3, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		gs, err := DecodeGroups(b)
		if err != nil {
			return
		}
		again, err := DecodeGroups(EncodeGroups(gs))
		if err != nil || len(again) != len(gs) {
			t.Fatalf("re-encoded groups decode to %d groups (%v), want %d", len(again), err, len(gs))
		}
		for i := range gs {
			if !bytes.Equal(again[i].GroupID, gs[i].GroupID) {
				t.Fatalf("group %d: id %x, want %x", i, again[i].GroupID, gs[i].GroupID)
			}
		}
	})
}
