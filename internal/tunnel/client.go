package tunnel

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/polymux/polymux"
)

// ClientConfig configures a Client. Server, Trust and Token are required.
type ClientConfig struct {
	Server string // host:port of the tunnel server
	Trust  *Trust // how the server is recognised, on every connection
	Token  []byte // the shared secret

	Local  []Forward // -L: listeners here, targets dialled by the server
	Remote []Forward // -R: listeners on the server, targets dialled here
	Socks  []string  // -D: SOCKS5 listeners here, targets dialled by the server

	Mux *polymux.Config // nil: the defaults (yamux)

	// Backoff is the redial schedule; its zero value means 250 ms doubling
	// up to 10 s, with jitter.
	Backoff Backoff
	// Dial makes the connection to the server and to -R targets; nil: a
	// net.Dialer.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Listen opens the -L and -D listeners; nil: net.Listen.
	Listen func(network, address string) (net.Listener, error)

	Timeouts Timeouts
	// DrainTimeout is how long running connections get to finish once Run's
	// context is done. Default 10 s.
	DrainTimeout time.Duration
	// StatsInterval, if positive, logs the session's Stats this often.
	StatsInterval time.Duration
	Logger        *slog.Logger // nil discards
}

// defaultDrainTimeout is the default of ClientConfig.DrainTimeout, and of
// the command's -drain-timeout on both sides.
const defaultDrainTimeout = 10 * time.Second

// DefaultDrainTimeout is defaultDrainTimeout, for the command's flag.
const DefaultDrainTimeout = defaultDrainTimeout

// Client is the tunnel's client: it keeps one session to the server up,
// redialling when it is lost, and carries its forwards over it.
type Client struct {
	cfg ClientConfig
	to  Timeouts
	log *slog.Logger
	id  string // names this client to the server across reconnects

	listeners []localListener
	cur       atomic.Pointer[session] // the session forwards use; nil while down
	wg        sync.WaitGroup          // the listeners' accept loops
}

// localListener is a -L or -D listener.
type localListener struct {
	ln     net.Listener
	target string // -L: where the server dials; "" for -D
}

// NewClient checks cfg and opens the -L and -D listeners, so that a bad
// or busy address fails here, at start-up. Run starts the client.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Server == "" || cfg.Trust == nil || len(cfg.Token) == 0 {
		return nil, errors.New("tunnel: a client needs a server, a way to trust it, and a token")
	}
	if _, _, err := net.SplitHostPort(cfg.Server); err != nil {
		return nil, fmt.Errorf("server address %q: %v", cfg.Server, err)
	}
	if err := cfg.Timeouts.Validate(); err != nil {
		return nil, err
	}
	if cfg.Mux == nil {
		cfg.Mux = &polymux.Config{}
	}
	if cfg.Mux.Protocol == polymux.Auto {
		cfg.Mux.Protocol = polymux.Yamux // what Auto means for a client
	}
	if err := cfg.Mux.Validate(); err != nil {
		return nil, err
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{}).DialContext
	}
	if cfg.Listen == nil {
		cfg.Listen = net.Listen
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = defaultDrainTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var id [16]byte
	rand.Read(id[:])
	c := &Client{cfg: cfg, to: cfg.Timeouts.withDefaults(), log: log, id: hex.EncodeToString(id[:])}
	open := func(addr, target string) error {
		ln, err := cfg.Listen("tcp", addr)
		if err != nil {
			return err
		}
		c.listeners = append(c.listeners, localListener{ln: ln, target: target})
		return nil
	}
	for _, f := range cfg.Local {
		if err := open(f.Bind, f.Target); err != nil {
			c.closeListeners()
			return nil, fmt.Errorf("-L %s: %w", f, err)
		}
	}
	for _, addr := range cfg.Socks {
		if err := open(addr, ""); err != nil {
			c.closeListeners()
			return nil, fmt.Errorf("-D %s: %w", addr, err)
		}
	}
	return c, nil
}

// closeListeners closes the -L and -D listeners.
func (c *Client) closeListeners() {
	for _, l := range c.listeners {
		l.ln.Close()
	}
}

// Addrs are the addresses of the -L listeners, then the -D ones, in the
// order given (useful with port 0).
func (c *Client) Addrs() []net.Addr {
	out := make([]net.Addr, len(c.listeners))
	for i, l := range c.listeners {
		out[i] = l.ln.Addr()
	}
	return out
}

// FatalError is what Run returns for a failure that redialling cannot
// cure: the server's token check failed, or the server could not be
// trusted on the first connection.
type FatalError struct{ Err error }

// Error is the cause's message.
func (e *FatalError) Error() string { return e.Err.Error() }

// Unwrap returns the cause, for errors.Is and errors.As.
func (e *FatalError) Unwrap() error { return e.Err }

// Run keeps a session to the server until ctx is done, redialling with
// backoff when it is lost, and serves the forwards. Once ctx is done it
// drains: the listeners close, running connections get DrainTimeout to
// finish, and Run returns nil. It returns a *FatalError, without
// redialling, when the server refuses the token, or when on the first
// connection its key cannot be trusted (on a reconnect that is logged and
// retried, and nothing is forwarded meanwhile).
func (c *Client) Run(ctx context.Context) error {
	for _, l := range c.listeners {
		c.wg.Add(1)
		go c.acceptLocal(l)
		if l.target != "" {
			c.log.Info("forward listening", "bind", l.ln.Addr().String(), "target", l.target)
		} else {
			c.log.Info("socks listening", "bind", l.ln.Addr().String())
		}
	}
	defer c.wg.Wait()
	defer c.closeListeners()
	connected := false
	for attempt := 1; ; attempt++ {
		c.log.Info("connecting", "server", c.cfg.Server, "attempt", attempt)
		s, err := c.connect(ctx)
		if err == nil {
			connected = true
			attempt = 0
			c.cfg.Backoff.Reset()
			if c.serve(ctx, s) {
				return nil
			}
			retryIn := c.cfg.Backoff.Next()
			c.log.Info("session lost; reconnecting", "server", c.cfg.Server, "in", retryIn)
			if !sleep(ctx, retryIn) {
				return nil
			}
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		var unknown *UnknownServerError
		var mismatch *MismatchError
		var throttled *ThrottledError
		retryIn := c.cfg.Backoff.Next()
		switch {
		case errors.Is(err, ErrAuthFailed):
			return &FatalError{err}
		case errors.As(err, &unknown):
			return &FatalError{err}
		case errors.As(err, &mismatch) && !connected:
			return &FatalError{err}
		case errors.As(err, &mismatch):
			c.log.Error("server not trusted; will retry", "server", c.cfg.Server, "err", err, "retry_in", retryIn)
		case errors.As(err, &throttled):
			retryIn = max(retryIn, throttled.RetryAfter)
			c.log.Warn("connect failed", "server", c.cfg.Server, "err", err, "retry_in", retryIn)
		default:
			c.log.Warn("connect failed", "server", c.cfg.Server, "err", err, "retry_in", retryIn)
		}
		if !sleep(ctx, retryIn) {
			return nil
		}
	}
}

// sleep waits for d, or until ctx is done; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// connect dials the server and authenticates: TLS (verified by Trust),
// the polymux session and the control stream's exchange, all bounded by
// Timeouts.Auth.
func (c *Client) connect(ctx context.Context) (*session, error) {
	ctx, cancel := context.WithTimeout(ctx, c.to.Auth)
	defer cancel()
	conn, err := c.cfg.Dial(ctx, "tcp", c.cfg.Server)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() }) // bounds every step below
	defer stop()
	tlsConf := c.cfg.Trust.TLSConfig()
	if tlsConf.ServerName == "" {
		tlsConf.ServerName, _, _ = net.SplitHostPort(c.cfg.Server)
	}
	tc := tls.Client(conn, tlsConf)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	mux, err := polymux.Client(tc, c.cfg.Mux)
	if err != nil {
		conn.Close()
		return nil, err
	}
	ctl, err := mux.OpenStream(ctx)
	if err == nil {
		err = clientAuth(ctl, tc.ConnectionState(), c.cfg.Token, c.id)
	}
	if err == nil && !stop() {
		err = ctx.Err() // the deadline closed the connection just as authentication ended
	}
	if err != nil {
		mux.Close()
		if ctx.Err() != nil && !errors.Is(err, ErrAuthFailed) {
			err = fmt.Errorf("%v (within %v)", err, c.to.Auth)
		}
		return nil, err
	}
	return newSession(mux, ctl, c.to, c.log.With("server", c.cfg.Server)), nil
}

// serve runs an authenticated session until it ends or ctx is done; it
// reports whether ctx is done (and the session drained).
func (c *Client) serve(ctx context.Context, s *session) (stopped bool) {
	start := time.Now()
	c.cur.Store(s) // before the log line: a forward may use it from then on
	s.log.Info("session up", "protocol", s.mux.Protocol().String(), "remote", s.mux.RemoteAddr().String())
	for i, f := range c.cfg.Remote {
		s.ctl.send(&message{Type: msgReverse, ID: i + 1, Bind: f.Bind})
	}
	if c.cfg.StatsInterval > 0 {
		go s.logStats(c.cfg.StatsInterval)
	}
	go s.serveStreams(func(st *polymux.Stream) { c.serveReverse(s, st) })
	ctlDone := make(chan error, 1)
	go func() {
		err := s.ctl.run(func(m *message) { c.handle(s, m) })
		s.afterControl()
		ctlDone <- err
	}()
	var err error
	select {
	case err = <-ctlDone:
	case <-ctx.Done():
		c.closeListeners() // new connections stop
		s.log.Info("draining", "running", s.relays.count(), "timeout", c.cfg.DrainTimeout)
		dctx, cancel := context.WithTimeout(context.Background(), c.cfg.DrainTimeout)
		if derr := s.drain(dctx); derr != nil {
			s.log.Warn("drain timed out; closing", "timeout", c.cfg.DrainTimeout, "running", s.relays.count())
		}
		cancel()
		err = <-ctlDone
		stopped = true
	}
	c.cur.CompareAndSwap(s, nil)
	st := s.mux.Stats()
	s.log.Info("session down", "reason", reason(err, s.mux), "duration", time.Since(start).Round(time.Millisecond),
		"bytes_sent", st.BytesSent, "bytes_received", st.BytesReceived, "streams", st.StreamsAccepted+st.StreamsOpened)
	return stopped
}

// handle handles one control message of the server.
func (c *Client) handle(s *session, m *message) {
	if s.handleCommon(m) {
		if m.Type == msgBye {
			s.log.Info("server is shutting down; running connections may finish")
			c.cur.CompareAndSwap(s, nil) // new connections are closed at once
		}
		return
	}
	switch m.Type {
	case msgReverseDone:
		if m.ID < 1 || m.ID > len(c.cfg.Remote) {
			s.log.Warn("answer for an unknown reverse forward", "id", m.ID)
			return
		}
		f := c.cfg.Remote[m.ID-1]
		if m.OK {
			s.log.Info("reverse forward listening", "bind", m.Bound, "target", f.Target)
		} else {
			s.log.Warn("reverse forward refused by the server", "bind", f.Bind, "target", f.Target, "code", m.Code, "err", m.Error)
		}
	default:
		s.log.Warn("unexpected control message", "type", m.Type)
	}
}

// acceptLocal accepts on a -L or -D listener until it is closed. A
// connection that arrives with no session up is closed at once.
func (c *Client) acceptLocal(l localListener) {
	defer c.wg.Done()
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond) // out of file descriptors: let some close
				continue
			}
			return
		}
		s := c.cur.Load()
		if s == nil || !s.relays.add() {
			c.log.Debug("no session: connection closed", "bind", l.ln.Addr().String())
			conn.Close()
			continue
		}
		go func() {
			defer s.relays.done()
			tc := conn.(*net.TCPConn)
			if l.target != "" {
				c.forwardLocal(s, tc, l.target)
			} else {
				c.forwardSocks(s, tc)
			}
		}()
	}
}

// forwardLocal carries one -L connection to the server, which dials
// target. The local bytes start flowing at once; the server's reply is
// read before any byte comes back.
func (c *Client) forwardLocal(s *session, conn *net.TCPConn, target string) {
	st, err := c.openConnect(s, target)
	if err != nil {
		s.log.Info("forward failed", "target", target, "err", streamFailure(err))
		abort(conn)
		return
	}
	logEnd(s.log, target, relay(conn, st, func() error {
		return readReply(st, c.to.Dial, s.log, "forward refused by the server", "target", target)
	}))
}

// openConnect opens a stream asking the server to dial target.
func (c *Client) openConnect(s *session, target string) (*polymux.Stream, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.to.Dial)
	defer cancel()
	st, err := s.mux.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	if err := writeMessage(st, &message{Type: msgConnect, Target: target}); err != nil {
		st.Reset()
		return nil, err
	}
	return st, nil
}

// socksTimeout bounds a SOCKS5 client's greeting and request.
const socksTimeout = 10 * time.Second

// forwardSocks serves one -D connection: the SOCKS5 handshake here, the
// dial at the server, and the reply the server's answer calls for.
func (c *Client) forwardSocks(s *session, conn *net.TCPConn) {
	conn.SetDeadline(time.Now().Add(socksTimeout))
	target, err := socksHandshake(conn)
	if err != nil {
		s.log.Debug("socks handshake failed", "remote", conn.RemoteAddr().String(), "err", err)
		conn.Close()
		return
	}
	st, err := c.openConnect(s, target)
	if err != nil {
		s.log.Info("socks connect failed", "target", target, "err", streamFailure(err))
		socksReply(conn, socksFailure, netip.AddrPort{})
		conn.Close()
		return
	}
	st.SetReadDeadline(time.Now().Add(c.to.Dial))
	m, err := expect(st, msgReply)
	st.SetReadDeadline(time.Time{})
	switch {
	case err != nil:
		socksReply(conn, socksFailure, netip.AddrPort{})
		conn.Close()
		st.Reset()
		return
	case !m.OK:
		if m.Code == codeNotAllowed {
			s.log.Warn("socks connect refused by the server", "target", target, "code", m.Code, "err", m.Error)
		} else {
			s.log.Info("socks connect failed", "target", target, "code", m.Code, "err", m.Error)
		}
		socksReply(conn, socksCode(m.Code), netip.AddrPort{})
		conn.Close()
		st.Close()
		return
	}
	bound, _ := netip.ParseAddrPort(m.Bound)
	if err := socksReply(conn, socksOK, bound); err != nil {
		conn.Close()
		st.Reset()
		return
	}
	conn.SetDeadline(time.Time{})
	logEnd(s.log, target, relay(conn, st, nil))
}

// serveReverse dials the target of the reverse forward a stream names,
// answers, and relays.
func (c *Client) serveReverse(s *session, st *polymux.Stream) {
	st.SetReadDeadline(time.Now().Add(c.to.Dial))
	m, err := expect(st, msgReverseConn)
	st.SetReadDeadline(time.Time{})
	if err != nil {
		st.Reset()
		return
	}
	if m.ID < 1 || m.ID > len(c.cfg.Remote) {
		refuse(st, codeFailed, fmt.Errorf("no reverse forward %d", m.ID), c.to.Dial)
		return
	}
	target := c.cfg.Remote[m.ID-1].Target
	ctx, cancel := context.WithTimeout(context.Background(), c.to.Dial)
	conn, err := c.cfg.Dial(ctx, "tcp", target)
	cancel()
	if err != nil {
		s.log.Info("reverse forward: dial failed", "target", target, "err", err)
		refuse(st, dialCode(err), err, c.to.Dial)
		return
	}
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		conn.Close()
		refuse(st, codeFailed, errors.New("the dialer returned a connection that is not TCP"), c.to.Dial)
		return
	}
	if err := writeMessage(st, &message{Type: msgReply, OK: true, Bound: tc.LocalAddr().String()}); err != nil {
		tc.Close()
		st.Reset()
		return
	}
	logEnd(s.log, target, relay(tc, st, nil))
}
