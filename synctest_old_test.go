//go:build !go1.25

package polymux

import "testing"

// forEachTimed is forEach: without testing/synctest (Go 1.25), tests that
// wait on timers run on the real clock.
func forEachTimed(t *testing.T, f func(t *testing.T, e env)) { forEach(t, f) }

// timed runs f.
func timed(t *testing.T, f func(t *testing.T)) { f(t) }
