package flow

import "time"

// Tune grows the window when it, and not the reader, limits throughput:
// if the bytes read since the last tuning epoch went by in less than
// 4·fraction·rtt, where fraction is their share of the window, the window
// was used up faster than a round trip could refill it, so it doubles,
// up to max. The threshold scales with the share of the window read, so
// tuning keeps growing on long links instead of stalling near twice the
// initial window. The growth is reserved from budget first (see
// Budget.TryReserve) and made only if it fits; it is owed to the peer as credit by the next Update. now is
// any monotonic clock; rtt is the smoothed round trip, zero when unknown.
// It returns the bytes the window grew by.
func (r *Recv) Tune(now, rtt time.Duration, max uint32, budget *Budget) uint32 {
	read := r.consumed - r.epochRead
	start := r.epochStart
	r.epochStart, r.epochRead = now, r.consumed
	if rtt <= 0 || r.window >= max || read == 0 || start == 0 {
		return 0
	}
	fraction := float64(read) / float64(r.window)
	if now-start >= time.Duration(4*fraction*float64(rtt)) {
		return 0
	}
	grow := min(r.window, max-r.window)
	held := r.Held()
	r.window += grow
	if !budget.TryReserve(int64(r.Held() - held)) {
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
