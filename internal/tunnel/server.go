package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/polymux/polymux"
)

// ServerConfig configures a Server. TLS and Token are required.
type ServerConfig struct {
	TLS   *tls.Config // ServerTLSConfig; the auth needs TLS 1.3
	Token []byte      // the shared secret

	// AllowReverse is where clients may bind -R listeners; nil means
	// LoopbackOnly. AllowForward is what -L and -D may reach; nil means
	// AnyAddress.
	AllowReverse, AllowForward *Policy

	Mux *polymux.Config // nil: the defaults, Protocol Auto

	Resolver Resolver                                                             // nil: net.DefaultResolver
	Dial     func(ctx context.Context, network, address string) (net.Conn, error) // a forward's target; nil: net.Dialer
	Listen   func(network, address string) (net.Listener, error)                  // a -R listener; nil: net.Listen

	Throttle *Throttle // failed authentications per address; nil: one with the defaults
	Timeouts Timeouts
	// MaxPending bounds connections still in the TLS handshake or the
	// authentication; past it new ones are closed at once. Default 256.
	MaxPending int
	// StatsInterval, if positive, logs each session's Stats this often.
	StatsInterval time.Duration
	Logger        *slog.Logger // nil discards
}

// defaultMaxPending is ServerConfig.MaxPending's default.
const defaultMaxPending = 256

// Server is the tunnel's server: it accepts clients on a listener,
// authenticates them, dials -L and -D targets for them and listens for
// their -R forwards, all within its policies.
type Server struct {
	cfg ServerConfig
	to  Timeouts
	log *slog.Logger

	mu       sync.Mutex // guards everything below
	ln       net.Listener
	draining bool
	pending  map[net.Conn]struct{}            // not yet authenticated
	clients  map[string]*serverSession        // by client id
	reverse  map[string]*reverseListener      // by bound address
	done     map[*serverSession]chan struct{} // every authenticated session; closed when its handler returns
}

// serverSession is one authenticated client.
type serverSession struct {
	*session
	srv      *Server
	clientID string
	remote   string
}

// reverseListener is one -R forward listening on the server.
type reverseListener struct {
	owner *serverSession
	id    int
	ln    net.Listener
}

// NewServer checks cfg and returns a server; Serve starts it.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.TLS == nil || len(cfg.Token) == 0 {
		return nil, errors.New("tunnel: a server needs TLS and a token")
	}
	if err := cfg.Timeouts.Validate(); err != nil {
		return nil, err
	}
	if cfg.AllowReverse == nil {
		cfg.AllowReverse = LoopbackOnly
	}
	if cfg.AllowForward == nil {
		cfg.AllowForward = AnyAddress
	}
	if cfg.Mux == nil {
		cfg.Mux = &polymux.Config{}
	}
	if err := cfg.Mux.Validate(); err != nil {
		return nil, err
	}
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{}).DialContext
	}
	if cfg.Listen == nil {
		cfg.Listen = net.Listen
	}
	if cfg.Throttle == nil {
		cfg.Throttle = &Throttle{}
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = defaultMaxPending
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		cfg:     cfg,
		to:      cfg.Timeouts.withDefaults(),
		log:     log,
		pending: make(map[net.Conn]struct{}),
		clients: make(map[string]*serverSession),
		reverse: make(map[string]*reverseListener),
		done:    make(map[*serverSession]chan struct{}),
	}, nil
}

// Serve accepts clients on ln until Drain closes it; it then returns nil.
// Any other failure of Accept that is not temporary is returned.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.ln = ln
	s.mu.Unlock()
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			draining := s.draining
			s.mu.Unlock()
			if draining {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Out of file descriptors, say: wait a little, as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "err", err, "in", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if !s.admit(conn) {
			continue
		}
		go s.handleConn(conn)
	}
}

// admit counts conn as pending, or closes it when too many are.
func (s *Server) admit(conn net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining || len(s.pending) >= s.cfg.MaxPending {
		conn.Close()
		if !s.draining {
			s.log.Warn("connection closed: too many unauthenticated connections", "remote", conn.RemoteAddr().String(), "max", s.cfg.MaxPending)
		}
		return false
	}
	s.pending[conn] = struct{}{}
	return true
}

// handleConn runs one client connection: the TLS handshake and the
// authentication, bounded together by Timeouts.Auth, then the session.
func (s *Server) handleConn(conn net.Conn) {
	remote := conn.RemoteAddr().String()
	// One timer bounds everything before the session is authenticated; on
	// expiry the connection is closed, which fails whatever is waiting.
	authTimer := time.AfterFunc(s.to.Auth, func() { conn.Close() })
	ss, err := s.authenticate(conn, remote)
	authTimer.Stop()
	s.mu.Lock()
	delete(s.pending, conn)
	s.mu.Unlock()
	if err != nil {
		conn.Close()
		return
	}
	s.run(ss)
}

// authenticate runs the TLS handshake and the authentication on conn. It
// logs a failure, with the remote address, and returns it.
func (s *Server) authenticate(conn net.Conn, remote string) (*serverSession, error) {
	tc := tls.Server(conn, s.cfg.TLS)
	ctx, cancel := context.WithTimeout(context.Background(), s.to.Auth)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		s.log.Info("TLS handshake failed", "remote", remote, "err", err)
		return nil, err
	}
	mux, err := polymux.Server(tc, s.cfg.Mux)
	if err != nil {
		return nil, err
	}
	ctl, err := mux.AcceptStream(ctx)
	if err != nil {
		mux.Close()
		s.log.Info("no control stream", "remote", remote, "err", err)
		return nil, err
	}
	ip := remoteIP(conn)
	clientID, err := serverAuth(ctl, tc.ConnectionState(), s.cfg.Token, func() time.Duration { return s.cfg.Throttle.Wait(ip) })
	if err != nil {
		var th *ThrottledError
		switch {
		case errors.Is(err, ErrAuthFailed):
			s.cfg.Throttle.Failed(ip)
			s.log.Warn("authentication failed", "remote", remote, "err", err)
		case errors.As(err, &th):
			s.log.Warn("authentication throttled", "remote", remote, "retry_after", th.RetryAfter)
		default:
			s.log.Info("authentication aborted", "remote", remote, "err", err)
		}
		closeAfterReply(ctl, mux)
		return nil, err
	}
	s.cfg.Throttle.Succeeded(ip)
	ss := &serverSession{session: newSession(mux, ctl, s.to, s.log), srv: s, clientID: clientID, remote: remote}
	ss.log = s.log.With("client", clientID, "remote", remote)
	return ss, nil
}

// closeAfterReply closes a session whose control stream carries a last
// message (a denial). Session.Close delivers what was written on streams
// already closed for writing; a stream left open would be reset instead,
// and its reset would make the client drop the denial unread.
func closeAfterReply(ctl *polymux.Stream, mux *polymux.Session) {
	ctl.CloseWrite()
	mux.Close()
}

// remoteIP is the address a client counts as for the throttle.
func remoteIP(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr()
	}
	ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	return ap.Addr()
}

// run serves an authenticated session until it ends.
func (s *Server) run(ss *serverSession) {
	done := make(chan struct{})
	defer close(done)
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		ss.mux.Close()
		return
	}
	old := s.clients[ss.clientID]
	s.clients[ss.clientID] = ss
	s.done[ss] = done
	s.mu.Unlock()
	if old != nil {
		// The same client is back: its old session is dead or dying
		// (a reconnect after a cut), and what it holds goes to the new one.
		old.log.Info("session replaced by a new one of the same client")
		old.mux.Close()
	}
	start := time.Now()
	ss.log.Info("session up", "protocol", ss.mux.Protocol().String())
	if s.cfg.StatsInterval > 0 {
		go ss.logStats(s.cfg.StatsInterval)
	}
	go ss.serveStreams(ss.serveStream)
	err := ss.ctl.run(ss.handle)
	ss.afterControl()
	<-ss.mux.Done()
	s.forget(ss)
	st := ss.mux.Stats()
	ss.log.Info("session down", "reason", reason(err, ss.mux), "duration", time.Since(start).Round(time.Millisecond),
		"bytes_sent", st.BytesSent, "bytes_received", st.BytesReceived, "streams", st.StreamsAccepted+st.StreamsOpened)
}

// reason is why a session ended, in words for its log line.
func reason(ctlErr error, mux *polymux.Session) string {
	if errors.Is(ctlErr, ErrHeartbeatTimeout) {
		return ctlErr.Error()
	}
	if err := mux.Err(); err != nil {
		return err.Error()
	}
	return fmt.Sprint(ctlErr)
}

// forget removes a finished session and closes its reverse listeners.
func (s *Server) forget(ss *serverSession) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.done, ss)
	if s.clients[ss.clientID] == ss {
		delete(s.clients, ss.clientID)
	}
	for addr, rl := range s.reverse {
		if rl.owner == ss {
			rl.ln.Close()
			delete(s.reverse, addr)
		}
	}
}

// handle handles one control message of the client.
func (ss *serverSession) handle(m *message) {
	if ss.handleCommon(m) {
		if m.Type == msgBye {
			ss.srv.closeReverse(ss) // the client is leaving: no new -R connections
		}
		return
	}
	switch m.Type {
	case msgReverse:
		ss.ctl.send(ss.srv.listenReverse(ss, m.ID, m.Bind))
	default:
		ss.log.Warn("unexpected control message", "type", m.Type)
	}
}

// closeReverse closes the reverse listeners of ss, leaving their running
// connections alone.
func (s *Server) closeReverse(ss *serverSession) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for addr, rl := range s.reverse {
		if rl.owner == ss {
			rl.ln.Close()
			delete(s.reverse, addr)
		}
	}
}

// listenReverse serves a client's request to listen on bind for its
// reverse forward id, within AllowReverse, and returns the answer. The
// same client's listener on the same address, left by a session that has
// not yet been noticed dead, is replaced; another client's is not.
func (s *Server) listenReverse(ss *serverSession, id int, bind string) *message {
	fail := func(code, msg string) *message {
		ss.log.Warn("reverse forward refused", "bind", bind, "code", code, "err", msg)
		return &message{Type: msgReverseDone, ID: id, Code: code, Error: msg}
	}
	host, portStr, err := net.SplitHostPort(bind)
	if err != nil {
		return fail(codeFailed, err.Error())
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return fail(codeFailed, "bad port "+portStr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.to.Dial)
	defer cancel()
	addrs, err := s.cfg.AllowReverse.Resolve(ctx, s.cfg.Resolver, host, uint16(port))
	if err != nil {
		if errors.Is(err, ErrNotAllowed) {
			return fail(codeNotAllowed, err.Error())
		}
		return fail(codeHostUnreach, err.Error())
	}
	addr := addrs[0].String()
	if ss.draining() {
		return fail(codeFailed, "the session is draining")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return fail(codeFailed, "the server is shutting down")
	}
	if rl, ok := s.reverse[addr]; ok {
		switch {
		case rl.owner == ss:
			return fail(codeInUse, addr+" is already forwarded by this session")
		case rl.owner.clientID != ss.clientID:
			return fail(codeInUse, addr+" is held by another client")
		}
		rl.ln.Close()
		delete(s.reverse, addr)
		ss.log.Info("reverse listener taken over from the client's previous session", "bind", addr)
	}
	ln, err := s.cfg.Listen("tcp", addr)
	if err != nil {
		code := codeFailed
		if isAddrInUse(err) {
			code = codeInUse
		}
		return fail(code, err.Error())
	}
	bound := ln.Addr().String()
	rl := &reverseListener{owner: ss, id: id, ln: ln}
	s.reverse[bound] = rl
	go ss.acceptReverse(rl)
	ss.log.Info("reverse forward listening", "bind", bound)
	return &message{Type: msgReverseDone, ID: id, OK: true, Bound: bound}
}

// draining reports whether this session stopped taking new connections.
func (s *session) draining() bool {
	select {
	case <-s.peerBye:
		return true
	default:
	}
	return s.relays.isStopped()
}

// acceptReverse accepts connections on a reverse listener and sends each
// to the client on a new stream, until the listener is closed.
func (ss *serverSession) acceptReverse(rl *reverseListener) {
	for {
		conn, err := rl.ln.Accept()
		if err != nil {
			return
		}
		if !ss.relays.add() {
			conn.Close()
			continue
		}
		go func() {
			defer ss.relays.done()
			ss.forwardReverse(rl.id, conn.(*net.TCPConn))
		}()
	}
}

// forwardReverse carries one connection of reverse forward id to the
// client. Its bytes start flowing at once; the client's reply is read
// before any byte comes back.
func (ss *serverSession) forwardReverse(id int, conn *net.TCPConn) {
	ctx, cancel := context.WithTimeout(context.Background(), ss.srv.to.Dial)
	defer cancel()
	st, err := ss.mux.OpenStream(ctx)
	if err != nil {
		ss.log.Info("reverse connection failed", "id", id, "err", streamFailure(err))
		abort(conn)
		return
	}
	if err := writeMessage(st, &message{Type: msgReverseConn, ID: id}); err != nil {
		abort(conn)
		abort(st)
		return
	}
	logEnd(ss.log, conn.LocalAddr().String(), relay(conn, st, func() error {
		return readReply(st, ss.srv.to.Dial, ss.log, "reverse connection refused by the client", "id", id)
	}))
}

// readReply reads the reply that opens a data stream's way back, bounded
// by d; a failure reply is logged with msg and args and returned.
func readReply(st *polymux.Stream, d time.Duration, log *slog.Logger, msg string, args ...any) error {
	st.SetReadDeadline(time.Now().Add(d))
	m, err := expect(st, msgReply)
	st.SetReadDeadline(time.Time{})
	if err != nil {
		return err
	}
	if !m.OK {
		log.Warn(msg, append(args, "code", m.Code, "err", m.Error)...)
		return &replyError{code: m.Code, msg: m.Error}
	}
	return nil
}

// replyError is a failure reply from the other side.
type replyError struct{ code, msg string }

// Error is the code and the other side's message.
func (e *replyError) Error() string { return e.code + ": " + e.msg }

// serveStream serves one data stream: a connect request for a -L or -D
// target, checked against AllowForward, dialled, then relayed.
func (ss *serverSession) serveStream(st *polymux.Stream) {
	s := ss.srv
	st.SetReadDeadline(time.Now().Add(s.to.Dial))
	m, err := expect(st, msgConnect)
	st.SetReadDeadline(time.Time{})
	if err != nil {
		ss.log.Debug("bad data stream", "err", err)
		st.Reset()
		return
	}
	conn, code, err := s.dialTarget(m.Target)
	if err != nil {
		if code == codeNotAllowed {
			ss.log.Warn("forward refused by policy", "target", m.Target, "err", err)
		} else {
			ss.log.Info("forward failed", "target", m.Target, "code", code, "err", err)
		}
		refuse(st, code, err, s.to.Dial)
		return
	}
	bound := conn.LocalAddr().String()
	if err := writeMessage(st, &message{Type: msgReply, OK: true, Bound: bound}); err != nil {
		conn.Close()
		st.Reset()
		return
	}
	ss.log.Debug("forward", "target", m.Target, "via", bound)
	logEnd(ss.log, m.Target, relay(conn, st, nil))
}

// refuse answers a data stream with a failure and closes it, waiting at
// most d for the other side to hang up first. What the other side already
// sent, or sends before it reads the answer, is discarded: it reaches
// nothing. Closing while such bytes still arrive would make polymux reset
// the stream, and a reset could overtake the answer.
func refuse(st *polymux.Stream, code string, err error, d time.Duration) {
	writeMessage(st, &message{Type: msgReply, Code: code, Error: err.Error()})
	st.CloseWrite()
	st.SetReadDeadline(time.Now().Add(d))
	io.Copy(io.Discard, onlyReader{st})
	st.Close()
}

// dialTarget resolves target, checks every address against AllowForward
// and dials the allowed ones in turn, by address, never by name again.
func (s *Server) dialTarget(target string) (*net.TCPConn, string, error) {
	host, portStr, err := net.SplitHostPort(target)
	if err != nil {
		return nil, codeFailed, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return nil, codeFailed, fmt.Errorf("bad port %q", portStr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.to.Dial)
	defer cancel()
	addrs, err := s.cfg.AllowForward.Resolve(ctx, s.cfg.Resolver, host, uint16(port))
	if err != nil {
		if errors.Is(err, ErrNotAllowed) {
			return nil, codeNotAllowed, err
		}
		return nil, codeHostUnreach, err
	}
	var errs []error
	for _, a := range addrs {
		c, err := s.cfg.Dial(ctx, "tcp", a.String())
		if err == nil {
			if tc, ok := c.(*net.TCPConn); ok {
				return tc, "", nil
			}
			c.Close()
			err = errors.New("the dialer returned a connection that is not TCP")
		}
		errs = append(errs, err)
	}
	err = errors.Join(errs...)
	return nil, dialCode(err), err
}

// Drain shuts the server down gracefully: it stops accepting clients and
// reverse connections, tells every client, and gives the forwarded
// connections until ctx is done to finish; then every session is closed.
// It returns ctx.Err() if some were still running then.
func (s *Server) Drain(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	if s.ln != nil {
		s.ln.Close()
	}
	for c := range s.pending {
		c.Close()
	}
	for addr, rl := range s.reverse {
		rl.ln.Close()
		delete(s.reverse, addr)
	}
	sessions := make(map[*serverSession]chan struct{}, len(s.done))
	running := 0
	for ss, done := range s.done {
		sessions[ss] = done
		running += ss.relays.count()
	}
	s.mu.Unlock()
	s.log.Info("draining", "sessions", len(sessions), "running", running)
	var wg sync.WaitGroup
	errs := make(chan error, len(sessions))
	for ss, done := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- ss.drain(ctx)
			<-done // its handler has logged "session down" and cleaned up
		}()
	}
	wg.Wait()
	close(errs)
	var err error
	for e := range errs {
		err = errors.Join(err, e)
	}
	if err != nil {
		return ctx.Err()
	}
	return nil
}

// Addr is the address the server listens on, once Serve has started.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}
