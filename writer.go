package polymux

import (
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/polymux/polymux/internal/wire"
)

const (
	// batchBytes bounds the DATA payload of one write to the connection,
	// and so how long a control frame can wait behind data.
	batchBytes = 256 << 10
	// headerArena is the room for encoded headers in one batch.
	headerArena = 64 << 10
	// maxPongs bounds ping replies waiting to be written, and maxRefusals
	// the RSTs (or FINs) for streams not in the table: refused opens, data
	// for closed streams. Past either, the read loop waits for the writer,
	// so a peer that floods us without reading the replies meets TCP
	// backpressure, and WriteTimeout if it never reads; no reply is lost.
	maxPongs    = 16
	maxRefusals = 1024
	// minCompact is the queue length below which dead streams are left for
	// the writer to skip rather than compacted out.
	minCompact = 64
	// goAwayWait bounds how long an abrupt end (a protocol error, a
	// failed write) spends on its GoAway.
	goAwayWait = 250 * time.Millisecond
	// nopInterval is how often a NOP goes out on a connection this side
	// has left silent, for protocols whose peers time out silent sessions
	// (smux closes after 30 s without a frame).
	nopInterval = 10 * time.Second
)

// refusal is a reset (or, without RST, a FIN) for a stream not in the
// table.
type refusal struct {
	id   uint32
	code uint32 // the code the RST carries
}

// taken records DATA bytes of a stream that are in the batch being written.
type taken struct {
	st *Stream
	n  int
}

// writer owns the connection's write side: one goroutine that gathers
// control frames first, then DATA from ready streams in round-robin order,
// into batches written with one vectored write.
type writer struct {
	s      *Session
	wakeCh chan struct{}
	roomCh chan struct{} // signalled when the writer takes pongs and refusals

	mu         sync.Mutex // guards the fields up to the blank line
	ctrlQ      []*Stream  // streams with control frames to send
	dataQ      []*Stream  // streams with DATA (or a FIN) to send
	pongs      []uint32
	pingID     uint32
	pingQueued bool
	goAway     bool // a GoAway waits to be written
	goAwayCode wire.Code
	goAwayLast uint32
	goAwayUsed bool // a GoAway was queued: the session sends at most one
	nop        bool
	refusals   []refusal
	front      []*Stream // spare for requeue
	ctrlLimit  int       // compact ctrlQ past this length
	dataLimit  int       // compact dataQ past this length

	// Owned by the writer goroutine.
	ctrl, round, next, spare []*Stream
	sessCtrl                 []wire.Frame
	hdrs                     []byte
	bufs                     [][]byte
	iov                      net.Buffers
	stage                    []byte
	taken                    []taken
	forget                   []*Stream
	dataBytes                int
	frames                   int
	vectored                 bool
	err                      error // an encode error: a bug, which ends the session
	probing                  bool  // a keepalive probe is unanswered
	probeAt                  int64
	lastSend                 int64 // s.now() of the last write to the connection

	dlMu         sync.Mutex // guards the connection's write deadline and the fields below
	lastDeadline time.Time  // when the deadline was last moved
	held         bool       // WriteTimeout is lifted while the read loop pauses
	limit        time.Time  // the end of the session: no write lasts past it
}

func (w *writer) init(s *Session) {
	w.s = s
	w.wakeCh = make(chan struct{}, 1)
	w.roomCh = make(chan struct{}, 1)
	w.ctrlLimit, w.dataLimit = minCompact, minCompact
	w.hdrs = make([]byte, 0, headerArena)
	switch s.conn.(type) {
	case *net.TCPConn, *net.UnixConn:
		w.vectored = true
	}
}

func (w *writer) wake() { notify(w.wakeCh) }

// queueCtrl asks the writer to send st's pending control frames.
func (w *writer) queueCtrl(st *Stream) {
	w.mu.Lock()
	st.gone.Store(false)
	if !st.inCtrl {
		st.inCtrl = true
		w.ctrlQ = append(w.ctrlQ, st)
		w.ctrlQ = compact(w.ctrlQ, &w.ctrlLimit, func(st *Stream) { st.inCtrl = false })
	}
	w.mu.Unlock()
	w.wake()
}

// queueData asks the writer to send st's buffered data and pending FIN.
func (w *writer) queueData(st *Stream) {
	w.mu.Lock()
	st.gone.Store(false)
	if !st.inData {
		st.inData = true
		w.dataQ = append(w.dataQ, st)
		w.dataQ = compact(w.dataQ, &w.dataLimit, func(st *Stream) { st.inData = false })
	}
	w.mu.Unlock()
	w.wake()
}

// compact drops from q the streams the session forgot that have nothing
// left to send, once q has doubled since the last time: while the
// connection is blocked, a peer that opens and resets streams cannot make
// the queues hold every stream it ever opened. w.mu must be held.
func compact(q []*Stream, limit *int, unqueue func(*Stream)) []*Stream {
	if len(q) <= *limit {
		return q
	}
	kept := q[:0]
	for _, st := range q {
		if st.gone.Load() {
			unqueue(st)
			continue
		}
		kept = append(kept, st)
	}
	clear(q[len(kept):])
	*limit = max(minCompact, 2*len(kept))
	return kept
}

// queuePong queues a ping reply. Only the read loop calls it; while
// maxPongs replies wait, it waits for the writer to take them. A reply is
// dropped only when the session ends, which owes nothing more.
func (w *writer) queuePong(id uint32) {
	w.mu.Lock()
	for len(w.pongs) >= maxPongs {
		if !w.awaitRoom() {
			return
		}
	}
	w.pongs = append(w.pongs, id)
	w.mu.Unlock()
	w.wake()
}

// queueRefusal queues a reset (or, without RST, a FIN) for a stream not in
// the table, waiting as queuePong does while maxRefusals of them wait.
func (w *writer) queueRefusal(id uint32, code uint32) {
	w.mu.Lock()
	for len(w.refusals) >= maxRefusals {
		if !w.awaitRoom() {
			return
		}
	}
	w.refusals = append(w.refusals, refusal{id, code})
	w.mu.Unlock()
	w.wake()
}

// awaitRoom releases w.mu and waits for the writer to take the replies it
// queues, then takes w.mu again. It reports false, leaving w.mu released,
// if the session ends first.
func (w *writer) awaitRoom() bool {
	w.mu.Unlock()
	w.wake()
	select {
	case <-w.roomCh:
		w.mu.Lock()
		return true
	case <-w.s.closing:
		return false
	}
}

func (w *writer) queuePing(id uint32) {
	w.mu.Lock()
	w.pingID, w.pingQueued = id, true
	w.mu.Unlock()
	w.wake()
}

// queueGoAway queues GoAway(code), unless the session has sent one
// already: a peer is told once.
func (w *writer) queueGoAway(code wire.Code, last uint32) {
	w.mu.Lock()
	if !w.goAwayUsed {
		w.goAwayUsed = true
		w.goAway, w.goAwayCode, w.goAwayLast = true, code, last
	}
	w.mu.Unlock()
	w.wake()
}

// run is the writer goroutine.
func (w *writer) run() {
	s := w.s
	defer close(s.writerDone)
	select {
	case <-s.detected:
	case <-s.closing:
		if !s.isDetected() { // closed before a protocol was known: no GoAway
			s.conn.Close()
			return
		}
	}
	ka := w.keepaliveTimer()
	var kaC <-chan time.Time
	if ka != nil {
		kaC = ka.C
		defer ka.Stop()
	}
	for {
		if s.IsClosed() {
			w.final()
			return
		}
		if w.fill() == 0 {
			select {
			case <-w.wakeCh:
			case <-kaC:
				w.keepalive(ka)
			case <-s.closing:
			}
			continue
		}
		select {
		case <-kaC:
			w.keepalive(ka)
		default:
		}
		if err := w.flush(); err != nil {
			// The frames may be cut anywhere: nothing more can be
			// written. The read loop goes on until the connection ends,
			// or the watchdog closes it, so that what the peer sent
			// before still arrives.
			s.shutdown(fmt.Errorf("%w: write: %w", ErrSessionClosed, err), wire.CodeNone)
			return
		}
	}
}

// final ends the connection, by s.lingerEnd. A graceful end first writes
// everything queued, then resets the streams the application never closed,
// then GoAway, and waits for the peer to take it all (awaitDelivery); an
// abrupt one writes only GoAway.
func (w *writer) final() {
	s := w.s
	defer s.conn.Close()
	if !time.Now().Before(s.lingerEnd) {
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
	w.reset()
	s.mu.Lock()
	last := s.lastPeerID
	s.mu.Unlock()
	if s.caps.GoAway {
		w.queueGoAway(s.goAwayCode, last)
	}
	w.mu.Lock()
	goAway := w.goAway
	w.goAway = false
	f := wire.Frame{Type: wire.TypeGoAway, Value: uint32(w.goAwayCode), LastID: w.goAwayLast}
	w.mu.Unlock()
	if goAway {
		w.frame(f)
		if w.write() != nil {
			return
		}
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
	s := w.s
	if !s.caps.Reset {
		return true
	}
	s.mu.Lock()
	streams := make([]*Stream, 0, len(s.streams))
	for _, st := range s.streams {
		streams = append(streams, st)
	}
	s.mu.Unlock()
	w.reset()
	for _, st := range streams {
		st.mu.Lock()
		open := st.err == nil && !st.finQueued
		st.mu.Unlock()
		if !open {
			continue
		}
		if !w.room(1) {
			if w.write() != nil {
				return false
			}
			w.reset()
		}
		w.frame(wire.Frame{Type: wire.TypeWindow, Flags: wire.FlagRST, Stream: st.id, Value: uint32(wire.CodeNone)})
	}
	return w.frames == 0 || w.write() == nil
}

// awaitDelivery half-closes the connection and waits, until s.lingerEnd,
// for the peer to have everything written: its end of the connection
// closing proves that, and on Linux so does an empty socket send queue.
// Closing at once would lose what the kernel still holds whenever data
// the peer sent meanwhile lies unread, since TCP then resets the
// connection and discards its send queue.
func (w *writer) awaitDelivery() {
	s := w.s
	cw, ok := s.conn.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return // no half-close (net.Pipe): a completed write was delivered
	}
	linger := time.NewTimer(time.Until(s.lingerEnd))
	defer linger.Stop()
	unsent := sendQueueProbe(s.conn)
	if unsent == nil {
		select {
		case <-s.readDone:
		case <-linger.C:
		}
		return
	}
	poll := time.NewTimer(0)
	defer poll.Stop()
	for every := 50 * time.Microsecond; ; every = min(2*every, 10*time.Millisecond) {
		select {
		case <-s.readDone:
			return
		case <-linger.C:
			return
		case <-poll.C:
			if unsent() == 0 {
				return
			}
			poll.Reset(every)
		}
	}
}

// reset empties the batch.
func (w *writer) reset() {
	w.hdrs = w.hdrs[:0]
	clear(w.bufs)
	w.bufs = w.bufs[:0]
	w.taken = w.taken[:0]
	w.forget = w.forget[:0]
	w.dataBytes, w.frames = 0, 0
}

// frame appends f's header to the batch.
func (w *writer) frame(f wire.Frame) {
	start := len(w.hdrs)
	hdrs, err := w.s.codec.AppendFrame(w.hdrs, f)
	if err != nil {
		if w.err == nil {
			w.err = fmt.Errorf("polymux: internal error: encoding %v: %w", f, err)
		}
		return
	}
	w.hdrs = hdrs
	w.bufs = append(w.bufs, hdrs[start:])
	w.frames++
}

// room reports whether n more headers fit in the batch's arena (which
// must never grow, since the batch holds slices of it).
func (w *writer) room(n int) bool { return cap(w.hdrs)-len(w.hdrs) >= n*wire.MaxEncodedLen }

// fill gathers the next batch and returns its number of frames.
func (w *writer) fill() int {
	s := w.s
	w.reset()
	w.mu.Lock()
	w.sessCtrl = w.sessCtrl[:0]
	if w.goAway {
		w.goAway = false
		w.sessCtrl = append(w.sessCtrl, wire.Frame{Type: wire.TypeGoAway, Value: uint32(w.goAwayCode), LastID: w.goAwayLast})
	}
	if w.nop {
		w.nop = false
		w.sessCtrl = append(w.sessCtrl, wire.Frame{Type: wire.TypeNop})
	}
	if w.pingQueued {
		w.pingQueued = false
		w.sessCtrl = append(w.sessCtrl, wire.Frame{Type: wire.TypePing, Flags: wire.FlagSYN, Value: w.pingID})
	}
	for _, id := range w.pongs {
		w.sessCtrl = append(w.sessCtrl, wire.Frame{Type: wire.TypePing, Flags: wire.FlagACK, Value: id})
	}
	w.pongs = w.pongs[:0]
	for _, r := range w.refusals {
		f := wire.Frame{Type: wire.TypeWindow, Flags: wire.FlagRST, Stream: r.id, Value: uint32(r.code)}
		if !s.caps.Reset {
			f = wire.Frame{Type: wire.TypeWindow, Flags: wire.FlagFIN, Stream: r.id}
		}
		w.sessCtrl = append(w.sessCtrl, f)
	}
	w.refusals = w.refusals[:0]
	notify(w.roomCh)
	w.ctrl = append(w.ctrl[:0], w.ctrlQ...)
	w.ctrlQ = w.ctrlQ[:0]
	for _, st := range w.ctrl {
		st.inCtrl = false
	}
	// Streams keep inData while the writer holds them, so their writers
	// do not queue them a second time; dataRound clears it when a stream
	// runs dry.
	w.round = append(w.round[:0], w.dataQ...)
	w.dataQ = w.dataQ[:0]
	w.mu.Unlock()

	for _, f := range w.sessCtrl {
		w.frame(f)
	}
	for i, st := range w.ctrl {
		if !w.room(4) {
			w.requeueCtrl(w.ctrl[i:])
			break
		}
		st.mu.Lock()
		w.streamControl(st)
		st.mu.Unlock()
	}
	w.dataRound()
	for _, st := range w.forget {
		s.forget(st)
	}
	if w.err != nil {
		s.shutdown(w.err, wire.CodeInternal)
	}
	return w.frames
}

// dataRound takes one frame from each ready stream in turn until the batch
// is full; the streams it did not reach go first next time, then the ones
// it served.
func (w *writer) dataRound() {
	for len(w.round) > 0 {
		w.next = w.next[:0]
		for i, st := range w.round {
			if w.dataBytes >= batchBytes || !w.room(5) {
				w.spare = append(append(w.spare[:0], w.round[i:]...), w.next...)
				w.mu.Lock()
				w.front = append(append(w.front[:0], w.spare...), w.dataQ...)
				w.dataQ, w.front = w.front, w.dataQ[:0]
				w.mu.Unlock()
				return
			}
			st.mu.Lock()
			more := w.streamData(st)
			if !more {
				w.mu.Lock()
				st.inData = false
				w.mu.Unlock()
			}
			st.mu.Unlock()
			if more {
				w.next = append(w.next, st)
			}
		}
		w.round, w.next = w.next, w.round
	}
}

// requeueCtrl puts streams back at the front of the control queue, keeping
// any that were queued again meanwhile only once.
func (w *writer) requeueCtrl(streams []*Stream) {
	w.mu.Lock()
	front := w.front[:0]
	for _, st := range streams {
		if !st.inCtrl {
			st.inCtrl = true
			front = append(front, st)
		}
	}
	front = append(front, w.ctrlQ...)
	w.ctrlQ, w.front = front, w.ctrlQ[:0]
	w.mu.Unlock()
}

// streamControl appends st's pending control frames: open, acknowledge,
// window update, reset. st.mu must be held.
func (w *writer) streamControl(st *Stream) {
	c := w.s.caps
	if st.needSYN {
		st.needSYN = false
		f := wire.Frame{Type: wire.TypeWindow, Flags: wire.FlagSYN, Stream: st.id}
		if c.WindowOnOpen {
			f.Value, _ = st.rwin.Update(true)
		} else if c.Window != wire.WindowNone && st.rwin.UpdateDue(true) {
			st.needUpdate = true
		}
		w.frame(f)
	}
	if st.needACK {
		st.needACK = false
		f := wire.Frame{Type: wire.TypeWindow, Flags: wire.FlagACK, Stream: st.id}
		if c.Window == wire.WindowDelta {
			f.Value, _ = st.rwin.Update(true)
		}
		w.frame(f)
	}
	if st.needRST {
		st.needRST, st.needUpdate = false, false
		w.frame(wire.Frame{Type: wire.TypeWindow, Flags: wire.FlagRST, Stream: st.id, Value: st.rstCode})
		return
	}
	if st.needUpdate {
		st.needUpdate = false
		if st.err != nil || st.finRecv {
			return
		}
		if st.rwin.Credit() == 0 {
			// The peer is blocked on this window: the next data to
			// arrive times a round trip.
			st.updAt = w.s.now()
		}
		if delta, ok := st.rwin.Update(true); ok {
			f := wire.Frame{Type: wire.TypeWindow, Stream: st.id, Value: delta}
			if c.Window == wire.WindowAbsolute {
				f.Value, f.Window = st.rwin.Consumed(), st.rwin.Window()
			}
			w.frame(f)
		}
	}
}

// streamData appends st's control frames, then one DATA frame of its
// buffered bytes, then its FIN once everything before it is in the batch.
// It reports whether st has more to send. st.mu must be held.
func (w *writer) streamData(st *Stream) bool {
	w.streamControl(st)
	avail := 0
	if st.err == nil {
		avail = st.send.len() - st.inflight
		if avail > 0 {
			k := min(avail, w.s.frameMax)
			w.frame(wire.Frame{Type: wire.TypeData, Stream: st.id, Length: uint32(k)})
			w.bufs = st.send.slices(st.inflight, k, w.bufs)
			st.inflight += k
			w.taken = append(w.taken, taken{st, k})
			w.dataBytes += k
			avail -= k
		}
	}
	if st.finQueued && !st.finSent && avail == 0 && (st.err == nil || !w.s.caps.Reset) {
		st.finSent = true
		w.frame(wire.Frame{Type: wire.TypeWindow, Flags: wire.FlagFIN, Stream: st.id})
		if st.doneLocked() {
			w.forget = append(w.forget, st)
		}
	}
	return avail > 0
}

// flush writes the batch and releases the DATA bytes it carried.
func (w *writer) flush() error {
	err := w.write()
	for _, t := range w.taken {
		st := t.st
		st.mu.Lock()
		st.send.discard(t.n)
		st.inflight -= t.n
		if st.inflight == 0 && st.err != nil {
			st.send.discard(st.send.len())
		}
		st.mu.Unlock()
		notify(st.writeCh)
	}
	if err == nil {
		w.lastSend = w.s.now()
		w.s.nBytesSent.Add(uint64(w.dataBytes))
		w.s.nFramesSent.Add(uint64(w.frames))
	}
	return err
}

// write puts the batch on the connection.
func (w *writer) write() error {
	s := w.s
	w.armDeadline()
	if w.vectored {
		w.iov = w.bufs
		_, err := w.iov.WriteTo(s.conn)
		return err
	}
	w.stage = w.stage[:0]
	for _, b := range w.bufs {
		w.stage = append(w.stage, b...)
	}
	n, err := s.conn.Write(w.stage)
	if err == nil && n < len(w.stage) {
		// A Write that breaks io.Writer's contract: the frames are cut, and
		// the stream cannot be resynchronised.
		err = io.ErrShortWrite
	}
	return err
}

// armDeadline moves the connection's write deadline to WriteTimeout from
// now, once half of it has passed since it was last moved, so that one
// write stuck longer ends the session. While the read loop pauses by
// choice (holdDeadline) there is none, and once the session ends none
// lies past its end.
func (w *writer) armDeadline() {
	s := w.s
	timeout := s.cfg.WriteTimeout
	if timeout <= 0 {
		return
	}
	now := time.Now()
	w.dlMu.Lock()
	defer w.dlMu.Unlock()
	if w.held || now.Sub(w.lastDeadline) <= timeout/2 {
		return
	}
	d := now.Add(timeout)
	if !w.limit.IsZero() && w.limit.Before(d) {
		d = w.limit
	}
	s.conn.SetWriteDeadline(d)
	w.lastDeadline = now
}

// holdDeadline lifts the write timeout while the read loop pauses by this
// side's choice (the peer may be waiting for that same pause to end before
// it reads), and arms it afresh when the pause ends.
func (w *writer) holdDeadline(hold bool) {
	w.dlMu.Lock()
	defer w.dlMu.Unlock()
	if w.held == hold || !w.limit.IsZero() {
		w.held = hold
		return
	}
	w.held = hold
	if hold {
		w.s.conn.SetWriteDeadline(time.Time{})
	} else {
		w.lastDeadline = time.Time{}
	}
}

// limitDeadline bounds every write from now on by t, the end of the
// session, a write already under way included.
func (w *writer) limitDeadline(t time.Time) {
	w.dlMu.Lock()
	defer w.dlMu.Unlock()
	w.limit, w.held = t, false
	w.lastDeadline = time.Time{}
	w.s.conn.SetWriteDeadline(t)
}

// keepaliveTimer returns the keepalive timer, or nil when there is
// nothing to do: keepalive is off, or the protocol can neither probe nor
// needs NOPs (muxado).
func (w *writer) keepaliveTimer() *time.Timer {
	if !w.s.caps.KeepAliveNop && !w.probes() {
		return nil
	}
	return time.NewTimer(min(w.nopEvery(), time.Duration(max(w.s.cfg.KeepAliveInterval, 0))))
}

// probes reports whether this session checks its peer's liveness.
func (w *writer) probes() bool {
	s := w.s
	return s.cfg.KeepAliveInterval >= 0 && (s.caps.PingReply || s.caps.KeepAliveNop)
}

// nopEvery is how often NOPs go out on a silent connection.
func (w *writer) nopEvery() time.Duration {
	if i := w.s.cfg.KeepAliveInterval; i > 0 && i < nopInterval {
		return i
	}
	return nopInterval
}

// keepalive runs when the keepalive timer fires. It sends a NOP when this
// side has been silent (for protocols that need them), checks the peer's
// liveness, and re-arms the timer for the next of those two moments.
func (w *writer) keepalive(t *time.Timer) {
	s := w.s
	now := s.now()
	next := int64(1<<63 - 1)
	if s.caps.KeepAliveNop {
		every := int64(w.nopEvery())
		if now-w.lastSend >= every {
			w.mu.Lock()
			w.nop = true
			w.mu.Unlock()
			w.lastSend = now
		}
		next = w.lastSend + every
	}
	if w.probes() {
		at, alive := w.liveness(now)
		if !alive {
			s.shutdown(ErrKeepAliveTimeout, wire.CodeNone)
			return
		}
		next = min(next, at)
	}
	t.Reset(time.Duration(max(next-now, 0)))
}

// liveness treats any frame received as proof of life: a probe goes out
// only after KeepAliveInterval of silence, and the peer is dead if
// KeepAliveTimeout more passes with nothing received. It returns when to
// check next, and false if the peer is dead.
func (w *writer) liveness(now int64) (int64, bool) {
	s := w.s
	last := s.lastRecv.Load()
	interval, timeout := int64(s.cfg.KeepAliveInterval), int64(s.cfg.KeepAliveTimeout)
	if s.paused.Load() {
		// Not reading, by this side's choice: the peer's silence proves
		// nothing. The pause's end counts as a sign of life.
		w.probing = false
		return now + interval, true
	}
	if w.probing {
		if last < w.probeAt {
			if now-w.probeAt >= timeout {
				return 0, false
			}
			return w.probeAt + timeout, true
		}
		w.probing = false
	}
	if now-last < interval {
		return last + interval, true
	}
	w.probing, w.probeAt = true, now
	if s.caps.PingReply {
		s.startPing()
	} else {
		w.mu.Lock()
		w.nop = true
		w.mu.Unlock()
	}
	return now + timeout, true
}
