package flow

import "time"

// Tune grows the window when it, and not the reader, limits throughput. A
// window caps a stream at window/rtt; if the application read the last
// epoch's bytes at more than half that rate (rate·2·rtt ≥ window), the
// window is what holds the stream back, so it doubles, up to max. The test
// is on the rate, so it scales with the window and keeps growing on long
// links (a fixed "four round trips" threshold stalls near twice the
// initial window, go-yamux issue 136), and it stops near twice the
// bandwidth-delay product. rtt should be the minimum round trip seen:
// queueing inflates the others, and would make a fast local link look
// window-limited. The growth is reserved from budget first (see
// Budget.TryReserve) and made only if it fits; it is owed to the peer as
// credit by the next Update. now is any monotonic clock. It returns the
// bytes the window grew by.
func (r *Recv) Tune(now, rtt time.Duration, max uint32, budget *Budget) uint32 {
	return r.TuneWith(now, rtt, max, budget, nil)
}

// TuneWith is Tune with a second say over the growth: once the budget has
// room, reserve, if not nil, is asked for the grow bytes (an application's
// memory manager, say), and growth happens only if it agrees too.
func (r *Recv) TuneWith(now, rtt time.Duration, max uint32, budget *Budget, reserve func(grow uint32) bool) uint32 {
	read := r.consumed - r.epochRead
	start := r.epochStart
	r.epochStart, r.epochRead = now, r.consumed
	if rtt <= 0 || r.window >= max || read == 0 || start == 0 || now <= start {
		return 0
	}
	rate := float64(read) / (now - start).Seconds()
	if rate*2*rtt.Seconds() < float64(r.window) {
		return 0
	}
	grow := min(r.window, max-r.window)
	held := r.Held()
	r.window += grow
	charge := int64(r.Held() - held)
	if !budget.TryReserve(charge) {
		r.window -= grow
		return 0
	}
	if reserve != nil && !reserve(grow) {
		budget.Release(charge)
		r.window -= grow
		return 0
	}
	r.pending += grow
	return grow
}

// StartEpoch begins the first tuning epoch at now.
func (r *Recv) StartEpoch(now time.Duration) {
	r.epochStart, r.epochRead = now, r.consumed
}
