package walvfs

import (
	"syscall"
	"testing"
	"unsafe"

	"modernc.org/libc"
)

// resident counts the resident pages among the n bytes at p (mincore).
func resident(t *testing.T, p uintptr, n int) int {
	t.Helper()
	ps := uintptr(syscall.Getpagesize())
	start := p &^ (ps - 1)
	vec := make([]byte, (p+uintptr(n)-start+ps-1)/ps)
	if _, _, errno := syscall.Syscall(syscall.SYS_MINCORE, start, p+uintptr(n)-start, uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	c := 0
	for _, b := range vec {
		c += int(b & 1)
	}
	return c
}

// TestDecommit: a buffer's touched pages are resident until decommit,
// which leaves at most the two partial pages at its ends, and the buffer
// reads as zeros afterwards.
func TestDecommit(t *testing.T) {
	tls := libc.NewTLS()
	defer tls.Close()
	p := libc.Xmalloc(tls, maxBuffer)
	if p == 0 {
		t.Fatal("malloc failed")
	}
	defer libc.Xfree(tls, p)
	b := unsafe.Slice((*byte)(ptr(p)), maxBuffer)
	for i := range b {
		b[i] = 1
	}
	pages := maxBuffer / syscall.Getpagesize()
	if n := resident(t, p, maxBuffer); n < pages {
		t.Fatalf("%d of %d touched pages resident", n, pages)
	}
	decommit(p, maxBuffer)
	if n := resident(t, p, maxBuffer); n > 2 {
		t.Fatalf("%d pages resident after decommit, want at most 2", n)
	}
	ps := syscall.Getpagesize()
	for i := ps; i < maxBuffer-ps; i += ps {
		if b[i] != 0 {
			t.Fatalf("byte %d is %d after decommit, want 0", i, b[i])
		}
	}
}
