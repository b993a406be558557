//go:build !unix

package polymux

import "time"

// processCPU returns the CPU time this process has used, and false where it
// cannot be measured.
func processCPU() (time.Duration, bool) { return 0, false }
