//go:build !linux

package tunnel

import "os/exec"

// dieWithTest does nothing here: only Linux can tie a child's life to its
// parent's (see e2e_linux_test.go), and the cleanups end the processes in
// every run that is not cut short.
func dieWithTest(*exec.Cmd) {}
