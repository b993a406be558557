package polymux

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/polymux/polymux/internal/flow"
	"github.com/polymux/polymux/internal/wire"
)

// readBufferSize is the read loop's buffer: large enough to batch many
// small frames per system call, small enough that large payloads are read
// straight into stream buffers.
const readBufferSize = 64 << 10

// Session is one multiplexed connection. It runs two goroutines (a read
// loop and a writer) and none per stream. It implements net.Listener, so
// http.Serve(sess, handler) serves the streams the peer opens; its Close
// ends the whole session, so for a graceful http.Server.Shutdown serve
// Listener() instead. All methods are safe for concurrent use.
type Session struct {
	conn     net.Conn
	cfg      Config
	proto    Protocol
	codec    wire.Codec
	caps     *wire.Caps
	client   bool
	log      *slog.Logger
	budget   *flow.Budget
	frameMax int // largest DATA payload sent
	br       *bufio.Reader
	w        writer
	view     sessionListener
	epoch    time.Time // origin of the monotonic clock in nanoseconds
	// detected is closed once proto, codec, caps, frameMax and nextID are
	// set: at once, or after a server in Auto mode has seen the client's
	// first bytes. Those fields are read only after it is closed.
	detected  chan struct{}
	budgetCh  chan struct{} // signalled when buffered bytes are released
	backlogCh chan struct{} // signalled when the accept backlog shrinks
	idleCh    chan struct{} // signalled when the stream table empties
	lingerCh  chan struct{} // signalled when a lingering stream is forgotten
	// paused is set while the read loop waits, by this side's choice, for
	// the application to accept (smux): keepalive and WriteTimeout do not
	// count that wait against the peer.
	paused atomic.Bool

	mu           sync.Mutex // guards the fields below, up to pingMu
	streams      map[uint32]*Stream
	nextID       uint32
	exhausted    bool
	backlogHead  *Stream // accept backlog, oldest first
	backlogTail  *Stream
	backlogLen   int
	numIncoming  int    // open peer-opened streams, toward MaxIncomingStreams
	lingering    int    // peer-opened streams closed both ways whose FIN waits to be written
	unacked      int    // streams this side opened that await the peer's ACK
	lastPeerID   uint32 // highest stream id the peer opened
	localGoAway  bool   // peer opens are refused: GoAway, Shutdown or the listener view's Close
	remoteGoAway bool
	acceptClosed bool          // Accept fails: Shutdown or the listener view's Close
	shutting     bool          // Shutdown: this side opens no more streams either
	acceptCh     chan struct{} // signalled when the backlog gains a stream
	acceptDone   chan struct{} // closed with acceptClosed
	unackedCh    chan struct{} // signalled when unacked drops

	pingMu  sync.Mutex // guards ping and pingSeq
	ping    *pendingPing
	pingSeq uint32

	// The end of the session. graceful, goAwayCode and lingerEnd are set
	// once, before closing is closed, and read only after it.
	closing    chan struct{} // closed when the session starts to end
	closeOnce  sync.Once
	graceful   bool                  // deliver what was written before closing the connection
	discard    bool                  // the application ended it: frames that still arrive are read and dropped
	goAwayCode wire.Code             // the GoAway the end sends
	lingerEnd  time.Time             // when the end stops waiting for the peer
	watchdog   *time.Timer           // closes the connection should the end outlast lingerEnd
	err        atomic.Pointer[error] // why the session ended
	readDone   chan struct{}         // closed when the read loop has stopped reading
	writerDone chan struct{}
	done       chan struct{} // closed when every goroutine has exited

	lastRecv    atomic.Int64 // nanoseconds since epoch of the last frame received
	rtt         atomic.Int64 // last measured ping round trip
	minRTT      atomic.Int64 // least round trip seen, for window tuning
	nBuffered   atomic.Int64 // received bytes not yet read
	nOpened     atomic.Uint64
	nAccepted   atomic.Uint64
	nRefused    atomic.Uint64
	nBytesSent  atomic.Uint64
	nBytesRecv  atomic.Uint64
	nFramesSent atomic.Uint64
	nFramesRecv atomic.Uint64
}

// pendingPing is the one ping in flight; concurrent Ping calls share it.
type pendingPing struct {
	id    uint32
	start int64
	rtt   time.Duration
	done  chan struct{}
}

// Client starts the client side of a session on conn. With Protocol Auto
// it speaks yamux. The session owns conn from now on.
func Client(conn net.Conn, cfg *Config) (*Session, error) { return newSession(conn, cfg, true) }

// Server starts the server side of a session on conn. With Protocol Auto
// it detects the client's protocol from its first bytes (see
// Config.DetectTimeout); Protocol reports Auto until then. The session owns
// conn from now on.
func Server(conn net.Conn, cfg *Config) (*Session, error) { return newSession(conn, cfg, false) }

func newSession(conn net.Conn, cfg *Config, client bool) (*Session, error) {
	return startSession(conn, conn, cfg, client)
}

// startSession starts a session on conn that reads from rd: conn itself,
// or (for a Listener that read the client's first bytes to detect its
// protocol) a reader that yields those bytes first. Writes always go to
// conn, so the writer sees the connection's own type.
func startSession(conn net.Conn, rd io.Reader, cfg *Config, client bool) (*Session, error) {
	if cfg == nil {
		cfg = DefaultConfig()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := *cfg
	c.fill()
	s := &Session{
		conn:       conn,
		cfg:        c,
		client:     client,
		log:        c.Logger,
		budget:     flow.NewBudget(c.MaxSessionBuffer),
		br:         bufio.NewReaderSize(rd, readBufferSize),
		epoch:      time.Now(),
		detected:   make(chan struct{}),
		budgetCh:   make(chan struct{}, 1),
		backlogCh:  make(chan struct{}, 1),
		idleCh:     make(chan struct{}, 1),
		lingerCh:   make(chan struct{}, 1),
		streams:    make(map[uint32]*Stream),
		acceptCh:   make(chan struct{}, 1),
		acceptDone: make(chan struct{}),
		unackedCh:  make(chan struct{}, 1),
		closing:    make(chan struct{}),
		readDone:   make(chan struct{}),
		writerDone: make(chan struct{}),
		done:       make(chan struct{}),
	}
	s.view.s = s
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if c.Protocol != Auto || client {
		proto := c.Protocol
		if proto == Auto {
			proto = Yamux
		}
		codec, err := codecFor(proto)
		if err != nil {
			return nil, err
		}
		s.setCodec(proto, codec)
	}
	s.w.init(s)
	go s.w.run()
	go s.readLoop()
	return s, nil
}

// setCodec fixes the session's protocol and closes detected.
func (s *Session) setCodec(proto Protocol, codec wire.Codec) {
	s.proto = proto
	s.codec = codec
	s.caps = codec.Caps()
	s.frameMax = min(s.cfg.MaxFrameSize, int(min(s.caps.MaxPayload, maxFrameSizeLimit)))
	if s.client {
		s.nextID = s.caps.FirstID[0]
	} else {
		s.nextID = s.caps.FirstID[1]
	}
	close(s.detected)
}

// isDetected reports whether the protocol is known.
func (s *Session) isDetected() bool { return isClosed(s.detected) }

// detect peeks at the client's first bytes, within DetectTimeout, and
// picks the protocol they belong to. Nothing is consumed.
func (s *Session) detect() error {
	s.conn.SetReadDeadline(time.Now().Add(s.cfg.DetectTimeout))
	b, err := s.br.Peek(wire.DetectLen)
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

// waitDetected waits until the protocol is known.
func (s *Session) waitDetected(ctx context.Context) error {
	select {
	case <-s.detected:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.closing:
		return s.closedErr()
	}
}

// codecFor returns the codec of a protocol.
func codecFor(p Protocol) (wire.Codec, error) {
	switch p {
	case Yamux:
		return wire.Yamux(), nil
	case SmuxV1:
		return wire.Smux(1), nil
	case SmuxV2:
		return wire.Smux(2), nil
	case MuxadoV2:
		return wire.Muxado(), nil
	}
	return nil, fmt.Errorf("polymux: no codec for protocol %v", p)
}

// now is a monotonic clock in nanoseconds.
func (s *Session) now() int64 { return int64(time.Since(s.epoch)) }

// OpenStream opens a new stream. It returns as soon as the open is queued:
// data may be written at once. With yamux it waits (bounded by ctx) while
// AcceptBacklog streams of this side await the peer's acknowledgement. On a
// server still detecting the client's protocol, it waits for detection.
func (s *Session) OpenStream(ctx context.Context) (*Stream, error) {
	if err := s.waitDetected(ctx); err != nil {
		return nil, err
	}
	mm, err := s.reserveStream()
	if err != nil {
		return nil, fmt.Errorf("polymux: the memory manager refused a new stream: %w", err)
	}
	st, err := s.open(ctx, mm)
	if err != nil {
		s.releaseStream(mm)
	}
	return st, err
}

// open opens a stream whose memory mm accounts (nil without a manager).
func (s *Session) open(ctx context.Context, mm MemoryManager) (*Stream, error) {
	for {
		s.mu.Lock()
		if err := s.openErr(); err != nil {
			s.mu.Unlock()
			return nil, err
		}
		if !s.caps.AckOpens || s.unacked < s.cfg.AcceptBacklog {
			break
		}
		s.mu.Unlock()
		select {
		case <-s.unackedCh:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.closing:
		}
	}
	id := s.nextID
	if id >= s.caps.MaxStreamID-1 {
		s.exhausted = true
	} else {
		s.nextID += 2
	}
	st := newStream(s, id, true)
	st.mm, st.mmHeld = mm, s.mmInitial(mm)
	s.streams[id] = st
	if s.caps.AckOpens {
		s.unacked++
	}
	more := !s.caps.AckOpens || s.unacked < s.cfg.AcceptBacklog
	s.mu.Unlock()
	if more {
		notify(s.unackedCh) // let another waiting opener through
	}
	s.nOpened.Add(1)

	st.mu.Lock()
	st.needSYN = true
	if s.caps.AckOpens && s.cfg.StreamOpenTimeout > 0 {
		st.openTimer = time.AfterFunc(s.cfg.StreamOpenTimeout, st.openTimedOut)
	}
	// The SYN goes in order with data, not ahead of it as control frames
	// do: the peer then sees opens and data in the order they were made,
	// so an smux peer whose backlog is full finds the data of the streams
	// it accepted before the next open, not behind it.
	s.w.queueData(st)
	st.mu.Unlock()
	return st, nil
}

// openErr is why no stream can be opened now, if any. s.mu must be held.
func (s *Session) openErr() error {
	switch {
	case s.IsClosed():
		return s.closedErr()
	case s.shutting:
		return errShuttingDown
	case s.remoteGoAway:
		return ErrGoAway
	case s.exhausted:
		return ErrStreamsExhausted
	}
	return nil
}

// Open opens a stream; it is OpenStream(context.Background()).
func (s *Session) Open() (net.Conn, error) {
	st, err := s.OpenStream(context.Background())
	if err != nil {
		return nil, err
	}
	return st, nil
}

// AcceptStream waits for a stream the peer opened. With yamux the stream
// is acknowledged now, so a peer's OpenStream backlog drains as the
// application accepts. Once Shutdown or the listener view's Close has
// stopped accepting, it fails with an error matching net.ErrClosed.
func (s *Session) AcceptStream(ctx context.Context) (*Stream, error) {
	for {
		s.mu.Lock()
		if s.acceptClosed {
			s.mu.Unlock()
			return nil, errAcceptClosed
		}
		if st := s.backlogHead; st != nil {
			s.unlinkBacklog(st)
			more := s.backlogHead != nil
			s.mu.Unlock()
			if more {
				notify(s.acceptCh)
			}
			st.mu.Lock()
			st.backlogged = false
			if s.caps.AckOpens && st.err == nil {
				st.needACK = true
				s.w.queueCtrl(st)
			}
			st.mu.Unlock()
			return st, nil
		}
		s.mu.Unlock()
		select {
		case <-s.acceptCh:
		case <-s.acceptDone:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.closing:
			return nil, s.closedErr()
		}
	}
}

// Accept waits for a stream the peer opened; it is
// AcceptStream(context.Background()), so *Session is a net.Listener.
func (s *Session) Accept() (net.Conn, error) {
	st, err := s.AcceptStream(context.Background())
	if err != nil {
		return nil, err
	}
	return st, nil
}

// unlinkBacklog removes st from the accept backlog. s.mu must be held.
func (s *Session) unlinkBacklog(st *Stream) {
	if st.acceptPrev != nil {
		st.acceptPrev.acceptNext = st.acceptNext
	} else {
		s.backlogHead = st.acceptNext
	}
	if st.acceptNext != nil {
		st.acceptNext.acceptPrev = st.acceptPrev
	} else {
		s.backlogTail = st.acceptPrev
	}
	st.acceptPrev, st.acceptNext = nil, nil
	s.backlogLen--
	notify(s.backlogCh)
}

// forget removes a finished stream from the session's table.
func (s *Session) forget(st *Stream) {
	st.mu.Lock()
	backlogged := st.backlogged
	st.backlogged = false
	wasUnacked := !st.acked
	st.acked = true
	slot, lingering := st.slot, st.lingering
	st.slot, st.lingering = false, false
	st.releaseMemory()
	pendingFIN := st.finQueued && !st.finSent && (st.err == nil || !s.caps.Reset)
	if !st.needRST && !pendingFIN {
		st.needSYN, st.needACK, st.needUpdate = false, false, false
		st.gone.Store(true)
	}
	st.mu.Unlock()
	// A forgotten stream's calls return at once (data, EOF or its error),
	// so its deadline timers need not stay armed.
	st.rdl.stop()
	st.wdl.stop()
	s.mu.Lock()
	if s.streams[st.id] == st {
		delete(s.streams, st.id)
		if !st.local {
			// Counted until its FIN is written: until then it holds
			// memory a peer that does not read could pile up.
			s.numIncoming--
		}
		if len(s.streams) == 0 {
			notify(s.idleCh)
		}
	}
	if backlogged {
		s.unlinkBacklog(st)
	}
	if slot {
		s.numIncoming--
	}
	if lingering {
		s.lingering--
		notify(s.lingerCh)
	}
	if wasUnacked {
		s.unacked--
	}
	s.mu.Unlock()
	if wasUnacked {
		notify(s.unackedCh)
	}
}

// GoAway tells the peer to open no more streams; streams already open
// finish normally, and streams the peer opens later are refused. GoAway
// goes out at most once per session: the final Close does not repeat it.
// libp2p's go-yamux closes its whole session, and every stream in it, when
// it receives GoAway, even with code 0; hashicorp/yamux and muxado keep
// serving the open streams. To end a session gracefully with any peer,
// use Shutdown, which sends yamux's GoAway only at the very end. smux has
// no GoAway frame: there it returns an error wrapping
// errors.ErrUnsupported, and the peer learns only from the refusals.
func (s *Session) GoAway() error {
	s.mu.Lock()
	if s.IsClosed() {
		s.mu.Unlock()
		return s.closedErr()
	}
	s.localGoAway = true
	last := s.lastPeerID
	s.mu.Unlock()
	if !s.isDetected() {
		return nil // streams the client opens will be refused
	}
	if !s.caps.GoAway {
		return fmt.Errorf("polymux: GoAway on %v: %w (streams the peer opens from now on are refused)", s.proto, errors.ErrUnsupported)
	}
	s.w.queueGoAway(wire.CodeNone, last)
	return nil
}

// Shutdown ends the session gracefully, as http.Server.Shutdown ends a
// server. It stops accepting at once, as the listener view's Close does:
// the streams waiting for Accept, and every stream the peer opens from
// now on, are refused in a way the opener sees (yamux: RST, muxado: GOAWAY
// and then RST, smux: an immediate FIN with the data discarded), and this
// side opens no more streams. The streams already open carry on until
// both sides have closed them (or reset them), or ctx is done. Then it
// closes the session as Close does, delivering what was written, and
// returns nil; if ctx ends first, it closes the same way and returns
// ctx.Err(). yamux's GoAway goes out only at that final close, because
// go-yamux peers drop every open stream when they receive one.
func (s *Session) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutting = true
	s.mu.Unlock()
	s.stopAccepting()
	for s.NumStreams() > 0 {
		select {
		case <-s.idleCh:
		case <-s.closing:
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		}
		if s.IsClosed() {
			break
		}
	}
	return s.Close()
}

// Listener returns a view of the session as a net.Listener whose Close
// only stops accepting, for servers whose graceful shutdown starts by
// closing their listener (http.Server.Shutdown, grpc.Server.GracefulStop):
//
//	go hs.Serve(sess.Listener())
//	...
//	hs.Shutdown(ctx) // requests in flight finish over the session
//	sess.Shutdown(ctx)
//
// Its Accept is Session.Accept, and its Addr the session's. Its Close
// stops accepting as Shutdown does: blocked and later Accept calls fail
// with an error matching net.ErrClosed, the streams still waiting for
// Accept and every later open are refused in a way the opener sees (no
// GoAway on yamux, which would make a go-yamux peer drop its open
// streams), and the open streams carry on. The session stays up until the
// application ends it with Shutdown or Close. Every call returns the same
// view, and closing it twice is harmless. The session itself remains a
// net.Listener whose Close ends everything.
func (s *Session) Listener() net.Listener { return &s.view }

// sessionListener is the view Listener returns.
type sessionListener struct{ s *Session }

func (l *sessionListener) Accept() (net.Conn, error) { return l.s.Accept() }
func (l *sessionListener) Addr() net.Addr            { return l.s.Addr() }

func (l *sessionListener) Close() error {
	l.s.stopAccepting()
	return nil
}

// stopAccepting makes Accept fail and refuses, so that their openers see
// it, the streams waiting in the backlog and every open from now on. Where
// the peer keeps its open streams after a GoAway (muxado), GoAway tells it
// first.
func (s *Session) stopAccepting() {
	s.mu.Lock()
	if s.acceptClosed {
		s.mu.Unlock()
		return
	}
	s.acceptClosed = true
	s.localGoAway = true
	close(s.acceptDone)
	var waiting []*Stream
	for st := s.backlogHead; st != nil; st = st.acceptNext {
		waiting = append(waiting, st)
	}
	last := s.lastPeerID
	s.mu.Unlock()
	if s.isDetected() && s.caps.GoAwayKeepsStreams {
		s.w.queueGoAway(wire.CodeNone, last)
	}
	for _, st := range waiting {
		st.mu.Lock()
		if st.err != nil {
			st.mu.Unlock()
			continue
		}
		st.resetLocked(wire.CodeRefused, ErrStreamRefused)
		st.removed = true
		st.mu.Unlock()
		s.nRefused.Add(1)
		s.forget(st)
	}
}

// Ping sends a ping and returns the round trip once the peer answers.
// Concurrent calls share one ping. It returns errors.ErrUnsupported where
// the protocol has no ping reply.
func (s *Session) Ping(ctx context.Context) (time.Duration, error) {
	if err := s.waitDetected(ctx); err != nil {
		return 0, err
	}
	if !s.caps.PingReply {
		return 0, fmt.Errorf("polymux: ping on %v: %w", s.proto, errors.ErrUnsupported)
	}
	if s.IsClosed() {
		return 0, s.closedErr()
	}
	p := s.startPing()
	select {
	case <-p.done:
		return p.rtt, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-s.closing:
		return 0, s.closedErr()
	}
}

// startPing returns the ping in flight, sending one if there is none.
func (s *Session) startPing() *pendingPing {
	s.pingMu.Lock()
	defer s.pingMu.Unlock()
	if s.ping == nil {
		s.pingSeq++
		s.ping = &pendingPing{id: s.pingSeq, start: s.now(), done: make(chan struct{})}
		s.w.queuePing(s.ping.id)
	}
	return s.ping
}

// pong completes the ping in flight if the reply matches it.
func (s *Session) pong(id uint32) {
	s.pingMu.Lock()
	defer s.pingMu.Unlock()
	p := s.ping
	if p == nil || p.id != id {
		return
	}
	p.rtt = time.Duration(s.now() - p.start)
	s.rtt.Store(int64(p.rtt))
	s.observeRTT(p.rtt)
	close(p.done)
	s.ping = nil
}

// Done returns a channel closed once the session has ended and all its
// goroutines have exited.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err returns why the session ended, or nil while it is open.
func (s *Session) Err() error {
	if p := s.err.Load(); p != nil {
		return *p
	}
	return nil
}

// IsClosed reports whether the session has started to end.
func (s *Session) IsClosed() bool { return isClosed(s.closing) }

// closedErr is the error calls return once the session ended.
func (s *Session) closedErr() error {
	if err := s.Err(); err != nil {
		return err
	}
	return ErrSessionClosed
}

// NumStreams returns the number of open streams.
func (s *Session) NumStreams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

// Protocol returns the wire protocol in use: Auto while a server is still
// detecting it.
func (s *Session) Protocol() Protocol {
	if !s.isDetected() {
		return Auto
	}
	return s.proto
}

// Addr returns the local address of the connection (net.Listener).
func (s *Session) Addr() net.Addr { return s.conn.LocalAddr() }

// LocalAddr returns the local address of the connection.
func (s *Session) LocalAddr() net.Addr { return s.conn.LocalAddr() }

// RemoteAddr returns the remote address of the connection.
func (s *Session) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

// Stats returns a snapshot of the session's counters.
func (s *Session) Stats() Stats {
	return Stats{
		Protocol:        s.Protocol(),
		ActiveStreams:   s.NumStreams(),
		StreamsOpened:   s.nOpened.Load(),
		StreamsAccepted: s.nAccepted.Load(),
		StreamsRefused:  s.nRefused.Load(),
		BytesSent:       s.nBytesSent.Load(),
		BytesReceived:   s.nBytesRecv.Load(),
		FramesSent:      s.nFramesSent.Load(),
		FramesReceived:  s.nFramesRecv.Load(),
		BufferedBytes:   s.nBuffered.Load(),
		BudgetUsed:      s.budget.Used(),
		RTT:             time.Duration(s.rtt.Load()),
	}
}

// Stats are a session's counters.
type Stats struct {
	Protocol        Protocol
	ActiveStreams   int
	StreamsOpened   uint64        // by this side
	StreamsAccepted uint64        // opened by the peer
	StreamsRefused  uint64        // peer-opened streams refused (backlog full, limit reached, going away)
	BytesSent       uint64        // stream payload bytes
	BytesReceived   uint64        // stream payload bytes
	FramesSent      uint64        // frames of every kind
	FramesReceived  uint64        // frames of every kind
	BufferedBytes   int64         // received data not yet read by the application
	BudgetUsed      int64         // MaxSessionBuffer in use: buffered data plus receive-window growth reserved for it
	RTT             time.Duration // last measured round trip; 0 when unknown
}

// Close ends the session. Every blocked call wakes with an error at once,
// and new calls fail. Then, within Config.CloseLinger, what was written
// is delivered: every byte a Write reported on any stream, and the FINs
// of the streams closed with Close or CloseWrite. The streams the
// application never closed are reset after their data (smux, which has no
// reset, leaves them to the end of the connection), GoAway follows where
// the protocol has it, and the connection is half-closed and kept open,
// still reading, until the peer has received it all or the linger ends.
// Data that arrives meanwhile is discarded. Close returns once the
// connection is closed and every goroutine of the session has exited; it
// never blocks longer than the linger, even against a peer that does not
// read. Bytes the peer has not received when the linger ends are lost, as
// is everything queued with a negative CloseLinger.
func (s *Session) Close() error {
	s.end(ErrSessionClosed, wire.CodeNone, true)
	<-s.done
	return nil
}

// CloseWithError is Close with an error code for the peer: what was
// written is delivered as Close delivers it, then the final GoAway
// carries code (where go-yamux v5 puts it on yamux; muxado's GOAWAY
// code), and the peer's calls fail with a *SessionError holding it
// (Remote). The streams left open are not reset first: the code tells
// the peer why they end. This side's calls fail with a *SessionError too.
// smux has no codes: there it closes as Close does and returns nil.
func (s *Session) CloseWithError(code uint32) error {
	var err error = ErrSessionClosed
	if s.isDetected() && s.caps.GoAway {
		err = &SessionError{Code: code}
	}
	s.end(err, wire.Code(code), true)
	<-s.done
	return nil
}

// shutdown ends the session abruptly with err: nothing more is delivered
// but GoAway(code), briefly, where the protocol has it. It does not wait.
func (s *Session) shutdown(err error, code wire.Code) { s.end(err, code, false) }

// end starts the end of the session with err. A graceful end delivers
// what was written first (see Close); with the linger negative, or not
// graceful, only GoAway(code) goes out. It does not wait.
func (s *Session) end(err error, code wire.Code, graceful bool) {
	s.closeOnce.Do(func() {
		if !errors.Is(err, ErrSessionClosed) {
			err = fmt.Errorf("%w: %w", ErrSessionClosed, err)
		}
		s.err.Store(&err)
		now := time.Now()
		s.goAwayCode = code
		switch {
		case graceful && s.cfg.CloseLinger < 0:
			s.lingerEnd = now // nothing more is written
		case graceful:
			s.graceful = true
			s.lingerEnd = now.Add(s.cfg.CloseLinger)
			s.discard = true
		default:
			s.lingerEnd = now.Add(goAwayWait)
		}
		close(s.closing)
		// Bound a write already stuck on a peer that does not read, and
		// whatever deadlines cannot bound, such as a write waiting for a
		// TLS handshake the read loop is stuck in.
		s.w.limitDeadline(s.lingerEnd)
		s.watchdog = time.AfterFunc(time.Until(s.lingerEnd)+goAwayWait, func() { s.conn.Close() })
		if code == wire.CodeNone {
			s.log.Debug("polymux: session closing", "protocol", s.Protocol(), "reason", err)
		} else {
			s.log.Warn("polymux: session closing", "protocol", s.Protocol(), "remote", s.conn.RemoteAddr(), "reason", err)
		}
	})
}

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
		f, err := s.codec.ReadFrame(s.br)
		if err == nil {
			s.lastRecv.Store(s.now())
			s.nFramesRecv.Add(1)
			if s.IsClosed() && s.discard {
				err = s.skip(f)
			} else {
				err = s.handle(f)
			}
		}
		if err != nil {
			s.readFailed(err)
			return
		}
	}
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

// finish runs when the read loop ends: once the writer has flushed and
// closed the connection, every stream learns the session's error and Done
// is closed.
func (s *Session) finish() {
	close(s.readDone)
	s.shutdown(ErrSessionClosed, wire.CodeNone)
	<-s.writerDone
	s.watchdog.Stop()
	s.conn.Close()
	err := s.closedErr()
	s.mu.Lock()
	streams := make([]*Stream, 0, len(s.streams))
	for _, st := range s.streams {
		streams = append(streams, st)
	}
	clear(s.streams)
	s.backlogHead, s.backlogTail, s.backlogLen = nil, nil, 0
	s.mu.Unlock()
	for _, st := range streams {
		st.mu.Lock()
		st.sessionEnded(err)
		st.mu.Unlock()
		st.rdl.stop()
		st.wdl.stop()
	}
	close(s.done)
}

// protocolErr is the error that closes the session when the peer breaks a
// rule that its frames decoded fine but the engine checks.
func protocolErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

// handle dispatches one received frame. An error closes the session.
func (s *Session) handle(f wire.Frame) error {
	switch f.Type {
	case wire.TypeData, wire.TypeWindow:
		return s.handleStream(f)
	case wire.TypePing:
		if f.Flags&wire.FlagSYN != 0 {
			s.w.queuePong(f.Value)
		} else {
			s.pong(f.Value)
		}
	case wire.TypeGoAway:
		return s.handleGoAway(f)
	}
	return nil
}

// handleGoAway records that the peer opens no more streams and accepts
// none of ours. A non-zero code means the peer is ending the session.
func (s *Session) handleGoAway(f wire.Frame) error {
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
		st.mu.Lock()
		st.fail(ErrStreamRefused)
		st.mu.Unlock()
		s.forget(st)
	}
	if f.Value != uint32(wire.CodeNone) {
		// A code means the peer is ending the session.
		err := error(&SessionError{Code: f.Value, Remote: true})
		if f.Value == uint32(wire.CodeProtocol) {
			// Both yamux's and muxado's GoAway define code 1.
			err = fmt.Errorf("%w: peer reported a protocol error: %w", ErrProtocol, err)
		}
		s.shutdown(err, wire.CodeNone)
	}
	return nil
}

// handleStream applies a stream frame: open, acknowledgement, credit,
// data, half-close and reset, in that order.
func (s *Session) handleStream(f wire.Frame) error {
	var st *Stream
	if f.Flags&wire.FlagSYN != 0 {
		var err error
		if st, err = s.incoming(f.Stream); err != nil {
			return err
		}
		if st == nil { // refused, and already answered
			return s.skip(f)
		}
	} else {
		s.mu.Lock()
		st = s.streams[f.Stream]
		s.mu.Unlock()
	}
	if st == nil {
		return s.unknownStream(f)
	}
	st.mu.Lock()
	if f.Flags&wire.FlagACK != 0 && !st.acked {
		st.acked = true
		if st.openTimer != nil {
			st.openTimer.Stop()
		}
		s.mu.Lock()
		s.unacked--
		s.mu.Unlock()
		notify(s.unackedCh)
	}
	if f.Flags&wire.FlagRST != 0 {
		st.fail(s.peerResetErr(st, f.Value))
		st.removed = true
		st.mu.Unlock()
		s.forget(st)
		return s.skip(f)
	}
	if f.Type == wire.TypeWindow {
		if err := st.credit(f); err != nil {
			st.mu.Unlock()
			return err
		}
	}
	st.mu.Unlock()
	if f.Type == wire.TypeData && f.Length > 0 {
		if err := s.receive(st, f.Length); err != nil {
			return err
		}
	}
	if f.Flags&wire.FlagFIN != 0 {
		st.mu.Lock()
		st.finRecv = true
		st.freeSlot()
		s.release(int(st.rwin.Finish()))
		if st.closed && st.closeTimer != nil {
			st.closeTimer.Stop()
		}
		notify(st.readCh)
		forget := st.doneLocked()
		st.mu.Unlock()
		if forget {
			s.forget(st)
		}
	}
	return nil
}

// credit applies a window update to st's send credit. st.mu must be held.
func (st *Stream) credit(f wire.Frame) error {
	var err error
	switch st.sess.caps.Window {
	case wire.WindowDelta:
		err = st.swin.Grow(f.Value)
	case wire.WindowAbsolute:
		if f.Flags != 0 {
			return nil // SYN and FIN carry no window: only a plain update does
		}
		err = st.swin.Update(f.Value, f.Window)
	default:
		return nil
	}
	if err != nil {
		return protocolErr("stream %d: %v", st.id, err)
	}
	notify(st.writeCh)
	return nil
}

// resetCode is the code an RST the engine makes for reason carries: the
// reason's own where the protocol defines codes (muxado), and 0 where the
// codes belong to the application (yamux), as go-yamux's own resets do.
func (s *Session) resetCode(reason wire.Code) uint32 {
	if s.caps.ReasonCodes {
		return uint32(reason)
	}
	return 0
}

// peerResetErr is the error of st once the peer reset it with code: a
// refusal if st was never acknowledged (yamux) or the code says so
// (muxado), a plain reset otherwise; either way errors.As finds the code.
func (s *Session) peerResetErr(st *Stream, code uint32) error {
	reset := &StreamError{Code: code, Remote: true}
	refused := st.local && !st.acked
	if s.caps.ReasonCodes {
		refused = refused || st.local && (wire.Code(code) == wire.CodeRefused || wire.Code(code) == wire.CodeAcceptFull)
	}
	if refused {
		return &refusedError{reset}
	}
	return reset
}

// skip discards the payload of a data frame nobody will read.
func (s *Session) skip(f wire.Frame) error {
	if f.Type != wire.TypeData || f.Length == 0 {
		return nil
	}
	_, err := s.br.Discard(int(f.Length))
	return payloadErr(err)
}

// unknownStream handles a frame for a stream that is not open: its data
// is dropped, and on protocols that expect it the peer is told with RST.
func (s *Session) unknownStream(f wire.Frame) error {
	if f.Type == wire.TypeData && f.Length > 0 && s.caps.RejectUnknownData && f.Flags&wire.FlagRST == 0 {
		s.w.queueRefusal(f.Stream, s.resetCode(wire.CodeStreamClosed))
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
	mm, err := s.reserveStream()
	if err != nil {
		s.refuse(id, wire.CodeRefused, "the memory manager refused it: "+err.Error())
		return nil, nil
	}
	s.mu.Lock()
	if _, ok := s.streams[id]; ok {
		s.mu.Unlock()
		s.releaseStream(mm)
		return nil, protocolErr("peer reopened live stream %d", id)
	}
	s.lastPeerID = max(s.lastPeerID, id)
	for {
		wait := s.awaitAccept
		switch {
		case s.mustPause():
		case s.lingering >= s.cfg.MaxIncomingStreams && !s.IsClosed():
			// As many streams closed both ways wait for their FINs to
			// be written: wait for the writer, as for replies.
			wait = s.awaitLinger
		default:
			wait = nil
		}
		if wait == nil {
			break
		}
		s.mu.Unlock()
		if !wait() {
			s.releaseStream(mm)
			return nil, nil // the session is ending: nothing is owed
		}
		s.mu.Lock()
	}
	if code := s.refusal(); code != wire.CodeNone {
		s.mu.Unlock()
		s.releaseStream(mm)
		s.refuse(id, code, "past the limits")
		return nil, nil
	}
	st := newStream(s, id, false)
	st.mm, st.mmHeld = mm, s.mmInitial(mm)
	st.backlogged = true
	st.slot = true
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
	if !s.caps.AckOpens && s.caps.Window != wire.WindowNone && st.rwin.UpdateDue(true) {
		// A window larger than the protocol's default is granted at once
		// (with yamux, the ACK carries it).
		st.mu.Lock()
		st.needUpdate = true
		s.w.queueCtrl(st)
		st.mu.Unlock()
	}
	s.nAccepted.Add(1)
	notify(s.acceptCh)
	return st, nil
}

// refuse answers a peer's open of id with a refusal it sees (RST, or FIN
// without RST) and counts it.
func (s *Session) refuse(id uint32, reason wire.Code, why string) {
	s.nRefused.Add(1)
	s.w.queueRefusal(id, s.resetCode(reason))
	s.log.Debug("polymux: refused stream", "stream", id, "code", reason, "why", why)
}

// memory priorities of Config.MemoryManager, as go-yamux uses them.
const (
	openPriority   = 255 // a stream's initial window: its open fails without it
	growthPriority = 128 // window growth: denied, the window stays as it is
)

// reserveStream returns a new stream's memory manager with the initial
// window reserved from it, or nil without Config.MemoryManager.
func (s *Session) reserveStream() (MemoryManager, error) {
	if s.cfg.MemoryManager == nil {
		return nil, nil
	}
	mm, err := s.cfg.MemoryManager()
	if err != nil {
		return nil, err
	}
	if err := mm.ReserveMemory(int(s.cfg.InitialStreamWindow), openPriority); err != nil {
		mm.Done()
		return nil, err
	}
	return mm, nil
}

// releaseStream gives back what reserveStream took, for a stream that is
// not made after all.
func (s *Session) releaseStream(mm MemoryManager) {
	if mm != nil {
		mm.ReleaseMemory(int(s.cfg.InitialStreamWindow))
		mm.Done()
	}
}

// mmInitial is what reserveStream reserved from mm.
func (s *Session) mmInitial(mm MemoryManager) int {
	if mm == nil {
		return 0
	}
	return int(s.cfg.InitialStreamWindow)
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
	s.w.holdDeadline(true)
	defer func() {
		s.lastRecv.Store(s.now())
		s.paused.Store(false)
		s.w.holdDeadline(false)
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

// receive reads n payload bytes of a data frame into st's receive buffer,
// straight from the connection. Data the application no longer wants is
// dropped; a window overrun breaks the protocol (or, where the protocol
// says so, resets the stream); data past the session budget resets the
// stream, or, where the protocol cannot reset, waits for the application
// to read.
func (s *Session) receive(st *Stream, n uint32) error {
	s.nBytesRecv.Add(uint64(n))
	windowed := s.caps.Window != wire.WindowNone
	st.mu.Lock()
	for {
		if st.err != nil || st.finRecv {
			st.mu.Unlock()
			return s.skip(wire.Frame{Type: wire.TypeData, Length: n})
		}
		if windowed && !st.rwin.Fits(n) {
			if !s.caps.OverrunResets {
				st.mu.Unlock()
				return protocolErr("stream %d: %d bytes beyond the receive window", st.id, n)
			}
			return s.resetOnReceive(st, n, wire.CodeFlowControl, ErrStreamReset)
		}
		if st.updAt != 0 {
			s.observeRTT(time.Duration(s.now() - st.updAt))
			st.updAt = 0
		}
		if st.readShut {
			if st.closed && s.caps.Reset {
				return s.resetOnReceive(st, n, wire.CodeStreamClosed, ErrStreamClosed)
			}
			// Dropped on arrival: never charged, but the peer gets its
			// window back.
			st.rwin.Receive(n)
			st.rwin.Read(n)
			if windowed {
				st.maybeUpdate(false)
			} else {
				st.rwin.Update(true)
			}
			st.mu.Unlock()
			return s.skip(wire.Frame{Type: wire.TypeData, Length: n})
		}
		if s.budget.TryAcquire(int64(st.rwin.Charge(n))) {
			break
		}
		if s.caps.Reset {
			s.log.Warn("polymux: session buffer full, resetting stream", "stream", st.id, "buffered", s.nBuffered.Load())
			return s.resetOnReceive(st, n, wire.CodeFlowControl, ErrStreamReset)
		}
		// Without RST (smux) the only bound is to stop reading the
		// connection until the application reads: the protocol's own limit.
		st.mu.Unlock()
		select {
		case <-s.budgetCh:
		case <-s.closing:
			return s.skip(wire.Frame{Type: wire.TypeData, Length: n})
		}
		st.mu.Lock()
	}
	st.rwin.Receive(n) // fits: checked above
	remaining := int(n)
	for remaining > 0 {
		dst := st.recv.space(min(remaining, maxChunk))
		st.filling = true
		st.mu.Unlock()
		k, err := io.ReadFull(s.br, dst)
		st.mu.Lock()
		st.filling = false
		st.recv.commit(k)
		s.nBuffered.Add(int64(k))
		remaining -= k
		if err != nil {
			st.mu.Unlock()
			return payloadErr(err)
		}
		if st.err != nil || st.readShut {
			// Reset or CloseRead while the payload was read: drop it all.
			dropped := st.recv.len()
			st.recv.discard(dropped)
			if st.err != nil {
				s.nBuffered.Add(-int64(dropped)) // fail released its budget
			} else {
				st.consumed(dropped)
				st.forgo(remaining)
			}
			st.mu.Unlock()
			return s.skip(wire.Frame{Type: wire.TypeData, Length: uint32(remaining)})
		}
		notify(st.readCh)
	}
	st.mu.Unlock()
	return nil
}

// observeRTT records a round-trip sample. Window tuning uses the least
// seen: queueing behind bulk data only ever adds to a sample.
func (s *Session) observeRTT(d time.Duration) {
	if d <= 0 {
		return
	}
	for {
		old := s.minRTT.Load()
		if old != 0 && old <= int64(d) {
			return
		}
		if s.minRTT.CompareAndSwap(old, int64(d)) {
			return
		}
	}
}

// tuningRTT is the least round trip seen, 0 while none is known.
func (s *Session) tuningRTT() time.Duration { return time.Duration(s.minRTT.Load()) }

// release returns n buffered bytes to the session budget.
func (s *Session) release(n int) {
	if n > 0 {
		s.budget.Release(int64(n))
		notify(s.budgetCh)
	}
}

// resetOnReceive resets st because of a data frame of n bytes, whose
// payload is then skipped. st.mu must be held; it is released.
func (s *Session) resetOnReceive(st *Stream, n uint32, code wire.Code, err error) error {
	st.resetLocked(code, err)
	st.removed = true
	st.mu.Unlock()
	s.forget(st)
	return s.skip(wire.Frame{Type: wire.TypeData, Length: n})
}
