package redistest

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes cmd get SIGKILL when the test binary dies, so a
// killed test leaves no server running. (Linux sends it when the thread
// that started cmd exits; Go keeps its threads, except those of goroutines
// that locked one and returned.)
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
