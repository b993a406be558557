package polymux

import (
	"fmt"
	"runtime"
	"time"

	"github.com/polymux/polymux/internal/wire"
)

const (
	// batchBytes bounds the DATA payload of one write to the connection
	// (of copied bytes; see directBatchBytes), and so how long a control
	// frame can wait behind data.
	batchBytes = 256 << 10
	// directBatchBytes is that bound for the bytes of direct Writes
	// (Writes of directMin or more, sent from the caller's slice) on a
	// connection that takes vectored writes. A 1 MiB Write then goes out
	// in one connection write instead of four. One stream's 1 MiB writes,
	// in-package BenchmarkThroughput with the default config, 34
	// interleaved pairs, against raw TCP: yamux 0.67 -> 0.80x, muxado
	// 0.70 -> 0.83x, smux v2 0.81 -> 0.85x. Copied bytes keep batchBytes,
	// so a batch of small Writes, which is what a latency-sensitive
	// session sends, holds its control frames no longer than before. A
	// connection without vectored writes (TLS) has its batch copied into
	// one buffer, where the larger bound would only grow that buffer. A
	// connection too slow to take it well within WriteTimeout keeps
	// batchBytes too (encoder.noteWrite).
	directBatchBytes = 1 << 20
	// goAwayWait bounds how long an abrupt end (a protocol error, a
	// failed write) spends on its GoAway.
	goAwayWait = 250 * time.Millisecond
	// coalesceBelow is the DATA size under which a writer goroutine's
	// first batch waits for the goroutines already runnable, once, and
	// then takes what they queued meanwhile (see serve).
	coalesceBelow = 4 << 10
	// coalesceSlow is how long the runnable goroutines may take to go
	// ahead of a writer, per frame they add to its batch (see serve): a
	// turn slower than that says that the CPUs are busy with work that
	// does not block, and writers take no turn for coalesceRest after it.
	coalesceSlow = 500 * time.Microsecond
	coalesceRest = 100 * time.Millisecond
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
	// restUntil (s.now()) is when writer goroutines may take turns again
	// after a slow one; only writer goroutines use it, one at a time.
	restUntil int64
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
//
// A writer goroutine's first batch may wait for its neighbours first
// (coalesce).
func (w *writer) serve(lender *Stream) {
	s := w.s
	first := lender == nil
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
		if first {
			first = false
			w.coalesce()
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

// coalesce lets the runnable goroutines go ahead of a writer goroutine's
// first batch, once, and then tops the batch up, when that pays.
//
// A writer goroutine is started by the first frame queued while none
// runs, often a small one whose neighbours are a moment behind: on an rpc
// server the handler's reply, and then the FIN of the handler before it,
// which a goroutine still waiting to run is about to queue. So a writer
// goroutine whose first batch carries less than coalesceBelow of data and
// no control frame first lets the runnable goroutines go ahead, once, and
// then tops the batch up. One connection write then carries both (rpc on
// smux and muxado: about 2.8 -> 2 connection writes per call). A batch
// with control frames never waits: a window update that waits stalls its
// sender. Where every CPU is busy with goroutines that do not block, a
// turn costs a round of their time slices and gains a frame or none: a
// turn slower than coalesceSlow per frame gained stops the turns for
// coalesceRest. Many callers make slow turns too, but each gains many
// frames.
func (w *writer) coalesce() {
	s, b := w.s, &w.b
	now := s.now()
	if b.control > 0 || b.dataBytes >= coalesceBelow || now < w.restUntil {
		return
	}
	had := b.frames
	runtime.Gosched()
	w.top()
	if done := s.now(); done-now > int64(coalesceSlow)*int64(1+b.frames-had) {
		w.restUntil = done + int64(coalesceRest)
	}
}

// fill gathers the next batch and returns its number of frames.
func (w *writer) fill() int {
	w.b.reset()
	return w.top()
}

// top adds to the batch what the scheduler holds, in fill's order and
// within its bounds, and returns the batch's number of frames.
func (w *writer) top() int {
	s, b := w.s, &w.b
	settled, before := len(b.settled), b.frames
	w.sched.sessionFrames(b)
	for b.room(4) {
		st := w.sched.nextControl()
		if st == nil {
			break
		}
		st.popControl(b)
	}
	b.control += b.frames - before
	limit := batchBytes
	if w.enc.vectored && w.enc.fast {
		limit = directBatchBytes
	}
	for b.dataBytes < limit && b.room(5) {
		st := w.sched.nextData()
		if st == nil || !st.popData(b, s.frameMax, b.dataBytes < batchBytes) {
			break
		}
	}
	for _, st := range b.settled[settled:] {
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
