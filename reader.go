package polymux

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/polymux/polymux/internal/wire"
)

// The read loop: it reads frames, routes stream frames to their streams,
// admits or refuses the peer's opens, and answers pings.

// readLoop reads and dispatches frames until the connection fails or the
// session ends, then waits for the writer and wakes everything blocked.
// While the session is ending it goes on reading until the writer closes
// the connection: a peer blocked writing to us could otherwise not read
// what we still deliver, and closing a TCP connection with unread data
// would reset it and lose what the kernel still holds. It discards what it
// reads once the application has closed the session; after a failed
// write, say, the frames already on their way (the peer's last data and
// FINs) are still delivered to the streams.
func (s *Session) readLoop() {
	defer s.finish()
	if !s.isDetected() {
		if err := s.detect(); err != nil {
			s.shutdown(err, wire.CodeProtocol)
			return
		}
	}
	for {
		f, err := s.codec.ReadFrame(&s.rd)
		if err == nil {
			s.lastRecv.Store(s.now())
			s.nFramesRecv.Add(1)
			if s.IsClosed() && s.discard {
				err = s.skip(f)
			} else {
				err = s.dispatch(f)
			}
		}
		if err != nil {
			s.readFailed(err)
			return
		}
	}
}

// detect peeks at the client's first bytes, within DetectTimeout, and
// picks the protocol they belong to. Nothing is consumed.
func (s *Session) detect() error {
	s.conn.SetReadDeadline(time.Now().Add(s.cfg.DetectTimeout))
	b, err := s.rd.Peek(wire.DetectLen)
	s.conn.SetReadDeadline(time.Time{})
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("%w: no protocol detected: the client sent %d bytes within %v", ErrSessionClosed, len(b), s.cfg.DetectTimeout)
		}
		return fmt.Errorf("%w: detecting the protocol: %w", ErrSessionClosed, err)
	}
	codec, err := wire.Detect(b)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	proto, _ := ParseProtocol(codec.Name())
	s.setCodec(proto, codec)
	s.log.Debug("polymux: protocol detected", "protocol", proto, "remote", s.conn.RemoteAddr())
	return nil
}

// readFailed ends the session after a failed frame read or a frame that
// broke the protocol. The peer closing the connection ends it gracefully:
// a peer that is itself lingering still reads what we deliver.
func (s *Session) readFailed(err error) {
	switch {
	case s.IsClosed():
	case errors.Is(err, ErrProtocol):
		s.shutdown(err, wire.CodeProtocol)
	case errors.Is(err, wire.ErrProtocol):
		s.shutdown(fmt.Errorf("%w: %w", ErrProtocol, err), wire.CodeProtocol)
	case errors.Is(err, io.EOF):
		s.end(fmt.Errorf("%w: connection closed by peer", ErrSessionClosed), wire.CodeNone, true)
	default:
		s.shutdown(fmt.Errorf("%w: read: %w", ErrSessionClosed, err), wire.CodeNone)
	}
}

// payloadErr is the error of a failed read inside a frame's payload: the
// connection ending there cuts the frame short.
func payloadErr(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// dispatch applies one received frame. An error ends the session.
func (s *Session) dispatch(f wire.Frame) error {
	switch f.Type {
	case wire.TypeData, wire.TypeWindow:
		return s.streamFrame(f)
	case wire.TypePing:
		if f.Flags&wire.FlagSYN != 0 {
			s.w.sched.pong(f.Value)
		} else {
			s.pong(f.Value)
		}
	case wire.TypeGoAway:
		s.onGoAway(f)
	}
	return nil
}

// streamFrame routes a stream frame to its stream, admitting the stream
// first if the frame opens it.
func (s *Session) streamFrame(f wire.Frame) error {
	var st *Stream
	if f.Flags&wire.FlagSYN != 0 {
		var err error
		if st, err = s.incoming(f.Stream); err != nil {
			return err
		}
		if st == nil { // refused, and answered
			return s.skip(f)
		}
	} else if st = s.lookup(f.Stream); st == nil {
		return s.unknownStream(f)
	}
	return st.onFrame(f)
}

// onGoAway records that the peer opens no more streams and accepts none
// of ours past the id it names. A code means the peer is ending the
// session.
func (s *Session) onGoAway(f wire.Frame) {
	s.mu.Lock()
	s.remoteGoAway = true
	var refused []*Stream
	if s.caps.GoAwayLastID {
		for id, st := range s.streams {
			if st.local && id > f.LastID {
				refused = append(refused, st)
			}
		}
	}
	s.mu.Unlock()
	for _, st := range refused {
		st.abort(ErrStreamRefused, false, 0)
	}
	if f.Value != uint32(wire.CodeNone) {
		err := error(&SessionError{Code: f.Value, Remote: true})
		if f.Value == uint32(wire.CodeProtocol) {
			// Both yamux's and muxado's GoAway define code 1.
			err = fmt.Errorf("%w: peer reported a protocol error: %w", ErrProtocol, err)
		}
		s.shutdown(err, wire.CodeNone)
		s.explain(err)
	}
}

// explain makes the peer's GoAway, with its reason, the session's error
// when the session had already ended on a write that failed because the
// peer closed its end: a peer that closes with our bytes unread makes its
// kernel answer with a reset, and a write racing its GoAway then fails
// first. What the peer sent before it closed says why the session ended;
// "connection reset by peer" does not. Streams learn the session's error
// once the read loop ends (finish), so they see the reason too.
func (s *Session) explain(reason error) {
	p := s.err.Load()
	if p == nil || !closedByPeer(*p) {
		return
	}
	err := fmt.Errorf("%w: %w", ErrSessionClosed, reason)
	s.err.CompareAndSwap(p, &err)
}

// closedByPeer reports whether err is a connection error that the peer
// closing its end causes: a reset, or a broken pipe.
func closedByPeer(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// skip discards the payload of a frame nobody will read.
func (s *Session) skip(f wire.Frame) error {
	if f.Type != wire.TypeData {
		return nil
	}
	return s.skipData(f.Length)
}

// skipData discards n payload bytes.
func (s *Session) skipData(n uint32) error {
	if n == 0 {
		return nil
	}
	_, err := s.rd.Discard(int(n))
	return payloadErr(err)
}

// resetOnData aborts st because of a data frame of n bytes, whose payload
// is skipped. The RST goes with the session's replies, which the read loop
// waits on when they pile up: a peer provoking resets faster than it
// reads them cannot make the writer hold streams without bound.
func (s *Session) resetOnData(st *Stream, n uint32, reason wire.Code, err error) error {
	if st.abort(err, false, 0) {
		s.w.sched.refuse(st.id, s.resetCode(reason))
	}
	return s.skipData(n)
}

// unknownStream handles a frame for a stream that is not open: its data
// is dropped, and on protocols that expect it the peer is told with RST.
func (s *Session) unknownStream(f wire.Frame) error {
	if f.Type == wire.TypeData && f.Length > 0 && s.caps.RejectUnknownData && f.Flags&wire.FlagRST == 0 {
		s.w.sched.refuse(f.Stream, s.resetCode(wire.CodeStreamClosed))
	}
	return s.skip(f)
}

// incoming creates the stream the peer opens with id, or refuses it. It
// returns nil (and no error) for a refused stream.
func (s *Session) incoming(id uint32) (*Stream, error) {
	peerParity := s.caps.FirstID[1] & 1
	if !s.client {
		peerParity = s.caps.FirstID[0] & 1
	}
	if id&1 != peerParity {
		return nil, protocolErr("peer opened stream %d with this side's id parity", id)
	}
	mem, err := s.reserveStream()
	if err != nil {
		s.refuse(id, wire.CodeRefused, "the memory manager refused it: "+err.Error())
		return nil, nil
	}
	s.mu.Lock()
	if _, ok := s.streams[id]; ok {
		s.mu.Unlock()
		s.releaseStream(mem)
		return nil, protocolErr("peer reopened live stream %d", id)
	}
	s.lastPeerID = max(s.lastPeerID, id)
	for {
		var wait func() bool
		switch {
		case s.mustPause():
			wait = s.awaitAccept
		case s.lingering >= s.cfg.MaxIncomingStreams && !s.IsClosed():
			// As many streams closed both ways wait for their FINs to
			// be written: wait for the writer, as for replies.
			wait = s.awaitLinger
		}
		if wait == nil {
			break
		}
		s.mu.Unlock()
		if !wait() {
			s.releaseStream(mem)
			return nil, nil // the session is ending: nothing is owed
		}
		s.mu.Lock()
	}
	if code := s.refusal(); code != wire.CodeNone {
		s.mu.Unlock()
		s.releaseStream(mem)
		s.refuse(id, code, "past the limits")
		return nil, nil
	}
	st := newStream(s, id, false, mem)
	st.backlogged = true
	s.streams[id] = st
	s.numIncoming++
	if s.backlogTail == nil {
		s.backlogHead = st
	} else {
		s.backlogTail.acceptNext = st
		st.acceptPrev = s.backlogTail
	}
	s.backlogTail = st
	s.backlogLen++
	s.mu.Unlock()
	st.arrived()
	s.nAccepted.Add(1)
	notify(s.acceptCh)
	return st, nil
}

// refuse answers a peer's open of id with a refusal it sees (RST, or FIN
// without RST) and counts it.
func (s *Session) refuse(id uint32, reason wire.Code, why string) {
	s.nRefused.Add(1)
	s.w.sched.refuse(id, s.resetCode(reason))
	s.log.Debug("polymux: refused stream", "stream", id, "code", reason, "why", why)
}

// refusal is the code a peer's new stream is refused with, or CodeNone
// to admit it. Only real limits refuse: this side going away, and
// MaxIncomingStreams, which counts the streams waiting for Accept. A full
// backlog refuses only where the opener waits for acknowledgements and so
// keeps within it unless it ignores the protocol (yamux); muxado streams
// simply wait, and smux pauses before it gets here (see mustPause). s.mu
// must be held.
func (s *Session) refusal() wire.Code {
	switch {
	case s.localGoAway || s.IsClosed():
		return wire.CodeRefused
	case s.numIncoming >= s.cfg.MaxIncomingStreams:
		return wire.CodeRefused
	case s.caps.AckOpens && s.backlogLen >= s.cfg.AcceptBacklog:
		return wire.CodeAcceptFull
	}
	return wire.CodeNone
}

// mustPause reports whether a new peer stream must wait for the
// application to accept one first: the backlog is full and the protocol
// can neither refuse the stream nor make its opener wait (smux). Streams
// that will be refused anyway do not wait, nor does MaxIncomingStreams
// ever make the read loop wait: the FINs and data that would free a place
// sit behind the waiting open. s.mu must be held.
func (s *Session) mustPause() bool {
	return !s.caps.Reset && s.backlogLen >= s.cfg.AcceptBacklog && !s.localGoAway && !s.IsClosed()
}

// awaitLinger waits until the writer has written the FIN of a stream
// closed both ways, reporting false if the session ends first.
func (s *Session) awaitLinger() bool {
	select {
	case <-s.lingerCh:
		return true
	case <-s.closing:
		return false
	}
}

// awaitAccept pauses the read loop until the application accepts a
// stream, the session stops accepting, or it ends (then false). The pause
// is this side's choice, so neither keepalive nor WriteTimeout counts it
// against the peer.
func (s *Session) awaitAccept() bool {
	s.paused.Store(true)
	s.w.enc.holdDeadline(true)
	defer func() {
		s.lastRecv.Store(s.now())
		s.paused.Store(false)
		s.w.enc.holdDeadline(false)
	}()
	select {
	case <-s.backlogCh:
		return true
	case <-s.acceptDone:
		return true
	case <-s.closing:
		return false
	}
}

// readBufferSize is the frame reader's buffer while frames flow: large
// enough to batch many small frames per system call, small enough that
// large payloads are read straight into stream buffers.
const readBufferSize = 64 << 10

// idleReadSize is the inline buffer the frame reader waits on while the
// connection is quiet: room for any header and a small request after it,
// so an idle session pins no large buffer, and a quiet session's small
// frame arrives in one read. At 64 B a 64 B request came in two reads,
// which cost 6-10% of the rpc rate on smux v2 and muxado.
const idleReadSize = 512

var readBuffers = newBufferStack(readBufferSize, 16)

// frameReader is the read loop's buffered reader, implementing the
// wire.Reader codecs read from. While frames flow it reads into a pooled
// 64 KiB buffer; once a read comes back short, which says the connection
// has nothing more for now, it gives the buffer back and waits on a small
// inline one, so an idle session holds none. Only the read loop uses it.
type frameReader struct {
	conn  io.Reader
	buf   []byte  // small[:] or *big
	big   *[]byte // the pooled buffer, while it is in use
	r, w  int     // unread bytes are buf[r:w]
	short bool    // the last read did not fill the buffer
	bulk  bool    // the last payload was read straight from the connection
	err   error   // the read error, returned once the buffer is empty
	small [idleReadSize]byte
}

// fill reads more bytes from the connection, keeping the unread ones; want
// is how many more the caller needs.
func (fr *frameReader) fill(want int) error {
	if fr.err != nil {
		return fr.err
	}
	if fr.r == fr.w {
		fr.r, fr.w = 0, 0
		if fr.big != nil && fr.short {
			// Quiet: give the large buffer back before waiting.
			readBuffers.put(fr.big)
			fr.big = nil
		}
	}
	if fr.big == nil {
		if fr.w+want <= len(fr.small) && (fr.short || fr.buf == nil) {
			fr.buf = fr.small[:]
		} else {
			// Bytes are flowing, or more are wanted than the small
			// buffer holds.
			fr.big = readBuffers.get()
			fr.w = copy(*fr.big, fr.small[fr.r:fr.w])
			fr.r = 0
			fr.buf = *fr.big
		}
	}
	if fr.r > 0 && len(fr.buf)-fr.w < want {
		fr.w = copy(fr.buf, fr.buf[fr.r:fr.w])
		fr.r = 0
	}
	end := len(fr.buf)
	if fr.bulk {
		// Large payloads are flowing: read the next header and what
		// little follows it, and leave the next payload to readFull,
		// which reads it where it goes, rather than copy most of it
		// through the buffer (1 MiB bulk: memmove 13.8% -> 7.5% of CPU).
		end = min(end, fr.w+max(want, idleReadSize))
		fr.bulk = false
	}
	n, err := fr.conn.Read(fr.buf[fr.w:end])
	fr.short = fr.w+n < end
	fr.w += n
	if err != nil {
		fr.err = err
		if n > 0 {
			return nil
		}
	}
	return err
}

// Peek returns the next n bytes without consuming them. The codecs peek
// at most wire.MinReadBuffer bytes, onData up to smallPayload; n must not
// exceed readBufferSize.
func (fr *frameReader) Peek(n int) ([]byte, error) {
	for fr.w-fr.r < n {
		if err := fr.fill(n - (fr.w - fr.r)); err != nil {
			return fr.buf[fr.r:fr.w], err
		}
	}
	return fr.buf[fr.r : fr.r+n], nil
}

// Discard consumes n bytes.
func (fr *frameReader) Discard(n int) (int, error) {
	done := 0
	for done < n {
		if fr.r == fr.w {
			if err := fr.fill(n - done); err != nil {
				return done, err
			}
		}
		k := min(n-done, fr.w-fr.r)
		fr.r += k
		done += k
	}
	return done, nil
}

// buffered is the number of bytes read from the connection and not yet
// consumed.
func (fr *frameReader) buffered() int { return fr.w - fr.r }

// copyTo consumes len(p) buffered bytes into p; p must not be longer than
// buffered().
func (fr *frameReader) copyTo(p []byte) {
	fr.r += copy(p, fr.buf[fr.r:fr.w])
}

// directRead is the payload left to read at which readFull reads it
// straight into the destination rather than through the buffer: large
// payloads save a copy, and small ones are read a buffer's worth at a
// time, often together with the frames that follow.
const directRead = 16 << 10

// readFull fills p, from the buffer first and then from the connection,
// and reports how much it read.
func (fr *frameReader) readFull(p []byte) (int, error) {
	n := copy(p, fr.buf[fr.r:fr.w])
	fr.r += n
	for n < len(p) {
		if len(p)-n < directRead {
			if err := fr.fill(len(p) - n); err != nil {
				return n, err
			}
			k := copy(p[n:], fr.buf[fr.r:fr.w])
			fr.r += k
			n += k
			continue
		}
		if fr.err != nil {
			return n, fr.err
		}
		k, err := fr.conn.Read(p[n:])
		n += k
		fr.bulk = true
		if err != nil {
			fr.err = err
			if n < len(p) {
				return n, err
			}
		}
	}
	return n, nil
}

// release gives the pooled buffer back once the read loop has ended.
func (fr *frameReader) release() {
	if fr.big != nil {
		readBuffers.put(fr.big)
		fr.big, fr.buf = nil, nil
		fr.r, fr.w = 0, 0
	}
}
