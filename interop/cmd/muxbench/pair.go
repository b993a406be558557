package main

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/polymux/polymux/interop/internal/muxes"
)

// contender is one column of the comparison: raw TCP, or a multiplexer
// library talking to itself.
type contender struct {
	name string
	lib  *muxes.Lib // nil for raw TCP
}

const rawTCP = "raw TCP"

func (c contender) isRaw() bool { return c.lib == nil }

// isPeer reports whether c is a reference library (not polymux, not TCP).
func (c contender) isPeer() bool { return c.lib != nil && !c.lib.Polymux }

// pair is where a workload opens and accepts streams: a client and a server
// session over one TCP connection on 127.0.0.1, or, for raw TCP, a
// listener (every stream is a TCP connection).
type pair struct {
	open   func(ctx context.Context) (muxes.Stream, error)
	accept func(ctx context.Context) (muxes.Stream, error)

	mu     sync.Mutex
	closed bool
	closer []func()
	raws   []net.Conn // raw TCP: every connection, to close them all
}

// close closes everything the pair holds: sessions, listener, connections.
// Blocked calls on them return.
func (p *pair) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	closers, raws := p.closer, p.raws
	p.mu.Unlock()
	for _, c := range raws {
		c.Close()
	}
	for _, f := range closers {
		f()
	}
}

// track remembers a raw TCP connection so that close closes it.
func (p *pair) track(c net.Conn) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return net.ErrClosed
	}
	p.raws = append(p.raws, c)
	return nil
}

func newPair(c contender, o muxes.Options) (*pair, error) {
	if c.isRaw() {
		return newRawPair()
	}
	cc, sc, err := tcpPair()
	if err != nil {
		return nil, err
	}
	server, err := c.lib.Server(sc, o)
	if err != nil {
		cc.Close()
		return nil, err
	}
	client, err := c.lib.Client(cc, o)
	if err != nil {
		server.Close()
		return nil, err
	}
	p := &pair{open: client.Open, accept: server.Accept}
	p.closer = []func(){
		func() { cc.Close(); sc.Close() }, // first, so that no Close can block on a stuck peer
		func() { client.Close() },
		func() { server.Close() },
	}
	return p, nil
}

func newRawPair() (*pair, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &pair{}
	p.closer = []func(){func() { ln.Close() }}
	var d net.Dialer
	p.open = func(ctx context.Context) (muxes.Stream, error) {
		c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			return nil, err
		}
		if err := p.track(c); err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	}
	p.accept = func(context.Context) (muxes.Stream, error) {
		c, err := ln.Accept()
		if err != nil {
			return nil, err
		}
		if err := p.track(c); err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	}
	return p, nil
}

// tcpPair returns both ends of a TCP connection on 127.0.0.1.
func tcpPair() (client, server net.Conn, err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		ch <- result{c, err}
	}()
	client, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		ln.Close()
		<-ch
		return nil, nil, err
	}
	r := <-ch
	if r.err != nil {
		client.Close()
		return nil, nil, r.err
	}
	return client, r.c, nil
}

// errStalled reports a workload that stopped making progress.
var errStalled = errors.New("stalled")
