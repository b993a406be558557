package loopback

import (
	"context"
	"errors"
	"net"
	"sync"
)

// Conn is a connection a workload runs on: a net.Conn that can half-close,
// as *net.TCPConn and *polymux.Stream can.
type Conn interface {
	net.Conn
	// CloseWrite half-closes: the peer reads io.EOF after the data written.
	CloseWrite() error
}

// Transport is where a workload runs: Open makes a connection and Accept
// returns it at the other end.
type Transport interface {
	Open(ctx context.Context) (Conn, error)
	// Accept returns the next connection Open made. It should return once
	// ctx is done; one that cannot is ended by closing the transport.
	Accept(ctx context.Context) (Conn, error)
}

// TCP is raw TCP on 127.0.0.1 as a Transport: every Open dials a new
// connection to one listener. It remembers every connection so that Close
// can end whatever a stuck workload still blocks on.
type TCP struct {
	ln     net.Listener
	dialer net.Dialer

	mu     sync.Mutex // guards closed and conns
	closed bool
	conns  map[net.Conn]struct{}
}

// NewTCP listens on a free port of 127.0.0.1.
func NewTCP() (*TCP, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return &TCP{ln: ln, conns: make(map[net.Conn]struct{})}, nil
}

// Addr is the address Open dials.
func (t *TCP) Addr() net.Addr { return t.ln.Addr() }

// Open dials the listener.
func (t *TCP) Open(ctx context.Context) (Conn, error) {
	c, err := t.dialer.DialContext(ctx, "tcp", t.ln.Addr().String())
	if err != nil {
		return nil, err
	}
	return t.track(c)
}

// Accept accepts the next connection. Once ctx is done the listener is
// closed, which ends this and every later Accept: a workload's context ends
// only when the workload does.
func (t *TCP) Accept(ctx context.Context) (Conn, error) {
	stop := context.AfterFunc(ctx, func() { t.ln.Close() })
	defer stop()
	c, err := t.ln.Accept()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	return t.track(c)
}

// track remembers c for Close, or closes it if t already is.
func (t *TCP) track(c net.Conn) (Conn, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	t.conns[c] = struct{}{}
	return &tcpConn{c.(*net.TCPConn), t}, nil
}

// forget drops c from the set once it is closed, so a long rpc run does
// not hold every connection it ever made.
func (t *TCP) forget(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

// Close closes the listener and every connection still open; blocked calls
// on them return.
func (t *TCP) Close() error {
	t.mu.Lock()
	t.closed = true
	conns := t.conns
	t.conns = nil
	t.mu.Unlock()
	err := t.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil // Accept already closed it when its context ended
	}
	for c := range conns {
		c.Close()
	}
	return err
}

// tcpConn is a connection of a TCP transport; closing it lets the
// transport forget it.
type tcpConn struct {
	*net.TCPConn
	t *TCP
}

// Close closes the connection and removes it from its transport's set.
func (c *tcpConn) Close() error {
	c.t.forget(c.TCPConn)
	return c.TCPConn.Close()
}
