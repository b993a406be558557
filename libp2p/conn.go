package polymuxp2p

import (
	"context"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/polymux/polymux"
)

// conn is a polymux session as a network.MuxedConn.
type conn struct {
	s *polymux.Session
}

var _ network.MuxedConn = (*conn)(nil)

// Close ends the session as polymux's Close does: what was written is
// delivered within Config.CloseLinger, the streams left open are reset,
// and GoAway goes last; it returns once the connection is closed.
func (c *conn) Close() error { return c.s.Close() }

// CloseWithError ends the session as Close does, with code in the final
// GoAway, where go-yamux reads it: the peer's calls then fail with a
// *network.ConnError holding it (Remote).
func (c *conn) CloseWithError(code network.ConnErrorCode) error {
	return c.s.CloseWithError(uint32(code))
}

// IsClosed reports whether the session has started to end, as go-yamux's
// does: from then on no stream opens.
func (c *conn) IsClosed() bool { return c.s.IsClosed() }

// OpenStream opens a stream; it does not wait for the peer.
func (c *conn) OpenStream(ctx context.Context) (network.MuxedStream, error) {
	st, err := c.s.OpenStream(ctx)
	if err != nil {
		return nil, connErr(err)
	}
	return &stream{st: st}, nil
}

// AcceptStream waits for a stream the peer opened.
func (c *conn) AcceptStream() (network.MuxedStream, error) {
	st, err := c.s.AcceptStream(context.Background())
	if err != nil {
		return nil, connErr(err)
	}
	return &stream{st: st}, nil
}

// As sets a **polymux.Session target to the session underneath, for code
// that wants its Stats or Ping.
func (c *conn) As(target any) bool {
	if t, ok := target.(**polymux.Session); ok {
		*t = c.s
		return true
	}
	return false
}
