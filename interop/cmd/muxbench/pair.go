package main

import (
	"context"
	"errors"
	"sync"

	"github.com/polymux/polymux/internal/loopback"
	"github.com/polymux/polymux/interop/internal/muxes"
)

// contender is one column of the comparison: raw TCP, or a multiplexer
// library talking to itself.
type contender struct {
	name string
	lib  *muxes.Lib // nil for raw TCP
}

const rawTCP = "raw TCP"

// isRaw reports whether c is raw TCP (every stream a connection).
func (c contender) isRaw() bool { return c.lib == nil }

// isPeer reports whether c is a reference library (not polymux, not TCP).
func (c contender) isPeer() bool { return c.lib != nil && !c.lib.Polymux }

// pair is where a workload opens and accepts streams, as a
// loopback.Transport: a client and a server session over one TCP
// connection on 127.0.0.1, or, for raw TCP, a loopback.TCP (every stream
// is a TCP connection).
type pair struct {
	open   func(ctx context.Context) (loopback.Conn, error)
	accept func(ctx context.Context) (loopback.Conn, error)

	mu     sync.Mutex // guards closed
	closed bool
	closer []func()
}

// Open opens a stream at the client end.
func (p *pair) Open(ctx context.Context) (loopback.Conn, error) { return p.open(ctx) }

// Accept accepts a stream at the server end. Only polymux, go-yamux and
// raw TCP honour ctx; the others return once the pair is closed.
func (p *pair) Accept(ctx context.Context) (loopback.Conn, error) { return p.accept(ctx) }

// close closes everything the pair holds: sessions, listener, connections.
// Blocked calls on them return.
func (p *pair) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	for _, f := range p.closer {
		f()
	}
}

// newPair makes the pair a cell of contender c runs on.
func newPair(c contender, o muxes.Options) (*pair, error) {
	if c.isRaw() {
		t, err := loopback.NewTCP()
		if err != nil {
			return nil, err
		}
		return &pair{open: t.Open, accept: t.Accept, closer: []func(){func() { t.Close() }}}, nil
	}
	cc, sc, err := loopback.TCPPair()
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
	p := &pair{
		open:   client.Open,
		accept: server.Accept,
	}
	p.closer = []func(){
		func() { cc.Close(); sc.Close() }, // first, so that no Close can block on a stuck peer
		func() { client.Close() },
		func() { server.Close() },
	}
	return p, nil
}

// errStalled reports a workload that stopped making progress.
var errStalled = errors.New("stalled")
