package tunnel

import (
	"net/netip"
	"sync"
	"time"
)

// Throttle slows down repeated authentication failures from one address.
// After n failures in a row, the next attempt from that address is not
// even evaluated until Base·2^(n-1) (at most Max) has passed since the
// last failure; a success, or Forget without a failure, clears the
// record. IPv6 addresses count by /64, since one host commonly holds a
// whole /64.
//
// The table holds at most Size addresses. When it is full, records older
// than Forget go first, then the one whose last failure is oldest: the
// memory an attacker can make the server spend is bounded, and what the
// eviction forgives is the address that has been quiet the longest.
type Throttle struct {
	Base   time.Duration    // delay after the first failure; default 1 s
	Max    time.Duration    // longest delay; default 1 min
	Forget time.Duration    // a record with no failure for this long is dropped; default 10 min
	Size   int              // most addresses held; default 4096
	Now    func() time.Time // the clock; default time.Now

	mu      sync.Mutex // guards entries
	entries map[netip.Addr]*failures
}

// failures is the record of one address.
type failures struct {
	n    int       // failures in a row
	last time.Time // of the latest
}

// defaults of Throttle.
const (
	throttleBase   = time.Second
	throttleMax    = time.Minute
	throttleForget = 10 * time.Minute
	throttleSize   = 4096
)

// Wait is how long an attempt from ip must still wait before it may be
// evaluated; zero means now.
func (t *Throttle) Wait(ip netip.Addr) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	f := t.entries[key(ip)]
	if f == nil || t.expired(f, now) {
		return 0
	}
	return max(f.last.Add(t.delay(f.n)).Sub(now), 0)
}

// Failed records a failed attempt from ip.
func (t *Throttle) Failed(ip netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	k := key(ip)
	f := t.entries[k]
	if f == nil || t.expired(f, now) {
		if f == nil {
			t.makeRoom(now)
		}
		f = &failures{}
		if t.entries == nil {
			t.entries = make(map[netip.Addr]*failures)
		}
		t.entries[k] = f
	}
	f.n++
	f.last = now
}

// Succeeded clears ip's record.
func (t *Throttle) Succeeded(ip netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.entries, key(ip))
}

// Len is how many addresses the table holds.
func (t *Throttle) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.entries)
}

// makeRoom drops records until there is room for one more: the expired
// ones, then the one with the oldest failure. t.mu must be held.
func (t *Throttle) makeRoom(now time.Time) {
	size := t.Size
	if size <= 0 {
		size = throttleSize
	}
	if len(t.entries) < size {
		return
	}
	var oldest netip.Addr
	var oldestAt time.Time
	for k, f := range t.entries {
		if t.expired(f, now) {
			delete(t.entries, k)
			continue
		}
		if !oldest.IsValid() || f.last.Before(oldestAt) {
			oldest, oldestAt = k, f.last
		}
	}
	if len(t.entries) >= size {
		delete(t.entries, oldest)
	}
}

// delay is the wait after n failures in a row.
func (t *Throttle) delay(n int) time.Duration {
	base, most := t.Base, t.Max
	if base <= 0 {
		base = throttleBase
	}
	if most <= 0 {
		most = throttleMax
	}
	return doubled(base, n-1, most)
}

// expired reports whether f is old enough to be forgotten.
func (t *Throttle) expired(f *failures, now time.Time) bool {
	forget := t.Forget
	if forget <= 0 {
		forget = throttleForget
	}
	return now.Sub(f.last) >= forget
}

// now reads the clock.
func (t *Throttle) now() time.Time {
	if t.Now != nil {
		return t.Now()
	}
	return time.Now()
}

// key is the unit an address is counted by: itself for IPv4, its /64
// for IPv6.
func key(ip netip.Addr) netip.Addr {
	ip = ip.Unmap()
	if ip.Is4() {
		return ip
	}
	p, _ := ip.WithZone("").Prefix(64)
	return p.Addr()
}
