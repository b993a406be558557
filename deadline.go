package polymux

import (
	"sync"
	"time"
)

// deadline is a channel that is closed when a time passes, re-armable, in
// the manner of net.Pipe's: waiting on it costs no goroutine, and a
// deadline in the past is closed at once.
type deadline struct {
	mu     sync.Mutex // guards timer and cancel
	timer  *time.Timer
	cancel chan struct{} // closed when the deadline passes
}

func makeDeadline() deadline { return deadline{cancel: make(chan struct{})} }

// set arms the deadline for t; the zero time disarms it.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the timer fired: wait for it to close cancel
	}
	d.timer = nil
	closed := isClosed(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		cancel := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(cancel) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

// wait returns a channel closed once the deadline has passed.
func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

// expired reports whether the deadline has passed.
func (d *deadline) expired() bool { return isClosed(d.wait()) }

// stop releases the timer, if any; a deadline that already passed stays
// passed, and set may re-arm it later.
func (d *deadline) stop() {
	d.mu.Lock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the timer fired: wait for it to close cancel
	}
	d.timer = nil
	d.mu.Unlock()
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// notify wakes one waiter on a 1-buffered signal channel without blocking.
func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// deadlines are a stream's read and write deadlines, made the first time
// one is set: a stream that never sets a deadline has no timer and no
// channel for them.
type deadlines struct {
	read, write deadline
}

func newDeadlines() *deadlines {
	return &deadlines{read: makeDeadline(), write: makeDeadline()}
}

// waitCh returns a channel closed once d has passed; nil, which a select
// never picks, when there is no deadline.
func waitCh(d *deadline) <-chan struct{} {
	if d == nil {
		return nil
	}
	return d.wait()
}

// waitChans lends the one-slot channels blocked Reads and Writes wait on,
// so that a stream nobody is waiting on holds none. Each session keeps its
// own (a channel belongs with the goroutines of its session), and up to
// maxSpareWaits between loans. The Read offers (readOffer), which own a
// channel each, are kept the same way.
type waitChans struct {
	free   freeList[chan struct{}]
	offers freeList[*readOffer]
}

const maxSpareWaits = 64

func newWaitChans() waitChans {
	return waitChans{
		free:   freeList[chan struct{}]{max: maxSpareWaits},
		offers: freeList[*readOffer]{max: maxSpareWaits},
	}
}

func (p *waitChans) get() chan struct{} {
	if ch, ok := p.free.pop(); ok {
		return ch
	}
	return make(chan struct{}, 1)
}

// put takes back an emptied channel.
func (p *waitChans) put(ch chan struct{}) { p.free.push(ch) }

// waiter is a channel borrowed from a session's waitChans while at least
// one call waits. Its methods run under the owner's mutex.
type waiter struct {
	ch chan struct{}
	n  int // calls waiting on ch
}

// start borrows the channel for one more waiting call.
func (w *waiter) start(p *waitChans) chan struct{} {
	if w.ch == nil {
		w.ch = p.get()
	}
	w.n++
	return w.ch
}

// done ends one waiting call, giving the channel back, emptied, once no
// call waits.
func (w *waiter) done(p *waitChans) {
	w.n--
	if w.n > 0 {
		return
	}
	select {
	case <-w.ch:
	default:
	}
	p.put(w.ch)
	w.ch = nil
}

// wake signals the waiting calls, if any.
func (w *waiter) wake() {
	if w.ch != nil {
		notify(w.ch)
	}
}
