package tunnel

import (
	"os/exec"
	"syscall"
)

// dieWithTest makes the process started by cmd get SIGKILL if the test
// binary dies first (a -timeout panic skips every cleanup), so that no
// server or client outlives the test run.
func dieWithTest(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
