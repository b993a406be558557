package polymuxp2p

import (
	"net"
	"testing"

	"github.com/libp2p/go-libp2p/core/network"
	tmux "github.com/libp2p/go-libp2p/p2p/muxer/testsuite"
	goyamux "github.com/libp2p/go-libp2p/p2p/muxer/yamux"
)

// byRole is a network.Multiplexer that runs one muxer on the server side
// of every connection and another on the client side, so that go-libp2p's
// muxer suite, whose tests build both ends from one Multiplexer, tests
// polymux against go-yamux.
type byRole struct {
	server, client network.Multiplexer
}

func (m byRole) NewConn(c net.Conn, isServer bool, scope network.PeerScope) (network.MuxedConn, error) {
	if isServer {
		return m.server.NewConn(c, isServer, scope)
	}
	return m.client.NewConn(c, isServer, scope)
}

// The suite runs every subtest in tmux.Subtests, the long stress tests
// included: unlike go-libp2p's own yamux test, nothing is deleted.

func TestMuxerSuitePolymux(t *testing.T) {
	tmux.SubtestAll(t, DefaultTransport)
}

func TestMuxerSuitePolymuxServerGoYamuxClient(t *testing.T) {
	tmux.SubtestAll(t, byRole{server: DefaultTransport, client: goyamux.DefaultTransport})
}

func TestMuxerSuiteGoYamuxServerPolymuxClient(t *testing.T) {
	tmux.SubtestAll(t, byRole{server: goyamux.DefaultTransport, client: DefaultTransport})
}
