package polymux

import (
	"io"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/polymux/polymux/internal/flow"
	"github.com/polymux/polymux/internal/wire"
)

// streamSendBuffer bounds the bytes a stream holds that Write accepted and
// the connection has not yet taken. Write also never accepts more than the
// peer's window, so a stream whose peer stops reading costs at most this.
const streamSendBuffer = 256 << 10

// Stream is one bidirectional byte stream of a Session. It implements
// net.Conn. Read and Write may be called concurrently with each other and
// with every other method; concurrent Reads (or Writes) are safe but their
// interleaving is unspecified, as with any net.Conn.
type Stream struct {
	sess  *Session
	id    uint32
	local bool // opened by this side

	readCh  chan struct{} // signalled when data, EOF or an error arrives
	writeCh chan struct{} // signalled when credit or send-buffer room frees up
	rdl     deadline
	wdl     deadline

	mu         sync.Mutex // guards every field below
	recv       byteQueue  // received, unread
	rwin       flow.Recv
	filling    bool // the read loop is writing into recv's tail without mu
	finRecv    bool // the peer sends no more data
	readShut   bool // CloseRead or Close: arriving data is dropped
	send       byteQueue
	inflight   int // leading bytes of send handed to the writer, not yet written
	swin       flow.Send
	finQueued  bool // CloseWrite or Close: FIN follows the queued data
	finSent    bool // FIN handed to the writer
	closed     bool // Close was called
	needSYN    bool
	needACK    bool
	needUpdate bool
	needRST    bool
	rstCode    uint32 // the code the RST carries
	updAt      int64  // sess.now() of a window update sent while the peer had no credit
	acked      bool   // the peer acknowledged this side's open, or none is needed
	err        error  // terminal: reset, refused, or the session ended
	removed    bool   // forgotten by the session
	backlogged bool   // waiting in the session's accept backlog
	// A peer-opened stream counts toward MaxIncomingStreams (slot) until
	// both ends have closed it; then, until its FIN is written and it is
	// forgotten, among the session's lingering streams (see freeSlot).
	slot, lingering bool
	openTimer       *time.Timer
	closeTimer      *time.Timer
	mm              MemoryManager // nil without Config.MemoryManager, or once released
	mmHeld          int           // bytes reserved from mm

	// Guarded by sess.mu: links of the accept backlog.
	acceptPrev, acceptNext *Stream
	// Guarded by sess.w.mu: membership of the writer's queues.
	inCtrl, inData bool
	// gone: forgotten by the session with nothing left to send, so the
	// writer's queues may drop it.
	gone atomic.Bool
}

func newStream(sess *Session, id uint32, local bool) *Stream {
	c := sess.caps
	rwin := flow.NewRecv(sess.cfg.InitialStreamWindow, c.InitialWindow)
	if c.Window == wire.WindowNone {
		// No window on the wire: only the session budget bounds the data.
		rwin = flow.NewRecv(math.MaxUint32, math.MaxUint32)
	}
	rwin.StartEpoch(time.Duration(sess.now()))
	st := &Stream{
		sess:    sess,
		id:      id,
		local:   local,
		readCh:  make(chan struct{}, 1),
		writeCh: make(chan struct{}, 1),
		rdl:     makeDeadline(),
		wdl:     makeDeadline(),
		rwin:    rwin,
		swin:    flow.NewSend(c.InitialWindow),
		acked:   !local || !c.AckOpens,
	}
	return st
}

// ID returns the stream's id on the wire.
func (s *Stream) ID() uint32 { return s.id }

// Session returns the session the stream belongs to.
func (s *Stream) Session() *Session { return s.sess }

// LocalAddr returns the local address of the session's connection.
func (s *Stream) LocalAddr() net.Addr { return s.sess.LocalAddr() }

// RemoteAddr returns the remote address of the session's connection.
func (s *Stream) RemoteAddr() net.Addr { return s.sess.RemoteAddr() }

// Read reads data the peer sent. It returns io.EOF once the peer has
// closed its side and every byte was read, ErrStreamReset after a reset,
// and an error matching ErrTimeout when the read deadline passes. Bytes
// that arrived before the session ended can still be read after it ended.
func (s *Stream) Read(p []byte) (int, error) {
	ended := false // the session ended: return what is buffered, then its error
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return 0, ErrStreamClosed
		}
		if s.rdl.expired() {
			// As with net.Conn: a passed deadline fails even with data
			// waiting, which stays readable once the deadline moves.
			s.mu.Unlock()
			return 0, ErrTimeout
		}
		if s.recv.len() > 0 {
			if len(p) == 0 {
				s.mu.Unlock()
				return 0, nil
			}
			n := s.recv.read(p)
			s.consumed(n)
			more := s.recv.len() > 0
			s.mu.Unlock()
			if more {
				notify(s.readCh) // let a concurrent reader take the rest
			}
			return n, nil
		}
		var err error
		switch {
		case s.finRecv || s.readShut:
			err = io.EOF
		case s.err != nil:
			err = s.err
		case ended:
			err = s.sess.closedErr()
		}
		s.mu.Unlock()
		if err != nil {
			return 0, err
		}
		if len(p) == 0 {
			return 0, nil
		}
		// Once the session ends, nothing more arrives, unless its read
		// loop still delivers what was on its way (an end the application
		// did not ask for, such as a failed write): then wait for that.
		ending := s.sess.closing
		if s.sess.IsClosed() && !s.sess.discard {
			ending = s.sess.readDone
		}
		select {
		case <-s.readCh:
		case <-s.rdl.wait():
			return 0, ErrTimeout
		case <-ending:
			ended = ending == s.sess.readDone || s.sess.discard
		}
	}
}

// consumed accounts n bytes taken out of recv (read or dropped). s.mu
// must be held.
func (s *Stream) consumed(n int) {
	if n == 0 {
		return
	}
	s.sess.nBuffered.Add(-int64(n))
	s.forgo(n)
}

// forgo accounts n bytes counted as received that are now gone (read,
// dropped, or never stored): the session budget gets back what they held,
// and the peer its window once enough has gone. s.mu must be held.
func (s *Stream) forgo(n int) {
	refund := s.rwin.Refund(uint32(n))
	s.rwin.Read(uint32(n))
	s.sess.release(int(refund))
	if s.sess.caps.Window == wire.WindowNone {
		s.rwin.Update(true) // nothing to tell the peer
		return
	}
	if !s.finRecv && s.err == nil {
		s.maybeUpdate(false)
	}
}

// maybeUpdate queues a window update if one is due (or, with force, if any
// credit is owed), growing the window first if it limits throughput. s.mu
// must be held.
func (s *Stream) maybeUpdate(force bool) {
	if s.needUpdate || !s.rwin.UpdateDue(force) {
		return
	}
	if !s.readShut {
		s.tune()
	}
	s.needUpdate = true
	s.sess.w.queueCtrl(s)
}

// tune runs one epoch of receive-window auto-tuning. With no round trip
// known yet, it asks for one where the protocol has pings. s.mu must be
// held.
func (s *Stream) tune() {
	sess := s.sess
	max := sess.cfg.MaxStreamWindow
	if s.rwin.Window() >= max {
		return
	}
	rtt := sess.tuningRTT()
	if rtt == 0 && sess.caps.PingReply {
		sess.startPing()
	}
	var reserve func(uint32) bool
	if s.mm != nil {
		reserve = s.reserveGrowth
	}
	s.rwin.TuneWith(time.Duration(sess.now()), rtt, max, sess.budget, reserve)
}

// reserveGrowth asks the memory manager for grow bytes of window growth.
// s.mu must be held.
func (s *Stream) reserveGrowth(grow uint32) bool {
	if s.mm.ReserveMemory(int(grow), growthPriority) != nil {
		return false
	}
	s.mmHeld += int(grow)
	return true
}

// releaseMemory gives back everything the stream reserved from its memory
// manager and ends its accounting, once. s.mu must be held.
func (s *Stream) releaseMemory() {
	if s.mm == nil {
		return
	}
	s.mm.ReleaseMemory(s.mmHeld)
	s.mm.Done()
	s.mm, s.mmHeld = nil, 0
}

// ReceiveWindow returns the stream's current receive window: how many
// bytes it may hold unread before the peer must wait. It grows with
// auto-tuning up to Config.MaxStreamWindow; 0 where the protocol has no
// windows (smux v1).
func (s *Stream) ReceiveWindow() uint32 {
	if s.sess.caps.Window == wire.WindowNone {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rwin.Window()
}

// Write writes p to the stream. It returns once every byte is accepted:
// copied into the stream's send buffer within the peer's window, from
// where it is delivered unless the stream is reset or the session dies.
// It blocks while the window or the buffer is full. On a deadline it
// returns the n < len(p) bytes accepted so far with an error matching
// ErrTimeout; nothing past n is ever sent, so writing p[n:] later neither
// duplicates nor reorders data.
func (s *Stream) Write(p []byte) (int, error) {
	n := 0
	for {
		s.mu.Lock()
		if err := s.writeErr(); err != nil {
			s.mu.Unlock()
			return n, err
		}
		if n == len(p) {
			s.mu.Unlock()
			return n, nil
		}
		room := streamSendBuffer - s.send.len()
		if s.sess.caps.Window != wire.WindowNone {
			room = min(room, int(s.swin.Avail()))
		}
		if room > 0 {
			k := min(room, len(p)-n)
			s.send.write(p[n : n+k])
			if s.sess.caps.Window != wire.WindowNone {
				s.swin.Spend(uint32(k))
			}
			n += k
			s.sess.w.queueData(s)
			s.mu.Unlock()
			continue
		}
		s.mu.Unlock()
		select {
		case <-s.writeCh:
		case <-s.wdl.wait():
			return n, ErrTimeout
		case <-s.sess.closing:
		}
	}
}

// writeErr is the error a Write must return now, if any. s.mu must be held.
func (s *Stream) writeErr() error {
	switch {
	case s.closed:
		return ErrStreamClosed
	case s.err != nil:
		return s.err
	case s.finQueued:
		return ErrWriteClosed
	case s.sess.IsClosed():
		return s.sess.closedErr()
	case s.wdl.expired():
		return ErrTimeout
	}
	return nil
}

// CloseWrite half-closes the stream: everything written is delivered (see
// Close), then the peer reads io.EOF. Reading goes on. It never blocks.
func (s *Stream) CloseWrite() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return ErrStreamClosed
	case s.err != nil:
		return s.err
	case s.finQueued:
		return nil
	}
	s.finQueued = true
	s.freeSlot()
	s.sess.w.queueData(s)
	notify(s.writeCh)
	return nil
}

// CloseRead stops reading: buffered data is dropped and its memory freed,
// data arriving later is dropped too (the peer's window is still returned,
// so its writes complete), and Read returns io.EOF. Writing goes on.
func (s *Stream) CloseRead() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrStreamClosed
	}
	s.shutRead()
	return nil
}

// shutRead drops buffered data and marks the read side shut. It reports how
// many unread bytes were dropped. s.mu must be held.
func (s *Stream) shutRead() int {
	if s.readShut {
		return 0
	}
	s.readShut = true
	n := s.recv.len()
	s.recv.discard(n)
	s.consumed(n)
	s.sess.release(int(s.rwin.Finish()))
	notify(s.readCh)
	return n
}

// Close closes both directions and never blocks on the peer: every byte
// a Write reported is still delivered, followed by FIN, while the session
// lives, and by Session.Close within Config.CloseLinger. Data that was
// received and not read, or that arrives later, makes the stream reset
// instead (as TCP does), so a peer still writing learns that nobody reads;
// what was not yet sent is then dropped. If the peer never closes its
// side, the stream is reset after Config.StreamCloseTimeout. Blocked Read
// and Write calls return ErrStreamClosed.
func (s *Stream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	if s.err == nil {
		if !s.finQueued {
			s.finQueued = true
			s.freeSlot()
			s.sess.w.queueData(s)
		}
		if dropped := s.shutRead(); dropped > 0 && s.sess.caps.Reset {
			s.resetLocked(wire.CodeStreamClosed, ErrStreamClosed)
		} else if !s.finRecv && s.sess.cfg.StreamCloseTimeout > 0 {
			s.closeTimer = time.AfterFunc(s.sess.cfg.StreamCloseTimeout, s.closeTimedOut)
		}
	}
	notify(s.readCh)
	notify(s.writeCh)
	forget := s.doneLocked()
	s.mu.Unlock()
	// Every call on a closed stream returns at once: no deadline is needed.
	s.rdl.stop()
	s.wdl.stop()
	if forget {
		s.sess.forget(s)
	}
	return nil
}

// Reset aborts both directions at once: the bytes Writes reported that
// have not yet been sent are dropped, as is what was received and not
// read (the peer drops its own), and the peer's Read and Write fail with
// ErrStreamReset. On protocols without a reset frame (smux), it sends FIN
// and drops further data instead.
func (s *Stream) Reset() error { return s.ResetWithError(0) }

// ResetWithError is Reset with an error code for the peer: its Read and
// Write fail with a *StreamError carrying code (Remote), this side's with
// one carrying it too. The code goes where go-yamux puts it (the length
// field of the RST) on yamux, and in the RST on muxado. smux has no codes:
// there it resets (sends FIN) without one and returns nil.
func (s *Stream) ResetWithError(code uint32) error {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return nil
	}
	s.resetWith(code, &StreamError{Code: code})
	s.mu.Unlock()
	s.sess.forget(s)
	return nil
}

// resetLocked ends the stream with err, telling the peer with RST (or FIN
// where the protocol has no RST). The caller must forget the stream after
// releasing s.mu. s.mu must be held.
func (s *Stream) resetLocked(reason wire.Code, err error) {
	s.resetWith(s.sess.resetCode(reason), err)
}

// resetWith is resetLocked with the code the RST carries. s.mu must be held.
func (s *Stream) resetWith(code uint32, err error) {
	s.fail(err)
	if s.sess.caps.Reset {
		s.needRST = true
		s.rstCode = code
		s.sess.w.queueCtrl(s)
	} else if !s.finSent {
		s.finQueued = true
		s.sess.w.queueData(s)
	}
}

// freeSlot gives back the stream's place among MaxIncomingStreams once both
// ends have closed it, even while its FIN waits to be written, which
// depends only on the writer: it then counts among the session's
// lingering streams, which are bounded apart (see Session.incoming).
// s.mu must be held.
func (s *Stream) freeSlot() {
	if !s.slot || !s.finQueued || !s.finRecv || s.err != nil {
		return
	}
	s.slot, s.lingering = false, true
	sess := s.sess
	sess.mu.Lock()
	sess.numIncoming--
	sess.lingering++
	sess.mu.Unlock()
}

// fail makes err the stream's terminal error and drops what it buffered.
// s.mu must be held.
func (s *Stream) fail(err error) {
	if s.err != nil {
		return
	}
	s.err = err
	n := s.recv.len()
	s.recv.discard(n)
	s.sess.nBuffered.Add(-int64(n))
	s.sess.release(int(s.rwin.Held()))
	if s.inflight == 0 {
		s.send.discard(s.send.len())
	}
	s.stopTimers()
	notify(s.readCh)
	notify(s.writeCh)
}

// sessionEnded gives the stream the session's error, keeping what it
// received readable; what it still held for sending can never go, and is
// freed. The writer has exited. s.mu must be held.
func (s *Stream) sessionEnded(err error) {
	if s.err == nil {
		s.err = err
	}
	s.releaseMemory()
	s.send.discard(s.send.len())
	s.inflight = 0
	s.stopTimers()
	notify(s.readCh)
	notify(s.writeCh)
}

func (s *Stream) stopTimers() {
	if s.openTimer != nil {
		s.openTimer.Stop()
	}
	if s.closeTimer != nil {
		s.closeTimer.Stop()
	}
}

// doneLocked reports whether the stream just finished and must be
// forgotten by the session: reset, or closed in both directions. s.mu must
// be held.
func (s *Stream) doneLocked() bool {
	if s.removed {
		return false
	}
	if s.err != nil || (s.finSent && s.finRecv) {
		s.removed = true
		return true
	}
	return false
}

// openTimedOut resets a stream whose open the peer never acknowledged.
func (s *Stream) openTimedOut() {
	s.mu.Lock()
	if s.acked || s.err != nil {
		s.mu.Unlock()
		return
	}
	s.resetLocked(wire.CodeNone, ErrOpenTimeout)
	s.mu.Unlock()
	s.sess.log.Debug("polymux: stream open timed out", "stream", s.id)
	s.sess.forget(s)
}

// closeTimedOut resets a closed stream whose peer never closed its side.
func (s *Stream) closeTimedOut() {
	s.mu.Lock()
	if s.err != nil || s.finRecv {
		s.mu.Unlock()
		return
	}
	s.resetLocked(wire.CodeNone, ErrStreamClosed)
	s.mu.Unlock()
	s.sess.log.Debug("polymux: stream close timed out", "stream", s.id)
	s.sess.forget(s)
}

// SetDeadline sets both the read and the write deadline.
func (s *Stream) SetDeadline(t time.Time) error {
	s.rdl.set(t)
	s.wdl.set(t)
	return nil
}

// SetReadDeadline sets the deadline for pending and future Reads; the zero
// time clears it.
func (s *Stream) SetReadDeadline(t time.Time) error {
	s.rdl.set(t)
	return nil
}

// SetWriteDeadline sets the deadline for pending and future Writes; the
// zero time clears it.
func (s *Stream) SetWriteDeadline(t time.Time) error {
	s.wdl.set(t)
	return nil
}

var _ net.Conn = (*Stream)(nil)
