package polymux

// Lock order. A goroutine may take, in this order and never the other
// way: a Stream's mu, then Session.mu, then the writer's scheduler.mu.
// Session.pingMu, the timeouts' mu, the deadlines' mu and the writer's
// deadline mutex (encoder.dlMu) are leaves: nothing is taken while one is
// held. No lock is held across a blocking call on the connection.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/polymux/polymux/internal/flow"
	"github.com/polymux/polymux/internal/wire"
)

// Session is one multiplexed connection. It runs a read loop, a writer
// goroutine only while there is something to write, and none per stream.
// It implements net.Listener, so http.Serve(sess, handler) serves the
// streams the peer opens; its Close ends the whole session, so for a
// graceful http.Server.Shutdown serve Listener() instead. All methods are
// safe for concurrent use.
type Session struct {
	// Set when the session starts, or by detection before detected is
	// closed, and read-only after.
	conn     net.Conn
	cfg      Config
	proto    Protocol
	codec    wire.Codec
	caps     *wire.Caps
	window   flow.Mode // the protocol's per-stream flow control
	client   bool
	log      *slog.Logger
	budget   *flow.Budget
	frameMax int       // largest DATA payload sent
	epoch    time.Time // origin of the monotonic clock in nanoseconds
	// detected is closed once proto, codec, caps, window, frameMax and
	// nextID are set: at once, or after a server in Auto mode has seen the
	// client's first bytes. Those fields are read only after it is closed.
	detected chan struct{}

	rd    frameReader // owned by the read loop
	ready func() int  // bytes rd can return without blocking (see readyProbe); nil where unknown
	w     writer
	ka    keepalive
	// The fixed-duration stream timeouts, one timer each for the session.
	openTimeouts, closeTimeouts timeouts
	waits                       waitChans // for blocked stream calls
	view                        sessionListener

	// One-slot signals, each waited on by one kind of caller.
	budgetCh  chan struct{} // buffered bytes were released (the smux read loop)
	backlogCh chan struct{} // the accept backlog shrank (the paused smux read loop)
	lingerCh  chan struct{} // a lingering stream was forgotten (the read loop)
	idleCh    chan struct{} // the stream table emptied (Shutdown)
	acceptCh  chan struct{} // the backlog gained a stream (AcceptStream)
	unackedCh chan struct{} // unacked dropped (OpenStream)
	// paused is set while the read loop waits, by this side's choice, for
	// the application to accept (smux): keepalive and WriteTimeout do not
	// count that wait against the peer.
	paused atomic.Bool

	mu           sync.Mutex // guards the fields from here to acceptDone
	streams      map[uint32]*Stream
	nextID       uint32
	exhausted    bool
	backlogHead  *Stream // accept backlog, oldest first; with each Stream's backlog links
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
	acceptDone   chan struct{} // closed with acceptClosed

	pingMu  sync.Mutex // guards ping and pingSeq
	ping    *pendingPing
	pingSeq uint32

	// The end of the session. graceful, discard, goAwayCode, lingerEnd
	// and watchdog are set once, before closing is closed, and read only
	// after it.
	closing    chan struct{} // closed when the session starts to end
	closeOnce  sync.Once
	graceful   bool                  // deliver what was written before closing the connection
	discard    bool                  // the application ended it: frames that still arrive are read and dropped
	goAwayCode wire.Code             // the GoAway the end sends
	lingerEnd  time.Time             // when the end stops waiting for the peer
	watchdog   *time.Timer           // closes the connection should the end outlast lingerEnd
	err        atomic.Pointer[error] // why the session ended
	readDone   chan struct{}         // closed when the read loop has stopped reading
	writerDone chan struct{}         // closed when the writer has ended the connection
	done       chan struct{}         // closed when every goroutine has exited

	lastRecv    atomic.Int64 // nanoseconds since epoch of the last frame received
	rtt         atomic.Int64 // last measured ping round trip
	minRTT      atomic.Int64 // least round trip seen, for window tuning
	nBuffered   atomic.Int64 // received bytes not yet read
	peakBuf     atomic.Int64 // nBuffered's high-water mark; only the read loop stores it
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
func Client(conn net.Conn, cfg *Config) (*Session, error) {
	return startSession(conn, conn, cfg, true)
}

// Server starts the server side of a session on conn. With Protocol Auto
// it detects the client's protocol from its first bytes (see
// Config.DetectTimeout); Protocol reports Auto until then. The session owns
// conn from now on.
func Server(conn net.Conn, cfg *Config) (*Session, error) {
	return startSession(conn, conn, cfg, false)
}

// startSession starts a session on conn that reads from rd (conn itself,
// or a reader that first replays bytes a Listener already read).
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
		epoch:      time.Now(),
		detected:   make(chan struct{}),
		budgetCh:   make(chan struct{}, 1),
		backlogCh:  make(chan struct{}, 1),
		lingerCh:   make(chan struct{}, 1),
		idleCh:     make(chan struct{}, 1),
		acceptCh:   make(chan struct{}, 1),
		unackedCh:  make(chan struct{}, 1),
		streams:    make(map[uint32]*Stream),
		acceptDone: make(chan struct{}),
		closing:    make(chan struct{}),
		readDone:   make(chan struct{}),
		writerDone: make(chan struct{}),
		done:       make(chan struct{}),
		waits:      newWaitChans(),
	}
	s.rd.conn = rd
	s.ready = readyProbe(conn, rd)
	s.view.s = s
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.openTimeouts = timeouts{d: c.StreamOpenTimeout, now: s.now, fire: s.openTimedOut}
	s.closeTimeouts = timeouts{d: c.StreamCloseTimeout, now: s.now, fire: s.closeTimedOut}
	s.w.init(s)
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
	go s.readLoop()
	return s, nil
}

// setCodec fixes the session's protocol, closes detected and starts the
// keepalive.
func (s *Session) setCodec(proto Protocol, codec wire.Codec) {
	s.proto = proto
	s.codec = codec
	s.caps = codec.Caps()
	s.window = windowMode(s.caps.Window)
	s.frameMax = min(s.cfg.MaxFrameSize, int(min(s.caps.MaxPayload, maxFrameSizeLimit)))
	if s.client {
		s.nextID = s.caps.FirstID[0]
	} else {
		s.nextID = s.caps.FirstID[1]
	}
	s.w.detected()
	close(s.detected)
	s.ka.start(s)
}

// windowMode is the flow-control mode of a wire window mode.
func windowMode(m wire.WindowMode) flow.Mode {
	switch m {
	case wire.WindowNone:
		return flow.ModeNone
	case wire.WindowAbsolute:
		return flow.ModeAbsolute
	}
	return flow.ModeDelta
}

// isDetected reports whether the protocol is known.
func (s *Session) isDetected() bool { return isClosed(s.detected) }

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
	mem, err := s.reserveStream()
	if err != nil {
		return nil, fmt.Errorf("polymux: the memory manager refused a new stream: %w", err)
	}
	st, err := s.open(ctx, mem)
	if err != nil {
		s.releaseStream(mem)
	}
	return st, err
}

// open opens a stream whose memory mem accounts (nil without a manager).
func (s *Session) open(ctx context.Context, mem *streamMemory) (*Stream, error) {
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
	st := newStream(s, id, true, mem)
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
	if s.caps.AckOpens && s.cfg.StreamOpenTimeout > 0 {
		s.openTimeouts.add(id, s.now())
	}
	st.opened()
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

// acknowledged accounts the peer's ACK of one of this side's opens.
func (s *Session) acknowledged() {
	s.mu.Lock()
	s.unacked--
	s.mu.Unlock()
	notify(s.unackedCh)
}

// openTimedOut is the open timeout of stream id, opened at at.
func (s *Session) openTimedOut(id uint32, _ int64) {
	if st := s.lookup(id); st != nil && st.local {
		st.openTimedOut()
	}
}

// closeTimedOut is the close timeout of stream id, closed at at.
func (s *Session) closeTimedOut(id uint32, at int64) {
	if st := s.lookup(id); st != nil {
		st.closeTimedOut(at)
	}
}

// lookup returns the live stream with id, or nil.
func (s *Session) lookup(id uint32) *Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams[id]
}

// memory priorities of Config.MemoryManager, as go-yamux uses them.
const (
	openPriority   = 255 // a stream's initial window: its open fails without it
	growthPriority = 128 // window growth: denied, the window stays as it is
)

// reserveStream returns what a new stream reserved from its memory
// manager (its initial window), or nil without Config.MemoryManager.
func (s *Session) reserveStream() (*streamMemory, error) {
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
	return &streamMemory{mm: mm, held: int(s.cfg.InitialStreamWindow)}, nil
}

// releaseStream gives back what reserveStream took, for a stream that is
// not made after all.
func (s *Session) releaseStream(mem *streamMemory) {
	if mem != nil {
		mem.mm.ReleaseMemory(mem.held)
		mem.mm.Done()
	}
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
			st.accepted()
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
	if !st.backlogged {
		return
	}
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
	st.acceptPrev, st.acceptNext, st.backlogged = nil, nil, false
	s.backlogLen--
	notify(s.backlogCh)
}

// forget removes a finished stream from the session: from its table, its
// backlog and its counts; the writer drops it once it owes nothing more.
func (s *Session) forget(st *Stream) {
	left, ok := st.leave()
	if !ok {
		return
	}
	s.mu.Lock()
	if s.streams[st.id] == st {
		delete(s.streams, st.id)
		if len(s.streams) == 0 {
			notify(s.idleCh)
		}
	}
	s.unlinkBacklog(st)
	switch left.slot {
	case slotOpen:
		s.numIncoming--
	case slotLingering:
		s.lingering--
		notify(s.lingerCh)
	}
	if left.unacked {
		s.unacked--
	}
	s.mu.Unlock()
	if left.unacked {
		notify(s.unackedCh)
	}
	if !left.owes {
		s.w.sched.remove(st)
	}
}

// GoAway tells the peer to open no more streams; streams already open
// finish normally, and streams the peer opens later are refused. GoAway
// goes out at most once per session: the final Close does not repeat it.
// What any stream writes after GoAway returns reaches the peer after the
// GoAway, so a peer that has read a reply sent later knows of it.
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
	s.w.sched.goAway(wire.CodeNone, last)
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
	for s.NumStreams() > 0 && !s.IsClosed() {
		select {
		case <-s.idleCh:
		case <-s.closing:
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
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
		s.w.sched.goAway(wire.CodeNone, last)
	}
	for _, st := range waiting {
		if st.abort(ErrStreamRefused, true, s.resetCode(wire.CodeRefused)) {
			s.nRefused.Add(1)
		}
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
		s.w.sched.ping(s.ping.id)
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

// resetCode is the code an RST the engine makes for reason carries: the
// reason's own where the protocol defines codes (muxado), and 0 where the
// codes belong to the application (yamux), as go-yamux's own resets do.
func (s *Session) resetCode(reason wire.Code) uint32 {
	if s.caps.ReasonCodes {
		return uint32(reason)
	}
	return 0
}

// Done returns a channel closed once the session has ended and all its
// goroutines have exited.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err returns why the session ended, or nil while it is open. One error
// can give way to a better one while the session ends: a write that failed
// because the peer reset the connection is replaced by the peer's GoAway
// and its code, when the read loop still finds one that the peer sent
// before closing. Once Done is closed, Err no longer changes.
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
		BufferedPeak:    s.peakBuf.Load(),
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
	BufferedPeak    int64         // the most BufferedBytes has been, since the session began
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
// still reading, until the peer has it all or the linger ends.
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
		// Bound whatever deadlines cannot bound, such as a write waiting
		// for a TLS handshake the read loop is stuck in.
		s.watchdog = time.AfterFunc(time.Until(s.lingerEnd)+goAwayWait, func() { s.conn.Close() })
		close(s.closing)
		// Bound a write already stuck on a peer that does not read.
		s.w.enc.limitDeadline(s.lingerEnd)
		s.w.ending()
		s.ka.stop()
		s.openTimeouts.stop()
		s.closeTimeouts.stop()
		if code == wire.CodeNone {
			s.log.Debug("polymux: session closing", "protocol", s.Protocol(), "reason", err)
		} else {
			s.log.Warn("polymux: session closing", "protocol", s.Protocol(), "remote", s.conn.RemoteAddr(), "reason", err)
		}
	})
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
	s.rd.release()
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
		st.sessionEnded(err)
	}
	close(s.done)
}

// protocolErr is the error that closes the session when the peer breaks a
// rule that its frames decoded fine but the engine checks.
func protocolErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}
