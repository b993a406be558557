// Package loopback is what tests and benchmarks share for running over TCP
// on 127.0.0.1: a connected pair of connections, a raw-TCP transport, and
// the bulk and rpc workloads that `polymux bench`, interop's muxbench and
// the tunnel benchmark time on any transport.
//
// It is internal: interop/ may import it (its import path is below the
// root module's), nothing outside this repository can.
package loopback

import (
	"net"
	"time"
)

// dialTimeout bounds the dial of a pair, so a machine out of ephemeral
// ports fails the caller instead of hanging it.
const dialTimeout = 5 * time.Second

// TCPPair returns both ends of a fresh TCP connection on 127.0.0.1: client
// is the end that dialled, server the end that was accepted. The listener
// is closed before TCPPair returns.
func TCPPair() (client, server net.Conn, err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	type accepted struct {
		c   net.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		ch <- accepted{c, err}
	}()
	client, err = net.DialTimeout("tcp", ln.Addr().String(), dialTimeout)
	if err != nil {
		ln.Close() // ends the Accept above
		if a := <-ch; a.c != nil {
			a.c.Close()
		}
		return nil, nil, err
	}
	a := <-ch
	if a.err != nil {
		client.Close()
		return nil, nil, a.err
	}
	return client, a.c, nil
}

// TB is the part of testing.TB that MustTCPPair uses; taking it instead of
// testing.TB keeps the testing package out of the binaries that import
// this package.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// MustTCPPair is TCPPair for tests: it fails t (from the calling goroutine,
// as t.Fatalf demands) when the pair cannot be made.
func MustTCPPair(t TB) (client, server net.Conn) {
	t.Helper()
	c, s, err := TCPPair()
	if err != nil {
		t.Fatalf("loopback TCP pair: %v", err)
	}
	return c, s
}
