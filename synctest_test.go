//go:build go1.25

package polymux

import (
	"testing"
	"testing/synctest"
)

// forEachTimed is forEach for tests that wait on timers: over net.Pipe,
// which blocks only on channels, each runs in a synctest bubble, whose
// clock jumps ahead whenever every goroutine waits, so deadlines,
// keepalives and timeouts fire at once and in a fixed order. Over TCP,
// where goroutines block in the kernel and the bubble cannot see them,
// they run on the real clock.
func forEachTimed(t *testing.T, f func(t *testing.T, e env)) {
	forEach(t, func(t *testing.T, e env) {
		if e.tr.name != "pipe" {
			f(t, e)
			return
		}
		synctest.Test(t, func(t *testing.T) { f(t, e) })
	})
}

// timed runs f in a synctest bubble (see forEachTimed).
func timed(t *testing.T, f func(t *testing.T)) { synctest.Test(t, f) }
