package polymux

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/polymux/polymux/internal/wire"
)

// maxPendingSessions bounds the connections a Listener holds that the
// application has not accepted yet, whether still detecting their protocol
// or ready. Past it, the Listener stops accepting connections until Accept
// or DetectTimeout frees a place.
const maxPendingSessions = 1024

// Listener accepts connections and serves a server session on each. In
// Auto mode each connection's protocol is detected from its first bytes,
// concurrently, so a slow or silent connection never delays the others; a
// connection whose first bytes match no protocol is closed and logged.
type Listener struct {
	inner  net.Listener
	cfg    *Config
	cfgErr error
	log    *slog.Logger

	slots    chan struct{} // one per pending session
	ready    chan *Session // detected sessions waiting for Accept
	done     chan struct{} // closed by Close
	loopDone chan struct{} // closed when the accept loop has ended
	once     sync.Once

	mu      sync.Mutex // guards pending and err
	pending map[*Session]struct{}
	err     error // why the accept loop ended
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

// ListenTLS is Listen with TLS on every connection.
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

// NewListener serves a session on each connection inner accepts. The
// Listener owns inner and closes it on Close. An invalid cfg makes Accept
// return the validation error.
func NewListener(inner net.Listener, cfg *Config) *Listener {
	if cfg == nil {
		cfg = DefaultConfig()
	}
	c := *cfg
	l := &Listener{
		inner:    inner,
		cfg:      &c,
		cfgErr:   c.Validate(),
		log:      c.Logger,
		slots:    make(chan struct{}, maxPendingSessions),
		ready:    make(chan *Session),
		done:     make(chan struct{}),
		loopDone: make(chan struct{}),
		pending:  make(map[*Session]struct{}),
	}
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

// acceptLoop accepts connections and starts a session on each, holding a
// slot until the session is accepted or fails.
func (l *Listener) acceptLoop() {
	defer close(l.loopDone)
	var backoff time.Duration
	for {
		select {
		case l.slots <- struct{}{}:
		case <-l.done:
			return
		}
		conn, err := l.inner.Accept()
		if err != nil {
			<-l.slots
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !l.closed() {
				// A passing failure (such as running out of file
				// descriptors): back off as net/http does.
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
		// Held across the start so the session's sessionReady, which takes
		// l.mu, finds it in pending.
		l.mu.Lock()
		s, err := startSession(conn, l.cfg, false, l.sessionReady)
		if err == nil {
			l.pending[s] = struct{}{}
		}
		l.mu.Unlock()
		if err != nil { // cannot happen with a validated config
			conn.Close()
			<-l.slots
		}
	}
}

// sessionReady runs on a new session's read loop once its protocol is
// known or detection failed. It hands the session to Accept, waiting while
// nobody accepts, unless the Listener or the session closes first.
func (l *Listener) sessionReady(s *Session, err error) {
	defer func() {
		l.mu.Lock()
		delete(l.pending, s)
		l.mu.Unlock()
		<-l.slots
	}()
	if err != nil {
		l.log.Warn("polymux: closing connection", "remote", s.RemoteAddr(), "err", err)
		return
	}
	select {
	case l.ready <- s:
	case <-l.done:
		s.shutdown(ErrSessionClosed, wire.CodeNone)
	case <-s.closing:
	}
}

func (l *Listener) closed() bool { return isClosed(l.done) }

// Accept waits for the next session whose protocol is known.
func (l *Listener) Accept() (*Session, error) {
	if l.cfgErr != nil {
		return nil, l.cfgErr
	}
	select {
	case s := <-l.ready:
		return s, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-l.loopDone:
		select {
		case s := <-l.ready:
			return s, nil
		default:
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		return nil, l.err
	}
}

// Close stops accepting, closes the inner listener and every session not
// yet accepted, and returns once they have ended. Sessions already
// accepted are the application's to close.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.inner.Close()
		<-l.loopDone
		l.mu.Lock()
		pending := make([]*Session, 0, len(l.pending))
		for s := range l.pending {
			pending = append(pending, s)
		}
		l.mu.Unlock()
		for _, s := range pending {
			s.Close()
		}
	})
	return err
}

// Addr returns the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }
