package polymux

import (
	"fmt"
	"time"

	"github.com/polymux/polymux/internal/wire"
)

const (
	// batchBytes bounds the DATA payload of one write to the connection,
	// and so how long a control frame can wait behind data.
	batchBytes = 256 << 10
	// goAwayWait bounds how long an abrupt end (a protocol error, a
	// failed write) spends on its GoAway.
	goAwayWait = 250 * time.Millisecond
	// quietSpell is how long a graceful end waits, once the peer has
	// everything, for the peer to fall silent before closing: a peer
	// still sending (window updates for what it reads) would be reset by
	// the close, and some peers then lose what they had not read.
	quietSpell = 200 * time.Millisecond
)

// writer owns the connection's write side. A goroutine runs it only while
// the scheduler has something to send: it gathers a batch (session frames,
// then control frames, then data round robin), writes it with one
// vectored write, and stops when nothing is left, so an idle session has
// no writer goroutine and holds no write buffer. At the end of the session
// it runs once more to close the connection (final).
type writer struct {
	s     *Session
	sched scheduler
	enc   encoder
	b     batch  // owned by the running writer goroutine
	runFn func() // run, made once: a go statement on it allocates nothing
}

func (w *writer) init(s *Session) {
	w.s = s
	w.runFn = w.run
	w.sched.w = w
	w.sched.roomCh = make(chan struct{}, 1)
	w.enc.init(s.conn, s.cfg.WriteTimeout, s.now)
}

// detected lets the writer run once the protocol is known.
func (w *writer) detected() {
	w.b.codec = w.s.codec
	q := &w.sched
	q.mu.Lock()
	q.started = true
	q.kick()
	q.mu.Unlock()
}

// ending makes the writer run final, starting it if it is not running.
func (w *writer) ending() {
	q := &w.sched
	q.mu.Lock()
	q.ending = true
	q.kick()
	q.mu.Unlock()
}

// run is the writer goroutine.
func (w *writer) run() { w.serve(nil) }

// serve writes batches while the scheduler has work, and parks the
// writer when it has none. With lender nil it is the writer goroutine. A
// Write whose bytes go out from its own slice lends its goroutine instead
// (lender is its stream), when no writer runs: it writes batches, its own
// frames and those of other streams alike, until its bytes are all
// taken, then hands whatever is left to a writer goroutine. Bulk writes
// then cost no goroutine hand-off, as on a plain socket.
func (w *writer) serve(lender *Stream) {
	s := w.s
	for {
		if s.IsClosed() {
			if lender != nil {
				go w.runFn() // the end may wait long: never in a Write
				return
			}
			w.final()
			return
		}
		if w.fill() == 0 {
			w.b.release()
			if w.sched.park() {
				return
			}
			continue
		}
		if err := w.flush(); err != nil {
			// The frames may be cut anywhere: nothing more can be
			// written. The read loop goes on until the connection ends,
			// or the watchdog closes it, so that what the peer sent
			// before still arrives.
			s.shutdown(fmt.Errorf("%w: write: %w", ErrSessionClosed, err), wire.CodeNone)
			w.stop(false)
			return
		}
		if lender != nil && !lender.directPending() {
			w.b.release()
			if !w.sched.park() {
				go w.runFn()
			}
			return
		}
	}
}

// stop ends the writer for good, closing the connection if closeConn.
func (w *writer) stop(closeConn bool) {
	if closeConn {
		w.s.conn.Close()
	}
	w.b.release()
	q := &w.sched
	q.mu.Lock()
	q.finished, q.running = true, false
	q.mu.Unlock()
	close(w.s.writerDone)
}

// fill gathers the next batch and returns its number of frames.
func (w *writer) fill() int {
	s, b := w.s, &w.b
	b.reset()
	w.sched.sessionFrames(b)
	for b.room(4) {
		st := w.sched.nextControl()
		if st == nil {
			break
		}
		st.popControl(b)
	}
	for b.dataBytes < batchBytes && b.room(5) {
		st := w.sched.nextData()
		if st == nil {
			break
		}
		st.popData(b, s.frameMax)
	}
	for _, st := range b.settled {
		st.settle()
	}
	if b.err != nil {
		s.shutdown(b.err, wire.CodeInternal)
	}
	return b.frames
}

// flush writes the batch and releases the DATA bytes it carried.
func (w *writer) flush() error {
	written, err := w.enc.write(&w.b)
	for _, t := range w.b.taken {
		// A frame the connection took whole counts as sent even if the
		// write failed later on.
		t.st.sent(t.n, t.direct, t.end <= written)
	}
	if err == nil {
		w.s.nBytesSent.Add(uint64(w.b.dataBytes))
		w.s.nFramesSent.Add(uint64(w.b.frames))
	}
	return err
}

// werr writes a batch that carries no DATA, and returns the error.
func (w *writer) werr(b *batch) error {
	_, err := w.enc.write(b)
	return err
}

// final ends the connection, by s.lingerEnd. A graceful end first writes
// everything queued, then resets the streams the application never closed,
// then GoAway, and waits for the peer to take it all (awaitDelivery); an
// abrupt one writes only GoAway.
func (w *writer) final() {
	s := w.s
	defer w.stop(true)
	if !s.isDetected() || !time.Now().Before(s.lingerEnd) {
		return
	}
	if s.graceful {
		for w.fill() > 0 {
			if w.flush() != nil {
				return
			}
		}
		// A GoAway with a code tells the peer why every open stream ends;
		// without one, resets say that the streams left open ended short.
		if s.goAwayCode == wire.CodeNone && !w.resetUnclosed() {
			return
		}
	}
	if s.caps.GoAway {
		s.mu.Lock()
		last := s.lastPeerID
		s.mu.Unlock()
		w.sched.goAway(s.goAwayCode, last)
	}
	w.b.reset()
	w.sched.sessionFrames(&w.b)
	if w.b.frames > 0 && w.werr(&w.b) != nil {
		return
	}
	if s.graceful {
		w.awaitDelivery()
	}
}

// resetUnclosed resets, after everything they wrote, the streams whose
// writing side the application never closed, so their peers learn that the
// data ended short rather than reading a clean end. Without RST (smux),
// the end of the connection says it. It reports false if a write failed.
func (w *writer) resetUnclosed() bool {
	s, b := w.s, &w.b
	if !s.caps.Reset {
		return true
	}
	s.mu.Lock()
	streams := make([]*Stream, 0, len(s.streams))
	for _, st := range s.streams {
		streams = append(streams, st)
	}
	s.mu.Unlock()
	b.reset()
	for _, st := range streams {
		if !st.writing() {
			continue
		}
		if !b.room(1) {
			if w.werr(b) != nil {
				return false
			}
			b.reset()
		}
		b.frame(abortFrame(s.caps, st.id, s.resetCode(wire.CodeNone)))
	}
	return b.frames == 0 || w.werr(b) == nil
}

// awaitDelivery half-closes the connection and waits, until s.lingerEnd,
// for the peer to have everything written: its end of the connection
// closing proves that; so does an empty socket send queue (on Linux)
// followed by a quietSpell in which the peer sends nothing more. Closing
// at once would lose what the kernel still holds whenever data the peer
// sent meanwhile lies unread, since TCP then resets the connection and
// discards its send queue; and a peer still sending when we close is
// reset too.
func (w *writer) awaitDelivery() {
	s := w.s
	cw, ok := s.conn.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return // no half-close (net.Pipe): a completed write was delivered
	}
	closedAt := s.now()
	linger := time.NewTimer(time.Until(s.lingerEnd))
	defer linger.Stop()
	unsent := sendQueueProbe(s.conn)
	poll := time.NewTimer(0)
	defer poll.Stop()
	for every := 50 * time.Microsecond; ; every = min(2*every, 10*time.Millisecond) {
		select {
		case <-s.readDone:
			return
		case <-linger.C:
			return
		case <-poll.C:
			quiet := time.Duration(s.now() - max(closedAt, s.lastRecv.Load()))
			if quiet >= quietSpell && (unsent == nil || unsent() == 0) {
				return
			}
			poll.Reset(every)
		}
	}
}
