package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// fdSlack is how many file descriptors are kept for everything but the
// connection pairs a workload holds (listeners, the runtime, stdio).
const fdSlack = 200

// raiseNofile makes room for want open files: if RLIMIT_NOFILE's soft
// limit is lower, it raises it, and the hard limit too if that is lower
// (which takes root, or CAP_SYS_RESOURCE, and stops at fs.nr_open). If
// raising the hard limit fails, the soft limit goes as high as the hard
// one allows. It returns what it did, for the report; "" if nothing was
// needed. (Go has already raised the soft limit to the hard one at start.)
func raiseNofile(want uint64) string {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Sprintf("RLIMIT_NOFILE unknown (%v)", err)
	}
	if rl.Cur >= want {
		return ""
	}
	if nr := nrOpen(); nr > 0 && want > nr {
		want = nr
	}
	old := rl
	next := syscall.Rlimit{Cur: want, Max: max(rl.Max, want)}
	err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &next)
	if err == nil {
		return fmt.Sprintf("RLIMIT_NOFILE raised from %d (soft) / %d (hard) to %d / %d with setrlimit", old.Cur, old.Max, next.Cur, next.Max)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	why := err.Error()
	if !hasCapSysResource() {
		why += ": no CAP_SYS_RESOURCE, which raising the hard limit takes, even as root"
	}
	return fmt.Sprintf("RLIMIT_NOFILE could not be raised from %d (soft) / %d (hard) to %d (%s); running with a soft limit of %d", old.Cur, old.Max, want, why, rl.Cur)
}

// hasCapSysResource reports whether CAP_SYS_RESOURCE (capability 24) is in
// this process's effective set, from /proc/self/status; true if unknown.
func hasCapSysResource() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return true
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err != nil || caps&(1<<24) != 0
		}
	}
	return true
}

// nrOpen is fs.nr_open, the most RLIMIT_NOFILE can be raised to, or 0 if
// unknown.
func nrOpen() uint64 {
	b, err := os.ReadFile("/proc/sys/fs/nr_open")
	if err != nil {
		return 0
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// fdPairs is how many connection pairs (two file descriptors each in this
// process) RLIMIT_NOFILE's soft limit leaves room for, fdSlack aside.
func fdPairs() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 500
	}
	return max(1, int(min(rl.Cur, 1<<21)-min(rl.Cur, fdSlack))/2)
}
