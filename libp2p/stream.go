package polymuxp2p

import (
	"io"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/polymux/polymux"
)

// stream is a polymux stream as a network.MuxedStream.
type stream struct {
	st *polymux.Stream
	// readClosed: CloseRead was called. libp2p wants Reads to fail from
	// then on, where polymux's report io.EOF.
	readClosed atomic.Bool
}

var _ network.MuxedStream = (*stream)(nil)

// errReadClosed is what Read returns after CloseRead, as go-yamux's
// "stream reset" then: not io.EOF, which would say the peer finished.
var errReadClosed = &resetError{err: polymux.ErrStreamClosed}

// Read reads what the peer sent: io.EOF once it closed its side, an error
// matching network.ErrReset once the stream or the session was reset or
// ended (a *network.StreamError or *network.ConnError where a code came),
// and a timeout error (os.ErrDeadlineExceeded, net.Error) at the deadline.
func (s *stream) Read(p []byte) (int, error) {
	if s.readClosed.Load() {
		return 0, errReadClosed
	}
	n, err := s.st.Read(p)
	if err == io.EOF && s.readClosed.Load() {
		// CloseRead interrupted this Read.
		return n, errReadClosed
	}
	return n, streamErr(err)
}

// Write writes p, blocking while the peer's window is full; its errors
// are those of Read.
func (s *stream) Write(p []byte) (int, error) {
	n, err := s.st.Write(p)
	return n, streamErr(err)
}

// Close closes both directions without waiting for the peer: what was
// written is still delivered, then FIN.
func (s *stream) Close() error {
	s.readClosed.Store(true)
	return streamErr(s.st.Close())
}

// CloseWrite half-closes the stream: the peer reads io.EOF after the data.
func (s *stream) CloseWrite() error { return streamErr(s.st.CloseWrite()) }

// CloseRead stops reading: blocked and later Reads fail, and what arrives
// is dropped (the peer still gets its window back).
func (s *stream) CloseRead() error {
	s.readClosed.Store(true)
	return streamErr(s.st.CloseRead())
}

// Reset aborts both directions with code 0.
func (s *stream) Reset() error { return s.st.Reset() }

// ResetWithError aborts both directions, telling the peer code, which its
// Read and Write report in a *network.StreamError (Remote).
func (s *stream) ResetWithError(code network.StreamErrorCode) error {
	return s.st.ResetWithError(uint32(code))
}

// SetDeadline sets both deadlines; the calls they end fail with an error
// matching os.ErrDeadlineExceeded whose Timeout reports true.
func (s *stream) SetDeadline(t time.Time) error { return s.st.SetDeadline(t) }

// SetReadDeadline sets the deadline of pending and future Reads.
func (s *stream) SetReadDeadline(t time.Time) error { return s.st.SetReadDeadline(t) }

// SetWriteDeadline sets the deadline of pending and future Writes.
func (s *stream) SetWriteDeadline(t time.Time) error { return s.st.SetWriteDeadline(t) }
