package polymux

import (
	"sync"
	"time"
)

// timeouts runs one fixed-duration timeout (StreamOpenTimeout or
// StreamCloseTimeout) for every stream of a session with a single timer:
// every entry waits the same time, so the order of arming is the order of
// expiry, and a FIFO is the whole schedule. A stream costs an entry of two
// words while armed, not a timer of its own. Entries name streams by id
// and arming time, so an entry outlived by its stream keeps nothing alive,
// and fire decides whether it still applies.
type timeouts struct {
	d    time.Duration
	now  func() int64              // the session's clock
	fire func(id uint32, at int64) // called, without the lock, for each expired entry

	mu      sync.Mutex // guards the fields below
	q       []timeoutEntry
	head    int
	timer   *time.Timer
	stopped bool
}

type timeoutEntry struct {
	id uint32
	at int64 // the session's clock when armed
}

// add arms the timeout for stream id, armed at at.
func (t *timeouts) add(id uint32, at int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	t.q = append(t.q, timeoutEntry{id, at})
	if len(t.q)-t.head == 1 {
		t.arm(at)
	}
}

// arm sets the timer for the entry armed at at. t.mu must be held.
func (t *timeouts) arm(at int64) {
	wait := time.Duration(at + int64(t.d) - t.now())
	if t.timer == nil {
		t.timer = time.AfterFunc(wait, t.expire)
	} else {
		t.timer.Reset(wait)
	}
}

// expire fires every entry whose time has come and re-arms for the next.
func (t *timeouts) expire() {
	var due []timeoutEntry
	t.mu.Lock()
	now := t.now()
	for t.head < len(t.q) && t.q[t.head].at+int64(t.d) <= now {
		due = append(due, t.q[t.head])
		t.head++
	}
	if t.head == len(t.q) {
		t.q, t.head = t.q[:0], 0
		if cap(t.q) > 1024 {
			t.q = nil // a burst is over: give its memory back
		}
	} else {
		if t.head > len(t.q)/2 {
			t.q = append(t.q[:0], t.q[t.head:]...)
			t.head = 0
		}
		if !t.stopped {
			t.arm(t.q[t.head].at)
		}
	}
	t.mu.Unlock()
	for _, e := range due {
		t.fire(e.id, e.at)
	}
}

// stop ends the timeouts for good, dropping every entry.
func (t *timeouts) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stopped = true
	t.q, t.head = nil, 0
	if t.timer != nil {
		t.timer.Stop()
	}
}
