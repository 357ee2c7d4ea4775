package store

import (
	"strings"
	"testing"
)

func TestValidFileName(t *testing.T) {
	for _, name := range []string{"a", "0123abcd.key.pem", "key-1.pem", "..key", "a..b", strings.Repeat("k", MaxFileNameSize)} {
		if !ValidFileName(name) {
			t.Errorf("ValidFileName(%q) = false, want true", name)
		}
	}
	for _, name := range []string{
		"", ".", "..", "../k", "a/../../k", "/k", "a/b", `a\b`, `..\k`, "k\x00", "k\n", "k\x7f",
		strings.Repeat("k", MaxFileNameSize+1),
	} {
		if ValidFileName(name) {
			t.Errorf("ValidFileName(%q) = true, want false", name)
		}
	}
}

func TestReplayStatusString(t *testing.T) {
	for s, want := range map[ReplayStatus]string{
		ReplayNew: "new", ReplayDuplicate: "duplicate", ReplayInProgress: "in_progress", ReplayConflict: "conflict",
		0: "ReplayStatus(0)", 9: "ReplayStatus(9)",
	} {
		if got := s.String(); got != want {
			t.Errorf("ReplayStatus(%d).String() = %q, want %q", uint8(s), got, want)
		}
	}
}
