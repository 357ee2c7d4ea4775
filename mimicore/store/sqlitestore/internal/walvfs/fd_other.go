//go:build !unix

package walvfs

import "errors"

// haveFD: outside unix the VFS's file layout is not the unix one.
const haveFD = false

func fileDescriptor(uintptr) int { return -1 }

func fdatasync(int) error { return errors.New("walvfs: no deferred syncs here") }
