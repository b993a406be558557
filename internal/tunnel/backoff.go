package tunnel

import (
	"math/rand/v2"
	"time"
)

// Backoff is the client's redial schedule: exponential from Min, capped at
// Max, with jitter so that many clients cut off at once do not come back
// in step. The n-th delay is drawn from [d/2, d) where d = min(Max,
// Min·2^n).
type Backoff struct {
	Min  time.Duration  // first delay; default 250 ms
	Max  time.Duration  // cap; default 10 s
	Rand func() float64 // in [0, 1); default math/rand/v2.Float64

	n int // delays handed out since the last Reset
}

// Defaults of Backoff.
const (
	backoffMin = 250 * time.Millisecond
	backoffMax = 10 * time.Second
)

// Next is the delay before the next attempt.
func (b *Backoff) Next() time.Duration {
	lo, hi := b.Min, b.Max
	if lo <= 0 {
		lo = backoffMin
	}
	if hi <= 0 {
		hi = backoffMax
	}
	d := doubled(lo, b.n, hi)
	b.n++
	r := rand.Float64
	if b.Rand != nil {
		r = b.Rand
	}
	return d/2 + time.Duration(r()*float64(d/2))
}

// Reset starts the schedule again from Min, after a connection worked.
func (b *Backoff) Reset() { b.n = 0 }

// doubled is d doubled n times, but at most most.
func doubled(d time.Duration, n int, most time.Duration) time.Duration {
	for i := 0; i < n && d < most; i++ {
		d *= 2
	}
	return min(d, most)
}
