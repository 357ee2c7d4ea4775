package walvfs

import (
	"syscall"
	"unsafe"
)

// decommit gives the whole pages among the n bytes at p back to the kernel
// (MADV_DONTNEED: touched again, they read as zeros). It is best effort:
// a failure only keeps them resident.
//
// A freed buffer needs it: modernc.org/memory keeps freed regions of up to
// 4 MiB per size class mapped and resident for reuse, so libc.Xfree alone
// would keep every page a large commit touched.
func decommit(p uintptr, n int) {
	ps := uintptr(syscall.Getpagesize())
	start := (p + ps - 1) &^ (ps - 1)
	end := (p + uintptr(n)) &^ (ps - 1)
	if end <= start {
		return
	}
	syscall.Madvise(unsafe.Slice((*byte)(ptr(start)), end-start), syscall.MADV_DONTNEED) //nolint:errcheck // best effort
}
