//go:build !linux

package walvfs

// decommit does nothing here: a freed buffer's pages stay with the
// allocator until it reuses or unmaps them.
func decommit(uintptr, int) {}
