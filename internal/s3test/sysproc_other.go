//go:build !linux

package s3test

import "syscall"

// sysProcAttr has nothing to add outside Linux: Stop or the test's end
// kills the server.
func sysProcAttr() *syscall.SysProcAttr { return nil }
