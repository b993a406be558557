// Package polymuxp2p plugs polymux into go-libp2p as its yamux stream
// multiplexer: one option swaps it in for go-yamux, and it speaks the same
// wire protocol, so its peers may run either.
//
//	h, err := libp2p.New(libp2p.Muxer(polymuxp2p.ID, polymuxp2p.DefaultTransport))
//
// It follows go-libp2p's yamux transport (p2p/muxer/yamux): stream limits
// are left to the resource manager, each stream's memory is reserved from a
// span of the connection's scope, and errors carry libp2p's types
// (network.StreamError, network.ConnError, network.ErrReset) with the codes
// that crossed the wire.
//
// The package is named polymuxp2p rather than after its directory so that
// it never clashes with go-libp2p's own libp2p package in the same file.
package polymuxp2p

import (
	"math"
	"net"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/polymux/polymux"
)

// ID is the protocol ID the muxer is negotiated under: yamux's, since that
// is what polymux speaks on a libp2p connection.
const ID = "/yamux/1.0.0"

// DefaultTransport is the Transport of DefaultConfig, ready for
// libp2p.Muxer(ID, DefaultTransport).
var DefaultTransport = New(nil)

// Transport implements network.Multiplexer with polymux sessions speaking
// yamux. It is safe for concurrent use; NewConn never changes it.
type Transport struct {
	cfg polymux.Config
}

var _ network.Multiplexer = (*Transport)(nil)

// DefaultConfig returns the configuration of DefaultTransport: polymux's
// defaults, which already match go-libp2p's yamux transport (a 256 KiB
// initial window growing up to 16 MiB, an accept backlog of 256, frames
// of 64 KiB, keepalive after 30 s of silence, a 10 s bound on each write
// to the connection, a silent logger), with the limits that the resource
// manager enforces in a libp2p host lifted, as go-libp2p does for
// go-yamux:
//   - MaxIncomingStreams: the resource manager admits or refuses each
//     stream, so polymux's own count would only refuse streams the
//     manager allowed;
//   - MaxSessionBuffer: every byte a stream may buffer lies within its
//     receive window, and every window is reserved from the stream's span
//     before it is granted, so the manager already bounds it; a session
//     cap on top would reset streams whose peer kept to their windows
//     instead of refusing them up front. Without a scope (NewConn with
//     nil) nothing bounds it, as with go-yamux.
//
// AcceptBacklog stays at 256, go-yamux's: a go-yamux peer resets the
// streams opened past its own backlog, so this side may not have more
// awaiting acknowledgement than that.
func DefaultConfig() *polymux.Config {
	c := polymux.DefaultConfig()
	c.Protocol = polymux.Yamux
	c.MaxIncomingStreams = math.MaxInt
	c.MaxSessionBuffer = math.MaxInt64
	return c
}

// New returns a Transport that starts every session with a copy of cfg;
// nil means DefaultConfig. Whatever cfg says, sessions speak yamux, and a
// connection's scope, when NewConn gets one, is the memory manager. To
// keep DefaultTransport's lifted limits, start from DefaultConfig. An
// invalid cfg is reported by NewConn.
func New(cfg *polymux.Config) *Transport {
	if cfg == nil {
		cfg = DefaultConfig()
	}
	t := &Transport{cfg: *cfg}
	t.cfg.Protocol = polymux.Yamux
	return t
}

// Config returns a copy of the configuration the Transport starts sessions
// with (its MemoryManager is replaced per connection when a scope is given).
func (t *Transport) Config() *polymux.Config {
	c := t.cfg
	return &c
}

// NewConn starts a polymux yamux session on nc, the server side if
// isServer, and returns it as a network.MuxedConn. Each stream, opened by
// either side, asks scope.BeginSpan for its memory manager: the span gets
// the stream's initial window at priority 255 (denied, the stream is
// refused) and its window growth at 128 (denied, the window stays), and
// everything back, with Done, when the stream ends. A nil scope leaves the
// Config's own MemoryManager, if any. The session owns nc from now on.
func (t *Transport) NewConn(nc net.Conn, isServer bool, scope network.PeerScope) (network.MuxedConn, error) {
	cfg := t.cfg
	if scope != nil {
		cfg.MemoryManager = func() (polymux.MemoryManager, error) { return beginSpan(scope) }
	}
	start := polymux.Client
	if isServer {
		start = polymux.Server
	}
	s, err := start(nc, &cfg)
	if err != nil {
		return nil, err
	}
	return &conn{s: s}, nil
}

// beginSpan opens the span that accounts one stream. A failed BeginSpan
// yields a nil MemoryManager, never a non-nil interface holding nil.
func beginSpan(scope network.PeerScope) (polymux.MemoryManager, error) {
	span, err := scope.BeginSpan()
	if err != nil {
		return nil, err
	}
	return span, nil
}
