//go:build unix

package walvfs

import (
	"golang.org/x/sys/unix"
	sqlite3 "modernc.org/sqlite/lib"
)

// haveFD: the unix VFS's files carry their descriptor.
const haveFD = true

// fileDescriptor returns the descriptor of a file the unix VFS opened.
func fileDescriptor(pFile uintptr) int {
	return int((*sqlite3.TunixFile)(ptr(pFile)).Fh)
}

func fdatasync(fd int) error {
	for {
		err := unix.Fdatasync(fd)
		if err != unix.EINTR {
			return err
		}
	}
}
