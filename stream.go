package polymux

import (
	"io"
	"net"
	"sync"
	"time"

	"github.com/polymux/polymux/internal/flow"
	"github.com/polymux/polymux/internal/wire"
)

// streamSendBuffer bounds the bytes a stream holds that Write accepted and
// the connection has not yet taken. Write also never accepts more than the
// peer's window, so a stream whose peer stops reading costs at most this.
const streamSendBuffer = 256 << 10

// recvState is how far a stream's reading half has got.
type recvState uint8

const (
	recvOpen recvState = iota // data arrives and is read
	recvEOF                   // the peer sent FIN: what is buffered is read, then io.EOF
	recvShut                  // CloseRead before the peer's FIN: what arrives is dropped
	recvDone                  // both: nothing more arrives, nothing is read
)

// fin reports whether the peer has sent its FIN.
func (r recvState) fin() bool { return r == recvEOF || r == recvDone }

// shut reports whether this side reads no more.
func (r recvState) shut() bool { return r == recvShut || r == recvDone }

// sendState is how far a stream's writing half has got.
type sendState uint8

const (
	sendOpen    sendState = iota // Write goes on
	sendClosing                  // CloseWrite or Close: the FIN follows the queued data
	sendDone                     // the FIN is handed to the writer
)

// owedFrames are the control frames a stream owes the peer; the writer
// asks for them (popControl) ahead of any data.
type owedFrames uint8

const (
	owedSYN    owedFrames = 1 << iota // this side's open (it goes in order with data)
	owedACK                           // the acknowledgement of the peer's accepted open (yamux)
	owedUpdate                        // receive window to grant
	owedRST                           // the reset, once aborted (see abort)
)

// slotState is a peer-opened stream's place among MaxIncomingStreams.
type slotState uint8

const (
	slotNone      slotState = iota // this side opened it, or it was forgotten
	slotOpen                       // open: counts toward MaxIncomingStreams
	slotLingering                  // closed both ways, its FIN not yet written (see freeSlot)
)

// Stream is one bidirectional byte stream of a Session. It implements
// net.Conn. Read and Write may be called concurrently with each other and
// with every other method; concurrent Reads (or Writes) are safe but their
// interleaving is unspecified, as with any net.Conn.
//
// A stream owns its lifecycle: the session's read loop hands it the
// frames addressed to it (onFrame), the writer asks it for the frames it
// owes (popControl, popData), and abort is the one way it ends early.
type Stream struct {
	// Fixed when the stream is made.
	sess  *Session
	id    uint32
	local bool // opened by this side

	// mu guards every field that follows but the accept backlog's
	// (backlogged, acceptPrev, acceptNext), which Session.mu guards. The
	// fields are laid out to keep the struct within 256 bytes.
	in        recvState
	out       sendState
	owed      owedFrames
	slot      slotState
	closed    bool   // Close was called: Read and Write fail with ErrStreamClosed
	acked     bool   // the peer acknowledged this side's open, or none is needed
	forgotten bool   // out of the session's table; what it owes may still be written
	rstCode   uint32 // the code the RST carries
	mu        sync.Mutex
	err       error // terminal: reset, refused, or the session ended
	updAt     int64 // sess.now() of a window update sent while the peer had no credit
	closedAt  int64 // sess.now() at Close, which the close timeout checks
	recv      byteQueue
	rwin      flow.Recv
	send      byteQueue
	inflight  int32 // leading bytes of send handed to the writer, not yet written
	// backlogged: waiting in the session's accept backlog (Session.mu).
	backlogged bool
	swin       flow.Send
	rwait      waiter       // Reads waiting for data
	wwait      waiter       // Writes waiting for credit or room
	dl         *deadlines   // nil until a deadline is first set
	dw         *directWrite // nil until a Write first writes from its own slice
	dr         *readOffer   // a waiting Read's buffer, offered to the read loop; nil when none
	mem        *streamMemory

	// The accept backlog's links (Session.mu).
	acceptPrev, acceptNext *Stream
}

// directMin is the size from which a Write's bytes go to the connection
// straight from the caller's slice (see Write) instead of being copied
// into the stream's send buffer. It is a batch's worth: below it, copying
// lets the writer gather several Writes into one connection write, on
// another core while the application goes on, which muxbench measured
// faster at 32 and 64 KiB (bulk1 0.58-0.64x raw TCP direct against
// 0.79-0.92x copied); from a batch on, a direct write makes as few
// connection writes and saves the copy (1 MiB writes: 0.71-0.74x against
// 0.63-0.72x).
const directMin = batchBytes

// directWrite is the part of a Write's slice that the writer sends from
// where it lies. s.mu guards it.
type directWrite struct {
	p     []byte // the bytes to send; nil when no Write is sending directly
	taken int    // leading bytes of p put in batches
	busy  int    // bytes of p in a batch whose connection write has not returned
	done  int    // bytes of p whose connection write succeeded
}

// streamMemory is what a stream reserved from Config.MemoryManager.
type streamMemory struct {
	mm   MemoryManager
	held int
}

// newStream makes a stream opened by this side (local) or by the peer,
// whose memory mem accounts (nil without a memory manager).
func newStream(sess *Session, id uint32, local bool, mem *streamMemory) *Stream {
	st := &Stream{
		sess:  sess,
		id:    id,
		local: local,
		rwin:  flow.NewRecvFor(sess.window, sess.cfg.InitialStreamWindow, sess.caps.InitialWindow),
		swin:  flow.NewSendFor(sess.window, sess.caps.InitialWindow),
		acked: !local || !sess.caps.AckOpens,
		mem:   mem,
	}
	if !local {
		st.slot = slotOpen
	}
	st.rwin.StartEpoch(time.Duration(sess.now()))
	return st
}

// opened owes the peer this side's open. The SYN goes in order with data,
// not ahead of it as control frames do: the peer then sees opens and data
// in the order they were made, so an smux peer whose backlog is full finds
// the data of the streams it accepted before the next open, not behind it.
func (s *Stream) opened() {
	s.mu.Lock()
	s.owed |= owedSYN
	s.sess.w.sched.pushData(s)
	s.mu.Unlock()
}

// arrived grants at once, where the protocol has no acknowledgement to
// carry it (yamux's ACK does), a window larger than the one the peer
// assumes.
func (s *Stream) arrived() {
	if s.sess.caps.AckOpens {
		return
	}
	s.mu.Lock()
	s.maybeUpdate(true)
	s.mu.Unlock()
}

// accepted owes the peer the acknowledgement of its open, where the
// protocol has one (yamux): the application has taken the stream.
func (s *Stream) accepted() {
	if !s.sess.caps.AckOpens {
		return
	}
	s.mu.Lock()
	if s.err == nil {
		s.owe(owedACK)
	}
	s.mu.Unlock()
}

// writing reports whether the writing half is still open.
func (s *Stream) writing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err == nil && s.out == sendOpen
}

// left is what a stream leaving the session takes with it, for the
// session to account.
type left struct {
	unacked bool      // it awaited the peer's ACK
	slot    slotState // its place among the peer's streams
	owes    bool      // it still owes frames the writer will send
}

// leave marks the stream as out of the session's table, releasing its
// memory and deadline timers, and reports what the session must account;
// false if it had left already.
func (s *Stream) leave() (left, bool) {
	s.mu.Lock()
	if s.forgotten {
		s.mu.Unlock()
		return left{}, false
	}
	s.forgotten = true
	l := left{unacked: !s.acked, slot: s.slot, owes: s.owed != 0 || s.owesData()}
	s.acked, s.slot = true, slotNone
	s.releaseMemory()
	s.mu.Unlock()
	s.stopDeadlines()
	return l, true
}

// ID returns the stream's id on the wire.
func (s *Stream) ID() uint32 { return s.id }

// Session returns the session the stream belongs to.
func (s *Stream) Session() *Session { return s.sess }

// LocalAddr returns the local address of the session's connection.
func (s *Stream) LocalAddr() net.Addr { return s.sess.LocalAddr() }

// RemoteAddr returns the remote address of the session's connection.
func (s *Stream) RemoteAddr() net.Addr { return s.sess.RemoteAddr() }

// readDeadline and writeDeadline are nil until a deadline is first set.
// s.mu must be held.
func (s *Stream) readDeadline() *deadline {
	if s.dl == nil {
		return nil
	}
	return &s.dl.read
}

func (s *Stream) writeDeadline() *deadline {
	if s.dl == nil {
		return nil
	}
	return &s.dl.write
}

// Read reads data the peer sent. It returns io.EOF once the peer has
// closed its side and every byte was read, an error matching
// ErrStreamReset after a reset (a *StreamError with its code), and an
// error matching ErrTimeout when the read deadline passes. Bytes that
// arrived before the session ended can still be read after it ended.
//
// While a Read waits, its buffer is offered to the session's read loop,
// which places whole payloads that fit straight into it, instead of into
// the stream's buffer to be copied out, once they have all been received:
// a payload still on its way is never waited for there, so a stalled peer
// cannot make the Read miss its deadline.
func (s *Stream) Read(p []byte) (n int, err error) {
	s.mu.Lock()
	waiting := false
	var offer *readOffer // p, offered to the read loop while this Read waits
	defer func() {
		if offer != nil {
			s.withdraw(offer)
		}
		if waiting {
			s.rwait.done(&s.sess.waits)
		}
		s.mu.Unlock()
	}()
	ended := false // the session ended: return what is buffered, then its error
	for {
		if offer != nil {
			if offer.busy {
				// The read loop is reading a payload into p, from bytes
				// the connection has already received (see onData):
				// whatever else happens, wait until it is done.
				ch := offer.ch
				s.mu.Unlock()
				<-ch
				s.mu.Lock()
				continue
			}
			if offer.n > 0 {
				return offer.n, nil
			}
		}
		if s.closed {
			return 0, ErrStreamClosed
		}
		dl := s.readDeadline()
		if dl != nil && dl.expired() {
			// As with net.Conn: a passed deadline fails even with data
			// waiting, which stays readable once the deadline moves.
			return 0, ErrTimeout
		}
		if s.recv.len() > 0 {
			if len(p) == 0 {
				return 0, nil
			}
			n := s.recv.read(p)
			s.consumed(n)
			if s.recv.len() > 0 {
				s.rwait.wake() // let a concurrent reader take the rest
			}
			return n, nil
		}
		var end error
		switch {
		case s.in != recvOpen:
			end = io.EOF
		case s.err != nil:
			end = s.err
		case ended:
			end = s.sess.closedErr()
		case len(p) == 0:
			return 0, nil
		}
		if end != nil {
			// One wake-up told of the end: pass it on to a concurrent
			// Read, which would otherwise wait for good.
			s.rwait.wake()
			return 0, end
		}
		if !waiting {
			waiting = true
			s.rwait.start(&s.sess.waits)
		}
		if offer == nil && s.dr == nil {
			offer = s.offer(p)
		}
		ch, och := s.rwait.ch, offer.wakeCh()
		// Once the session ends nothing more arrives, unless its read
		// loop still delivers what was on its way (an end the
		// application did not ask for, such as a failed write): then
		// wait for that.
		ending := s.sess.closing
		if s.sess.IsClosed() && !s.sess.discard {
			ending = s.sess.readDone
		}
		s.mu.Unlock()
		select {
		case <-ch:
		case <-och:
		case <-waitCh(dl):
			s.mu.Lock()
			if offer == nil {
				return 0, ErrTimeout
			}
			// What the read loop put in p, or is putting there, comes
			// first; then the deadline check fails the Read.
			continue
		case <-ending:
			ended = ending == s.sess.readDone || s.sess.discard
		}
		s.mu.Lock()
	}
}

// readOffer is a waiting Read's buffer, offered to the read loop, which
// places whole payloads straight into it when they fit and have all been
// received (see takeDirect): then the Read copies nothing. s.mu guards it.
type readOffer struct {
	p      []byte
	n      int           // bytes of whole payloads placed in p
	busy   bool          // the read loop is reading into p without s.mu
	sealed bool          // a payload went to the queue since: p takes no more
	ch     chan struct{} // signalled when n grows or busy ends
}

// offer offers p to the read loop. The session keeps offers between
// Reads (waitChans), so waiting costs no allocation, and each offer's
// channel stays with its session. s.mu must be held.
func (s *Stream) offer(p []byte) *readOffer {
	d, ok := s.sess.waits.offers.pop()
	if !ok {
		d = &readOffer{ch: make(chan struct{}, 1)}
	}
	d.p = p
	s.dr = d
	return d
}

// withdraw ends an offer that is not busy. s.mu must be held.
func (s *Stream) withdraw(d *readOffer) {
	s.dr = nil
	select {
	case <-d.ch:
	default:
	}
	*d = readOffer{ch: d.ch}
	s.sess.waits.offers.push(d)
}

// wakeCh is the channel an offer's Read waits on; nil without an offer.
func (d *readOffer) wakeCh() chan struct{} {
	if d == nil {
		return nil
	}
	return d.ch
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
	if !s.in.fin() && s.err == nil {
		s.maybeUpdate(false)
	}
}

// maybeUpdate owes the peer a window update if one is due (or, with force,
// if any credit is owed), growing the window first if it limits
// throughput. s.mu must be held.
func (s *Stream) maybeUpdate(force bool) {
	if s.owed&owedUpdate != 0 || !s.rwin.UpdateDue(force) {
		return
	}
	if !s.in.shut() {
		s.tune()
	}
	s.owe(owedUpdate)
}

// owe records a control frame the stream owes the peer and tells the
// writer. s.mu must be held.
func (s *Stream) owe(f owedFrames) {
	s.owed |= f
	s.sess.w.sched.pushControl(s)
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
	if s.mem != nil {
		reserve = s.reserveGrowth
	}
	s.rwin.TuneWith(time.Duration(sess.now()), rtt, max, sess.budget, reserve)
}

// reserveGrowth asks the memory manager for grow bytes of window growth.
// s.mu must be held.
func (s *Stream) reserveGrowth(grow uint32) bool {
	if s.mem.mm.ReserveMemory(int(grow), growthPriority) != nil {
		return false
	}
	s.mem.held += int(grow)
	return true
}

// releaseMemory gives back everything the stream reserved from its memory
// manager and ends its accounting, once. s.mu must be held.
func (s *Stream) releaseMemory() {
	if s.mem == nil {
		return
	}
	s.mem.mm.ReleaseMemory(s.mem.held)
	s.mem.mm.Done()
	s.mem = nil
}

// ReceiveWindow returns the stream's current receive window: how many
// bytes it may hold unread before the peer must wait. It grows with
// auto-tuning up to Config.MaxStreamWindow; 0 where the protocol has no
// windows (smux v1).
func (s *Stream) ReceiveWindow() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rwin.Advertised()
}

// Write writes p to the stream. It blocks while the peer's window or the
// send buffer is full, and returns once every byte is accepted.
//
// Writes smaller than 256 KiB are copied into the stream's send buffer,
// within the peer's window, and Write returns at once: they are delivered
// unless the stream is reset or the session dies (Session.Close delivers
// them first, within Config.CloseLinger). Larger writes go to the
// connection straight from p, with no copy: Write returns once the
// connection has taken them, often writing them itself. On smux v1, which
// has no per-stream windows, every write is copied: there a connection
// write can wait as long as the peer stops reading its connection, and
// only a copy lets the Write return at its deadline.
//
// On a deadline, Close, Reset or the end of the session, Write returns
// the n < len(p) bytes accepted so far with an error (ErrTimeout for a
// deadline). Nothing past n is ever sent, so writing p[n:] later neither
// duplicates nor reorders data. If bytes of p are inside a connection
// write at that moment, Write first waits for that one write to return,
// which Config.WriteTimeout bounds: a deadline can be overrun by at most
// one connection write.
func (s *Stream) Write(p []byte) (n int, err error) {
	s.mu.Lock()
	waiting := false
	defer func() {
		if waiting {
			s.wwait.done(&s.sess.waits)
		}
		s.mu.Unlock()
	}()
	for {
		if err := s.writeErr(); err != nil {
			return n, err
		}
		if n == len(p) {
			return n, nil
		}
		if !s.directBusy() {
			if len(p)-n >= directMin && s.sess.window != flow.ModeNone {
				k, err := s.writeDirect(p[n:])
				n += k
				if err != nil {
					return n, err
				}
				continue
			}
			if room := min(streamSendBuffer-s.send.len(), int(s.swin.Avail())); room > 0 {
				k := min(room, len(p)-n)
				s.send.write(p[n : n+k])
				s.swin.Spend(uint32(k))
				n += k
				s.sess.w.sched.pushData(s)
				continue
			}
		}
		if !waiting {
			waiting = true
			s.wwait.start(&s.sess.waits)
		}
		ch, dl := s.wwait.ch, s.writeDeadline()
		s.mu.Unlock()
		select {
		case <-ch:
		case <-waitCh(dl):
		case <-s.sess.closing:
		}
		s.mu.Lock()
	}
}

// writeDirect sends p from where it lies and returns how much of it the
// connection took: all of it, or, with an error, the whole frames written
// before the Write had to end (see Write). The writer takes p a frame at
// a time, spending credit as it does, and this Write writes the batches
// itself when no writer runs. s.mu is held, and no other Write is
// sending directly.
func (s *Stream) writeDirect(p []byte) (int, error) {
	if s.dw == nil {
		s.dw = new(directWrite)
	}
	dw := s.dw
	*dw = directWrite{p: p}
	s.wwait.start(&s.sess.waits)
	defer s.wwait.done(&s.sess.waits)
	q := &s.sess.w.sched
	for {
		if dw.busy == 0 {
			done := dw.done
			err := s.writeErr()
			if done == len(p) || err != nil {
				// What was not taken is withdrawn: the writer no longer
				// sees it, and anything queued behind it (a FIN) goes on.
				*dw = directWrite{}
				s.wwait.wake() // another Write may be waiting to go on
				if err != nil && s.owesData() {
					q.pushData(s)
				}
				return done, err
			}
		}
		if s.directReady() && q.pushDirect(s) {
			s.mu.Unlock()
			s.sess.w.serve(s)
			s.mu.Lock()
			continue
		}
		ch := s.wwait.ch
		var dl *deadline
		var closing chan struct{}
		if dw.busy == 0 {
			// Bytes inside a connection write hold the Write until the
			// write returns; otherwise it may end at once.
			dl, closing = s.writeDeadline(), s.sess.closing
		}
		s.mu.Unlock()
		select {
		case <-ch:
		case <-waitCh(dl):
		case <-closing:
		}
		s.mu.Lock()
	}
}

// directBusy reports whether a Write is sending from its own slice, which
// other Writes must wait for. s.mu must be held.
func (s *Stream) directBusy() bool { return s.dw != nil && s.dw.p != nil }

// directPending is directReady for the writer, which does not hold s.mu.
func (s *Stream) directPending() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.directReady()
}

// directReady reports whether the writer can take bytes of a direct
// Write now: some are left, and credit for them. s.mu must be held.
func (s *Stream) directReady() bool {
	return s.dw != nil && s.dw.taken < len(s.dw.p) && s.swin.Avail() > 0 && s.err == nil
}

// writeErr is the error a Write must return now, if any. s.mu must be held.
func (s *Stream) writeErr() error {
	switch {
	case s.closed:
		return ErrStreamClosed
	case s.err != nil:
		return s.err
	case s.out != sendOpen:
		return ErrWriteClosed
	case s.sess.IsClosed():
		return s.sess.closedErr()
	}
	if dl := s.writeDeadline(); dl != nil && dl.expired() {
		return ErrTimeout
	}
	return nil
}

// CloseWrite half-closes the stream: everything written is delivered (see
// Write), then the peer reads io.EOF. Reading goes on. It never blocks.
func (s *Stream) CloseWrite() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return ErrStreamClosed
	case s.err != nil:
		return s.err
	}
	s.closeWrite()
	return nil
}

// closeWrite queues the FIN after the data. s.mu must be held.
func (s *Stream) closeWrite() {
	if s.out != sendOpen {
		return
	}
	s.out = sendClosing
	s.freeSlot()
	s.sess.w.sched.pushData(s)
	s.wwait.wake()
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

// shutRead drops buffered data and shuts the reading half. It reports how
// many unread bytes were dropped. s.mu must be held.
func (s *Stream) shutRead() int {
	switch s.in {
	case recvOpen:
		s.in = recvShut
	case recvEOF:
		s.in = recvDone
	default:
		return 0
	}
	n := s.recv.len()
	s.recv.discard(n)
	s.consumed(n)
	s.sess.release(int(s.rwin.Finish()))
	s.rwait.wake()
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
	s.closedAt = s.sess.now()
	unread := false
	if s.err == nil {
		s.closeWrite()
		unread = s.shutRead() > 0 && s.sess.caps.Reset
		if !unread && !s.in.fin() {
			s.sess.closeTimeouts.add(s.id, s.closedAt)
		}
	}
	s.rwait.wake()
	s.wwait.wake()
	s.mu.Unlock()
	if unread {
		s.abort(ErrStreamClosed, true, s.sess.resetCode(wire.CodeStreamClosed))
		return nil
	}
	s.settle()
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
	s.abort(&StreamError{Code: code}, true, code)
	return nil
}

// abort is the one way a stream ends before both sides have closed it.
// err becomes the error of every call from now on, what the stream held is
// dropped, and, if tell, the peer learns of it: RST with code where the
// protocol has it, FIN otherwise (decided by abortFrame), once the
// peer knows of the stream at all. Then the session forgets the stream.
// It reports false if the stream had already ended.
func (s *Stream) abort(err error, tell bool, code uint32) bool {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return false
	}
	s.fail(err)
	if tell && s.owed&owedSYN == 0 {
		if s.sess.caps.Reset {
			s.rstCode = code
			s.owe(owedRST)
		} else if s.out != sendDone {
			s.out = sendClosing
			s.sess.w.sched.pushData(s)
		}
	}
	s.owed &^= owedSYN | owedACK | owedUpdate
	s.mu.Unlock()
	s.sess.forget(s)
	return true
}

// fail makes err the stream's terminal error and drops what it holds.
// s.mu must be held.
func (s *Stream) fail(err error) {
	s.err = err
	n := s.recv.len()
	s.recv.discard(n)
	s.sess.nBuffered.Add(-int64(n))
	s.sess.release(int(s.rwin.Held()))
	if s.inflight == 0 {
		s.send.discard(s.send.len())
	}
	s.rwait.wake()
	s.wwait.wake()
}

// settle forgets the stream once both sides have closed it and its FIN is
// with the writer.
func (s *Stream) settle() {
	s.mu.Lock()
	done := s.err == nil && s.out == sendDone && s.in.fin()
	s.mu.Unlock()
	if done {
		s.sess.forget(s)
	}
}

// sessionEnded gives the stream the session's error, keeping what it
// received readable; what it still held for sending can never go, and is
// freed, as are its memory and deadline timers. The writer has exited.
func (s *Stream) sessionEnded(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.send.discard(s.send.len())
	s.inflight = 0
	s.releaseMemory()
	s.rwait.wake()
	s.wwait.wake()
	s.mu.Unlock()
	s.stopDeadlines()
}

// freeSlot gives back the stream's place among MaxIncomingStreams once both
// ends have closed it, even while its FIN waits to be written, which
// depends only on the writer: it then counts among the session's
// lingering streams, which are bounded apart (see Session.incoming).
// s.mu must be held.
func (s *Stream) freeSlot() {
	if s.slot != slotOpen || s.out == sendOpen || !s.in.fin() || s.err != nil {
		return
	}
	s.slot = slotLingering
	sess := s.sess
	sess.mu.Lock()
	sess.numIncoming--
	sess.lingering++
	sess.mu.Unlock()
}

// openTimedOut resets a stream whose open the peer never acknowledged.
func (s *Stream) openTimedOut() {
	s.mu.Lock()
	pending := !s.acked
	s.mu.Unlock()
	if pending && s.abort(ErrOpenTimeout, true, s.sess.resetCode(wire.CodeNone)) {
		s.sess.log.Debug("polymux: stream open timed out", "stream", s.id)
	}
}

// closeTimedOut resets a stream closed at closedAt whose peer never closed
// its side.
func (s *Stream) closeTimedOut(closedAt int64) {
	s.mu.Lock()
	pending := s.closedAt == closedAt && !s.in.fin()
	s.mu.Unlock()
	if pending && s.abort(ErrStreamClosed, true, s.sess.resetCode(wire.CodeNone)) {
		s.sess.log.Debug("polymux: stream close timed out", "stream", s.id)
	}
}

// stopDeadlines releases the deadline timers, if any: a forgotten stream's
// calls return at once. A deadline that passed stays passed.
func (s *Stream) stopDeadlines() {
	s.mu.Lock()
	dl := s.dl
	s.mu.Unlock()
	if dl != nil {
		dl.read.stop()
		dl.write.stop()
	}
}

// deadlinesFor returns the stream's deadlines, making them on first use.
func (s *Stream) deadlinesFor() *deadlines {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dl == nil {
		s.dl = newDeadlines()
	}
	return s.dl
}

// SetDeadline sets both the read and the write deadline.
func (s *Stream) SetDeadline(t time.Time) error {
	dl := s.deadlinesFor()
	dl.read.set(t)
	dl.write.set(t)
	s.wakeAll()
	return nil
}

// SetReadDeadline sets the deadline for pending and future Reads; the zero
// time clears it.
func (s *Stream) SetReadDeadline(t time.Time) error {
	s.deadlinesFor().read.set(t)
	s.wakeAll()
	return nil
}

// SetWriteDeadline sets the deadline for pending and future Writes; the
// zero time clears it.
func (s *Stream) SetWriteDeadline(t time.Time) error {
	s.deadlinesFor().write.set(t)
	s.wakeAll()
	return nil
}

// wakeAll makes waiting calls look at their deadlines again: one that was
// set while they waited.
func (s *Stream) wakeAll() {
	s.mu.Lock()
	s.rwait.wake()
	s.wwait.wake()
	s.mu.Unlock()
}

var _ net.Conn = (*Stream)(nil)
