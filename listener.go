package polymux

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/polymux/polymux/internal/wire"
)

// maxReadySessions bounds the sessions a Listener has started that wait
// for the application's Accept. Each is a whole Session (a 64 KiB read
// buffer, a 64 KiB header arena, two goroutines), so the bound is kept
// small: past it the Listener stops accepting until Accept takes one.
const maxReadySessions = 128

// Listener accepts connections and serves a server session on each.
//
// Before Accept returns its session, a connection is first pending: its
// TLS handshake runs (ListenTLS, or an inner listener that returns
// *tls.Conn), and in Auto mode its protocol is detected from the client's
// first bytes. A pending connection costs its socket, one goroutine
// (about 4 KiB of stack) and about 1 KiB of heap (2 KiB with TLS), not a
// Session. Pending connections are bounded in time by
// Config.DetectTimeout, counted from when the connection is accepted, and
// in number by Config.MaxDetecting: a connection accepted past it closes
// the oldest pending one. So clients that stay silent, or send their
// first bytes slowly, never stop the Listener from accepting, and never
// delay other clients. A connection whose first bytes match no protocol
// is closed and logged.
//
// Then its session starts and waits for Accept. At most 128 sessions wait:
// when that many do, the Listener stops accepting connections until Accept
// takes one, and new clients wait in the kernel's listen backlog. That
// backpressure is the application's choice: an application that keeps
// calling Accept never meets it. A connection that is ready while the
// Listener is paused stays pending (and counted in MaxDetecting) until
// there is room.
//
// In Auto mode a client is served only once it has sent its first bytes,
// so a client that only accepts streams the server opens, and sends
// nothing first, needs a Listener with an explicit Protocol.
type Listener struct {
	inner  net.Listener
	cfg    Config // filled with defaults
	cfgErr error
	log    *slog.Logger

	room     chan struct{} // a token per session started and not yet accepted
	ready    chan *Session // started sessions, in order, for Accept
	done     chan struct{} // closed by Close
	loopDone chan struct{} // closed when the accept loop has ended
	once     sync.Once
	wg       sync.WaitGroup // the goroutines of pending connections
	evicted  atomic.Uint64  // pending connections closed for a newer one

	mu       sync.Mutex // guards the fields below
	oldest   *pendingConn
	newest   *pendingConn
	nPending int
	paused   bool  // the accept loop waits for room among ready sessions
	err      error // why the accept loop ended
}

// pendingConn is a connection whose session has not started, in the
// Listener's list of them, oldest first.
type pendingConn struct {
	conn       net.Conn
	deadline   time.Time // for the TLS handshake and the first bytes
	prev, next *pendingConn
	dropped    bool          // evicted, or closed by Close; guarded by Listener.mu
	wake       chan struct{} // made while it waits for room; closed when dropped
	prefix     [wire.DetectLen]byte
}

// Listen listens on address and returns a Listener serving a session on
// each connection.
func Listen(network, address string, cfg *Config) (*Listener, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ln, err := net.Listen(network, address)
	if err != nil {
		return nil, err
	}
	return NewListener(ln, cfg), nil
}

// ListenTLS is Listen with TLS on every connection. The handshake runs in
// the Listener, bounded by Config.DetectTimeout and Config.MaxDetecting,
// before the session starts.
func ListenTLS(network, address string, tlsConf *tls.Config, cfg *Config) (*Listener, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ln, err := tls.Listen(network, address, tlsConf)
	if err != nil {
		return nil, err
	}
	return NewListener(ln, cfg), nil
}

// NewListener serves a session on each connection inner accepts; a
// *tls.Conn gets its handshake done first, as with ListenTLS. The Listener
// owns inner and closes it on Close. An invalid cfg makes Accept return
// the validation error.
func NewListener(inner net.Listener, cfg *Config) *Listener {
	if cfg == nil {
		cfg = DefaultConfig()
	}
	l := &Listener{
		inner:    inner,
		cfg:      *cfg,
		cfgErr:   cfg.Validate(),
		log:      cfg.Logger,
		room:     make(chan struct{}, maxReadySessions),
		ready:    make(chan *Session, maxReadySessions),
		done:     make(chan struct{}),
		loopDone: make(chan struct{}),
	}
	l.cfg.fill()
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if l.cfgErr != nil {
		close(l.loopDone)
		return l
	}
	go l.acceptLoop()
	return l
}

// acceptLoop accepts connections while there is room among the ready
// sessions. A connection with a handshake to do or a protocol to detect
// becomes pending; any other starts its session at once.
func (l *Listener) acceptLoop() {
	defer close(l.loopDone)
	var backoff time.Duration
	for {
		if !l.waitForRoom() {
			return
		}
		conn, err := l.inner.Accept()
		if err != nil {
			if passingAcceptErr(err) && !l.closed() {
				// Back off as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				l.log.Warn("polymux: accept failed; retrying", "err", err, "in", backoff)
				select {
				case <-time.After(backoff):
				case <-l.done:
					return
				}
				continue
			}
			l.mu.Lock()
			l.err = err
			l.mu.Unlock()
			return
		}
		backoff = 0
		if _, isTLS := conn.(*tls.Conn); isTLS || l.cfg.Protocol == Auto {
			l.admit(conn)
			continue
		}
		select {
		case l.room <- struct{}{}:
		case <-l.done:
			conn.Close()
			return
		}
		l.start(conn, conn, l.cfg.Protocol)
	}
}

// waitForRoom waits until fewer than maxReadySessions sessions wait for
// Accept. It reports false once the Listener is closed.
func (l *Listener) waitForRoom() bool {
	select {
	case l.room <- struct{}{}:
		<-l.room
		return true
	default:
	}
	l.setPaused(true)
	defer l.setPaused(false)
	select {
	case l.room <- struct{}{}:
		<-l.room
		return true
	case <-l.done:
		return false
	}
}

func (l *Listener) setPaused(paused bool) {
	l.mu.Lock()
	l.paused = paused
	pending := l.nPending
	l.mu.Unlock()
	if paused {
		l.log.Debug("polymux: listener paused: sessions wait for Accept", "ready", maxReadySessions, "pending", pending)
	} else {
		l.log.Debug("polymux: listener resumed")
	}
}

// admit makes conn pending, closing the oldest pending connection if
// there are MaxDetecting already, and starts its goroutine.
func (l *Listener) admit(conn net.Conn) {
	p := &pendingConn{conn: conn, deadline: time.Now().Add(l.cfg.DetectTimeout)}
	var victim *pendingConn
	l.mu.Lock()
	if l.nPending >= l.cfg.MaxDetecting {
		victim = l.oldest
		l.drop(victim)
	}
	p.prev = l.newest
	if l.newest != nil {
		l.newest.next = p
	} else {
		l.oldest = p
	}
	l.newest = p
	l.nPending++
	l.wg.Add(1)
	l.mu.Unlock()
	if victim != nil {
		closeConn(victim.conn)
		n := l.evicted.Add(1)
		l.log.Debug("polymux: closed the oldest connection still pending for a new one",
			"remote", victim.conn.RemoteAddr(), "max", l.cfg.MaxDetecting, "evicted", n)
	}
	go l.prepare(p)
}

// drop takes p off the pending list and wakes it if it waits for room.
// l.mu must be held.
func (l *Listener) drop(p *pendingConn) {
	l.unlink(p)
	p.dropped = true
	if p.wake != nil {
		close(p.wake)
	}
}

// unlink takes p off the pending list. l.mu must be held.
func (l *Listener) unlink(p *pendingConn) {
	if p.prev != nil {
		p.prev.next = p.next
	} else {
		l.oldest = p.next
	}
	if p.next != nil {
		p.next.prev = p.prev
	} else {
		l.newest = p.prev
	}
	p.prev, p.next = nil, nil
	l.nPending--
}

// prepare runs on a pending connection's goroutine: the TLS handshake,
// detection, then the wait for room among the ready sessions, and the
// start of its session.
func (l *Listener) prepare(p *pendingConn) {
	defer l.wg.Done()
	rd, proto, err := l.handshakeAndDetect(p)
	if err == nil {
		err = l.awaitRoom(p)
	}
	if err != nil {
		l.mu.Lock()
		dropped := p.dropped
		if !dropped {
			l.unlink(p)
		}
		l.mu.Unlock()
		closeConn(p.conn)
		if !dropped && !errors.Is(err, errDropped) {
			l.log.Warn("polymux: closing connection", "remote", p.conn.RemoteAddr(), "err", err)
		}
		return
	}
	l.start(p.conn, rd, proto)
}

// handshakeAndDetect does the TLS handshake of a pending connection and,
// in Auto mode, detects its protocol, all before its deadline. It returns
// what the session is to read from and the protocol.
func (l *Listener) handshakeAndDetect(p *pendingConn) (io.Reader, Protocol, error) {
	conn := p.conn
	conn.SetDeadline(p.deadline)
	if tc, ok := conn.(*tls.Conn); ok {
		// Handshake, not HandshakeContext: with a cancellable context the
		// handshake would cost a second goroutine.
		if err := tc.Handshake(); err != nil {
			return nil, Auto, fmt.Errorf("%w: TLS handshake: %w", ErrSessionClosed, err)
		}
	}
	var rd io.Reader = conn
	proto := l.cfg.Protocol
	if proto == Auto {
		n, consumed, err := readPrefix(conn, p.prefix[:])
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, Auto, fmt.Errorf("%w: no protocol detected: the client sent %d bytes within %v", ErrSessionClosed, n, l.cfg.DetectTimeout)
		}
		if err != nil {
			return nil, Auto, fmt.Errorf("%w: detecting the protocol: %w", ErrSessionClosed, err)
		}
		codec, err := wire.Detect(p.prefix[:])
		if err != nil {
			return nil, Auto, fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		proto, _ = ParseProtocol(codec.Name())
		if consumed {
			rd = &prefixReader{prefix: p.prefix, conn: conn}
		}
		l.log.Debug("polymux: protocol detected", "protocol", proto, "remote", conn.RemoteAddr())
	}
	conn.SetDeadline(time.Time{})
	return rd, proto, nil
}

// errDropped ends a pending connection that was evicted or whose Listener
// closed.
var errDropped = errors.New("polymux: pending connection dropped")

// awaitRoom takes a place among the ready sessions for p, waiting while
// there is none, and takes p off the pending list. It fails if p is
// dropped first.
func (l *Listener) awaitRoom(p *pendingConn) error {
	select {
	case l.room <- struct{}{}:
	default:
		l.mu.Lock()
		if p.dropped {
			l.mu.Unlock()
			return errDropped
		}
		p.wake = make(chan struct{})
		l.mu.Unlock()
		select {
		case l.room <- struct{}{}:
		case <-p.wake:
			return errDropped
		case <-l.done:
			return errDropped
		}
	}
	l.mu.Lock()
	dropped := p.dropped
	if !dropped {
		l.unlink(p)
	}
	l.mu.Unlock()
	if dropped {
		<-l.room
		return errDropped
	}
	return nil
}

// start starts the session of a connection whose protocol is known and
// queues it for Accept. The caller holds a place in l.room for it.
func (l *Listener) start(conn net.Conn, rd io.Reader, proto Protocol) {
	cfg := l.cfg
	cfg.Protocol = proto
	s, err := startSession(conn, rd, &cfg, false)
	if err != nil { // cannot happen: the config is valid and proto known
		<-l.room
		closeConn(conn)
		l.log.Error("polymux: starting a session", "remote", conn.RemoteAddr(), "err", err)
		return
	}
	l.ready <- s // never blocks: ready has a place per token in room
}

// closeConn closes a connection whose session has not started. A TLS
// connection's socket is closed directly: tls.Conn.Close would first
// write a close_notify alert, which could block.
func closeConn(conn net.Conn) {
	if tc, ok := conn.(*tls.Conn); ok {
		tc.NetConn().Close()
		return
	}
	conn.Close()
}

func (l *Listener) closed() bool { return isClosed(l.done) }

// Accept waits for the next session whose protocol is known, in the order
// they became ready. After Close it returns net.ErrClosed; if the inner
// listener fails, it returns the sessions already ready and then that
// error.
func (l *Listener) Accept() (*Session, error) {
	if l.cfgErr != nil {
		return nil, l.cfgErr
	}
	if l.closed() {
		return nil, net.ErrClosed
	}
	select {
	case s := <-l.ready:
		<-l.room
		return s, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-l.loopDone:
		if s := l.takeReady(); s != nil {
			return s, nil
		}
		if l.closed() {
			return nil, net.ErrClosed
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		return nil, l.err
	}
}

// Close stops accepting, closes the inner listener, every pending
// connection and every session not yet accepted, and returns once they
// have ended. Sessions already accepted are the application's to close.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.inner.Close()
		<-l.loopDone
		l.mu.Lock()
		var pending []net.Conn
		for l.oldest != nil {
			pending = append(pending, l.oldest.conn)
			l.drop(l.oldest)
		}
		l.mu.Unlock()
		for _, c := range pending {
			closeConn(c)
		}
		l.wg.Wait()
		// Concurrently: each Close waits for its session's goroutines.
		var sessions sync.WaitGroup
		for s := l.takeReady(); s != nil; s = l.takeReady() {
			sessions.Add(1)
			go func() {
				defer sessions.Done()
				s.Close()
			}()
		}
		sessions.Wait()
	})
	return err
}

// takeReady returns a ready session without waiting, or nil.
func (l *Listener) takeReady() *Session {
	select {
	case s := <-l.ready:
		<-l.room
		return s
	default:
		return nil
	}
}

// passingAcceptErr reports whether an Accept error may pass: a timeout, or
// running out of file descriptors, which the next Close anywhere in the
// process can end. The accept loop then retries instead of ending.
func passingAcceptErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// Addr returns the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }
