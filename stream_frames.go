package polymux

import (
	"math"
	"runtime"
	"time"

	"github.com/polymux/polymux/internal/flow"
	"github.com/polymux/polymux/internal/wire"
)

// yieldBacklog is the unread backlog of one stream past which, on a
// protocol without windows (smux v1), the read loop yields its processor
// after each frame it queues. The reader it woke then runs, rather than
// wait in the read loop's run queue for a whole time slice while the
// backlog grows at the connection's speed: tens of MiB, up to
// MaxSessionBuffer, whose chunks outgrow the free lists and are made
// anew after each collection. With windows the peer's credit bounds it.
const yieldBacklog = 1 << 20

// The frames a stream receives (from the session's read loop) and the
// frames it owes (to the writer).

// onFrame applies a frame the peer sent on the stream: acknowledgement,
// reset, credit, data and half-close, in that order. Only the read loop
// calls it; an error ends the session.
func (s *Stream) onFrame(f wire.Frame) error {
	sess := s.sess
	if f.Flags&wire.FlagACK != 0 {
		s.onAck()
	}
	if f.Flags&wire.FlagRST != 0 {
		s.abort(s.resetBy(f.Value), false, 0)
		return sess.skip(f)
	}
	if f.Type == wire.TypeWindow && (f.Flags == 0 || sess.caps.WindowOnOpen) {
		// A plain update carries credit; SYN, ACK and FIN carry it too
		// only where the protocol says so (yamux).
		if err := s.onCredit(f.Value, f.Window); err != nil {
			return err
		}
	}
	if f.Type == wire.TypeData && f.Length > 0 {
		if err := s.onData(f.Length); err != nil {
			return err
		}
	}
	if f.Flags&wire.FlagFIN != 0 {
		s.onFin()
	}
	return nil
}

// resetBy is the error of the stream once the peer reset it with code: a
// refusal if it was never acknowledged (yamux) or the code says so
// (muxado), a plain reset otherwise; either way errors.As finds the code.
func (s *Stream) resetBy(code uint32) error {
	s.mu.Lock()
	refused := s.local && !s.acked
	s.mu.Unlock()
	if s.sess.caps.ReasonCodes {
		refused = refused || s.local && (wire.Code(code) == wire.CodeRefused || wire.Code(code) == wire.CodeAcceptFull)
	}
	reset := &StreamError{Code: code, Remote: true}
	if refused {
		return &refusedError{reset}
	}
	return reset
}

// onAck records the peer's acknowledgement of this side's open.
func (s *Stream) onAck() {
	s.mu.Lock()
	if s.acked {
		s.mu.Unlock()
		return
	}
	s.acked = true
	s.mu.Unlock()
	s.sess.acknowledged()
}

// onCredit applies a window update to the send credit.
func (s *Stream) onCredit(value, window uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.swin.Apply(value, window); err != nil {
		return protocolErr("stream %d: %v", s.id, err)
	}
	if s.directReady() {
		s.sess.w.sched.pushData(s)
	}
	s.wwait.wake()
	return nil
}

// onFin records the peer's half-close.
func (s *Stream) onFin() {
	s.mu.Lock()
	switch s.in {
	case recvOpen:
		s.in = recvEOF
	case recvShut:
		s.in = recvDone
	default:
		s.mu.Unlock()
		return // a repeated FIN: accepted, and nothing to do
	}
	s.freeSlot()
	s.sess.release(int(s.rwin.Finish()))
	s.rwait.wake()
	s.mu.Unlock()
	s.settle()
}

// smallPayload is the payload size up to which onData reads a payload into
// the read buffer before taking it, rather than into chunks of its own.
const smallPayload = directRead

// onData reads n payload bytes into the receive buffer, straight from the
// connection. Data the application no longer wants is dropped; a window
// overrun breaks the protocol (or, where the protocol says so, resets the
// stream); data past the session budget resets the stream, or, where the
// protocol cannot reset, waits for the application to read.
func (s *Stream) onData(n uint32) error {
	sess := s.sess
	sess.nBytesRecv.Add(uint64(n))
	s.mu.Lock()
	for {
		if s.err != nil || s.in.fin() {
			s.mu.Unlock()
			return sess.skipData(n)
		}
		if !s.rwin.Fits(n) {
			if !sess.caps.OverrunResets {
				s.mu.Unlock()
				return protocolErr("stream %d: %d bytes beyond the receive window", s.id, n)
			}
			s.mu.Unlock()
			return sess.resetOnData(s, n, wire.CodeFlowControl, ErrStreamReset)
		}
		if s.updAt != 0 {
			sess.observeRTT(time.Duration(sess.now() - s.updAt))
			s.updAt = 0
		}
		if s.in.shut() {
			if s.closed && sess.caps.Reset {
				s.mu.Unlock()
				return sess.resetOnData(s, n, wire.CodeStreamClosed, ErrStreamClosed)
			}
			// Dropped on arrival: never charged, but the peer gets its
			// window back.
			s.rwin.Receive(n)
			s.rwin.Read(n)
			s.maybeUpdate(false)
			s.mu.Unlock()
			return sess.skipData(n)
		}
		if sess.budget.TryAcquire(int64(s.rwin.Charge(n))) {
			break
		}
		if sess.caps.Reset {
			s.mu.Unlock()
			sess.log.Warn("polymux: session buffer full, resetting stream", "stream", s.id, "buffered", sess.nBuffered.Load())
			return sess.resetOnData(s, n, wire.CodeFlowControl, ErrStreamReset)
		}
		// Without RST (smux) the only bound is to stop reading the
		// connection until the application reads: the protocol's own limit.
		s.mu.Unlock()
		select {
		case <-sess.budgetCh:
		case <-sess.closing:
			return sess.skipData(n)
		}
		s.mu.Lock()
	}
	s.rwin.Receive(n) // fits: checked above
	if d := s.dr; d != nil {
		if !d.sealed && s.recv.len() == 0 && len(d.p)-d.n >= int(n) {
			if took, err := s.takeDirect(d, int(n)); took {
				return err
			}
		}
		// This payload goes to the queue, so no later one may go to p,
		// even once another Read has taken the queue: a Read returns one
		// run of the stream. (An offer made while a payload was being
		// read into the queue sees it there: recv is not empty.)
		d.sealed = true
	}
	if buffered := sess.rd.buffered(); buffered < int(n) && n <= smallPayload {
		// A small payload not all read yet: read the rest into the read
		// buffer, without the lock, and take it in one piece.
		s.mu.Unlock()
		_, err := sess.rd.Peek(int(n))
		s.mu.Lock()
		if err != nil {
			s.forgo(int(n))
			s.mu.Unlock()
			return payloadErr(err)
		}
	}
	if sess.rd.buffered() >= int(n) {
		// All read from the connection already: copy it in under the
		// lock, which no read from the connection can block.
		for k := int(n); k > 0; {
			dst := s.recv.space(k)
			sess.rd.copyTo(dst)
			s.recv.commit(len(dst))
			k -= len(dst)
		}
	} else {
		// Read the rest without the lock, into chunks of the frame's own
		// that become readable together, once the frame is whole: a
		// frame cut by the end of the connection delivers nothing, so
		// the peer's Write, which counts only whole frames written, is
		// never exceeded.
		var frame byteQueue
		for remaining := int(n); remaining > 0; {
			// A chunk per piece: what is buffered, then the rest read
			// into the same chunk.
			k := min(remaining, maxChunk)
			c := getChunk(k)
			dst := c.buf[:min(k, len(c.buf))]
			got := min(len(dst), sess.rd.buffered())
			sess.rd.copyTo(dst[:got])
			if got < len(dst) {
				s.mu.Unlock()
				m, err := sess.rd.readFull(dst[got:])
				s.mu.Lock()
				if err != nil {
					putChunk(c)
					frame.discard(frame.len())
					s.forgo(int(n))
					s.mu.Unlock()
					return payloadErr(err)
				}
				got += m
			}
			c.w = got
			frame.push(c)
			remaining -= got
		}
		s.recv.splice(&frame)
	}
	if b := sess.nBuffered.Add(int64(n)); b > sess.peakBuf.Load() {
		sess.peakBuf.Store(b)
	}
	if s.err != nil || s.in.shut() {
		// Reset or CloseRead while the payload was read: drop it.
		dropped := s.recv.len()
		s.recv.discard(dropped)
		if s.err != nil {
			sess.nBuffered.Add(-int64(dropped)) // fail released its budget
		} else {
			s.consumed(dropped)
		}
		s.mu.Unlock()
		return nil
	}
	s.rwait.wake()
	yield := sess.window == flow.ModeNone && s.recv.len() >= yieldBacklog
	s.mu.Unlock()
	if yield {
		runtime.Gosched()
	}
	return nil
}

// takeDirect places an n-byte payload straight into the buffer a waiting
// Read offered, if it has all been received: already in the read buffer,
// or, where the connection can tell (sess.ready), waiting in the socket,
// so that reading it cannot block and the Read, which waits for it, keeps
// its deadline. It reports false, with nothing consumed, when the payload
// is still on its way; otherwise it releases s.mu. Bytes placed in p count
// as read at once. s.mu must be held.
func (s *Stream) takeDirect(d *readOffer, n int) (took bool, err error) {
	sess := s.sess
	dst := d.p[d.n : d.n+n]
	if b := sess.rd.buffered(); b >= n {
		sess.rd.copyTo(dst)
	} else {
		if sess.ready == nil || b+sess.ready() < n {
			return false, nil
		}
		d.busy = true
		s.mu.Unlock()
		_, err = sess.rd.readFull(dst)
		s.mu.Lock()
		d.busy = false
		if err != nil {
			// Cut by the end of the connection: nothing is delivered.
			notify(d.ch)
			s.forgo(n)
			s.mu.Unlock()
			return true, payloadErr(err)
		}
	}
	if s.err == nil {
		// A reset meanwhile released the window's bytes; a CloseRead
		// drops the payload, as for any that arrives after it.
		s.forgo(n)
		if !s.in.shut() {
			d.n += n
		}
	}
	notify(d.ch)
	s.mu.Unlock()
	return true, nil
}

// popControl appends the control frames the stream owes: open,
// acknowledgement, window update, reset. It reports whether the stream
// still owes anything after its data (only the FIN, which popData sends).
// Only the writer calls it.
func (s *Stream) popControl(b *batch) {
	s.mu.Lock()
	s.appendControl(b)
	s.mu.Unlock()
}

// appendControl is popControl with s.mu held.
func (s *Stream) appendControl(b *batch) {
	if s.owed == 0 {
		return
	}
	c := s.sess.caps
	if s.owed&owedSYN != 0 {
		s.owed &^= owedSYN
		f := wire.Frame{Type: wire.TypeWindow, Flags: wire.FlagSYN, Stream: s.id}
		if c.WindowOnOpen {
			f.Value, f.Window, _ = s.rwin.Grant(true)
		} else if s.rwin.UpdateDue(true) {
			s.owed |= owedUpdate
		}
		b.frame(f)
	}
	if s.owed&owedACK != 0 {
		s.owed &^= owedACK
		f := wire.Frame{Type: wire.TypeWindow, Flags: wire.FlagACK, Stream: s.id}
		if c.WindowOnOpen {
			f.Value, f.Window, _ = s.rwin.Grant(true)
		}
		b.frame(f)
	}
	if s.owed&owedRST != 0 {
		s.owed = 0
		b.frame(abortFrame(c, s.id, s.rstCode))
		return
	}
	if s.owed&owedUpdate != 0 {
		s.owed &^= owedUpdate
		if s.err != nil || s.in.fin() {
			return
		}
		if s.rwin.Credit() == 0 {
			// The peer is blocked on this window: the next data to
			// arrive times a round trip.
			s.updAt = s.sess.now()
		}
		if value, window, ok := s.rwin.Grant(true); ok {
			b.frame(wire.Frame{Type: wire.TypeWindow, Stream: s.id, Value: value, Window: window})
		}
	}
}

// popData appends the stream's control frames, then one DATA frame of at
// most max bytes, from its send buffer or else from a direct Write, then
// its FIN once everything before it is in the batch. Bytes from the send
// buffer are taken only if copied is true: when it is false, a stream
// that has such bytes adds nothing and popData reports false, which ends
// the batch (see directBatchBytes). Only the writer calls it.
func (s *Stream) popData(b *batch, max int, copied bool) (took bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	avail := 0
	if s.err == nil {
		avail = s.send.len() - int(s.inflight)
	}
	if avail > 0 && !copied {
		return false
	}
	s.appendControl(b)
	if s.err == nil {
		if k := min(avail, max); k > 0 {
			b.data(s, wire.Frame{Type: wire.TypeData, Stream: s.id, Length: uint32(k)}, &s.send, int(s.inflight))
			s.inflight += int32(k)
			avail -= k
		} else if s.directReady() {
			dw := s.dw
			k := min(len(dw.p)-dw.taken, max, int(min(s.swin.Avail(), math.MaxInt32)))
			s.swin.Spend(uint32(k))
			b.direct(s, wire.Frame{Type: wire.TypeData, Stream: s.id, Length: uint32(k)}, dw.p[dw.taken:dw.taken+k])
			dw.taken += k
			dw.busy += k
		}
	}
	// An aborted stream sends its FIN only where the abort is a FIN (smux).
	if s.out == sendClosing && avail == 0 && !s.directBusy() && (s.err == nil || !s.sess.caps.Reset) {
		s.out = sendDone
		b.frame(wire.Frame{Type: wire.TypeWindow, Flags: wire.FlagFIN, Stream: s.id})
		b.settle(s)
	}
	s.sess.w.sched.served(s, avail > 0 || s.directReady())
	return true
}

// owesData reports whether the stream has data or a FIN for the writer.
// s.mu must be held.
func (s *Stream) owesData() bool {
	if s.err == nil && (s.send.len() > int(s.inflight) || s.directReady()) {
		return true
	}
	return s.out == sendClosing && !s.directBusy() && (s.err == nil || !s.sess.caps.Reset)
}

// sent releases n bytes that a batch carried, once the connection write
// returned (ok if it succeeded): from the send buffer, or of a direct
// Write, which learns how many of its bytes the connection took.
func (s *Stream) sent(n int, direct, ok bool) {
	s.mu.Lock()
	switch {
	case direct:
		s.dw.busy -= n
		if ok {
			s.dw.done += n
		}
	case s.wwait.n > 0:
		s.send.discardKeep(n) // the waiting Write fills it again
		s.inflight -= int32(n)
	default:
		s.send.discard(n)
		s.inflight -= int32(n)
	}
	if s.inflight == 0 && s.err != nil {
		s.send.discard(s.send.len())
	}
	s.wwait.wake()
	s.mu.Unlock()
}

// abortFrame is the frame that tells the peer a stream is aborted: RST
// with code where the protocol has it, FIN where it has not (smux). It is
// the one place that chooses between them.
func abortFrame(c *wire.Caps, id, code uint32) wire.Frame {
	if c.Reset {
		return wire.Frame{Type: wire.TypeWindow, Flags: wire.FlagRST, Stream: id, Value: code}
	}
	return wire.Frame{Type: wire.TypeWindow, Flags: wire.FlagFIN, Stream: id}
}
