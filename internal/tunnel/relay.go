package tunnel

import (
	"errors"
	"io"
	"net"
	"sync"
)

// relayBuffer is the size of the buffer each direction of a relay copies
// through: large enough that one read can fill a polymux frame.
const relayBuffer = 64 << 10

// bufPool holds relay buffers, so that thousands of short connections do
// not each allocate two.
var bufPool = sync.Pool{New: func() any { b := make([]byte, relayBuffer); return &b }}

// halfCloser is a connection whose sending side can be shut alone, so a
// half-close crosses the tunnel: *net.TCPConn and *polymux.Stream are.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// relay joins a and b until both directions have ended, and closes both.
// Each direction that reaches EOF half-closes its destination, so a client
// that half-closes still gets its whole reply. If either direction fails,
// both connections are aborted (reset, not closed gracefully), so the
// failure reaches both ends instead of looking like a clean EOF.
//
// prelude, if not nil, runs in the b-to-a direction before any byte of it
// is copied: the side that sent a request reads the reply there while its
// own bytes already flow the other way. If it fails, both are aborted.
func relay(a, b halfCloser, prelude func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- pipe(b, a, a, b, nil) }()
	err := pipe(a, b, a, b, prelude)
	err = errors.Join(err, <-errc)
	a.Close()
	b.Close()
	return err
}

// pipe copies src into dst and half-closes dst at EOF. On an error it
// aborts both x and y (the relay's two connections), which also ends the
// other direction.
func pipe(dst, src, x, y halfCloser, prelude func() error) error {
	var err error
	if prelude != nil {
		err = prelude()
	}
	if err == nil {
		bp := bufPool.Get().(*[]byte)
		_, err = io.CopyBuffer(onlyWriter{dst}, onlyReader{src}, *bp)
		bufPool.Put(bp)
	}
	if err == nil {
		err = dst.CloseWrite()
	}
	if err != nil {
		abort(x)
		abort(y)
	}
	return err
}

// abort ends c at once: a stream is reset; a TCP connection is closed with
// linger 0, which sends RST, as a reset is what the far end must see.
func abort(c net.Conn) {
	switch c := c.(type) {
	case interface{ Reset() error }:
		c.Reset()
	case *net.TCPConn:
		c.SetLinger(0)
		c.Close()
	default:
		c.Close()
	}
}

// onlyReader and onlyWriter hide ReaderFrom and WriterTo, so that
// io.CopyBuffer uses the pooled buffer: *net.TCPConn's WriteTo would
// otherwise copy through a fresh 32 KiB one of its own.
type onlyReader struct{ io.Reader }

// onlyWriter: see onlyReader.
type onlyWriter struct{ io.Writer }
