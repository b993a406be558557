package polymuxp2p

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/polymux/polymux"
)

// recording is DefaultTransport, remembering the polymux sessions it
// started, so a test can tell that polymux carried a host's streams.
type recording struct {
	mu       sync.Mutex
	sessions []*polymux.Session
}

func (r *recording) NewConn(c net.Conn, isServer bool, scope network.PeerScope) (network.MuxedConn, error) {
	mc, err := DefaultTransport.NewConn(c, isServer, scope)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.sessions = append(r.sessions, session(mc))
	r.mu.Unlock()
	return mc, nil
}

// totals adds up the counters of every session started.
func (r *recording) totals() (sessions int, st polymux.Stats) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.sessions {
		x := s.Stats()
		st.StreamsOpened += x.StreamsOpened
		st.StreamsAccepted += x.StreamsAccepted
		st.BytesSent += x.BytesSent
		st.BytesReceived += x.BytesReceived
	}
	return len(r.sessions), st
}

const echoProtocol = protocol.ID("/polymux-test/echo/1.0.0")

// newTCPHost is a host on 127.0.0.1 with TCP alone, since QUIC would
// bypass the muxer; extra options pick the muxer.
func newTCPHost(t *testing.T, extra ...libp2p.Option) host.Host {
	t.Helper()
	opts := append([]libp2p.Option{
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
	}, extra...)
	h, err := libp2p.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	h.SetStreamHandler(echoProtocol, func(s network.Stream) {
		defer s.Close()
		s.SetDeadline(time.Now().Add(testTimeout))
		if _, err := io.Copy(s, s); err != nil {
			s.Reset()
		}
	})
	return h
}

func TestHostsEchoOverPolymuxAndGoYamux(t *testing.T) {
	// Whoever dials is the yamux client: polymux gets both roles.
	t.Run("polymux-host-dials", func(t *testing.T) { testHostsEcho(t, true) })
	t.Run("stock-host-dials", func(t *testing.T) { testHostsEcho(t, false) })
}

func testHostsEcho(t *testing.T, polymuxDials bool) {
	const streams, size = 64, 1 << 20
	rec := &recording{}
	pm := newTCPHost(t, libp2p.Muxer(ID, rec))
	stock := newTCPHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*testTimeout)
	defer cancel()
	dialer, listener := pm, stock
	if !polymuxDials {
		dialer, listener = stock, pm
	}
	if err := dialer.Connect(ctx, peer.AddrInfo{ID: listener.ID(), Addrs: listener.Addrs()}); err != nil {
		t.Fatal(err)
	}
	conns := pm.Network().ConnsToPeer(stock.ID())
	if len(conns) != 1 || conns[0].ConnState().StreamMultiplexer != ID || conns[0].ConnState().Transport != "tcp" {
		t.Fatalf("connections: %v, want one TCP connection muxed by %s", conns, ID)
	}

	// Each host opens as many streams to the other: both directions of
	// every stream carry size bytes, checked by hash.
	var wg sync.WaitGroup
	errs := make(chan error, 2*streams)
	for _, dir := range []struct {
		name     string
		from, to host.Host
	}{{"polymux host", pm, stock}, {"stock host", stock, pm}} {
		for i := range streams {
			wg.Go(func() {
				if err := echoThrough(ctx, dir.from, dir.to.ID(), size, uint64(i)); err != nil {
					errs <- fmt.Errorf("stream %d from the %s: %w", i, dir.name, err)
				}
			})
		}
	}
	waitAll(t, &wg, "the echo streams")
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}

	sessions, st := rec.totals()
	if sessions != 1 {
		t.Fatalf("polymux started %d sessions, want 1", sessions)
	}
	if st.StreamsOpened < streams || st.StreamsAccepted < streams {
		t.Fatalf("polymux opened %d and accepted %d streams, want at least %d each", st.StreamsOpened, st.StreamsAccepted, streams)
	}
	if want := uint64(2 * streams * size); st.BytesSent < want || st.BytesReceived < want {
		t.Fatalf("polymux sent %d and received %d bytes, want at least %d each", st.BytesSent, st.BytesReceived, want)
	}
}

// echoThrough opens an echo stream from h to p, sends size bytes made
// from seed, and checks that the same come back.
func echoThrough(ctx context.Context, h host.Host, p peer.ID, size int, seed uint64) error {
	s, err := h.NewStream(ctx, p, echoProtocol)
	if err != nil {
		return err
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(testTimeout))
	type result struct {
		n   int64
		sum [32]byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		n, sum, err := readHash(s)
		got <- result{n, sum, err}
	}()
	sum, err := writeRandom(s, size, seed)
	if err == nil {
		err = s.CloseWrite()
	}
	if err != nil {
		s.Reset()
		<-got
		return err
	}
	r := <-got
	switch {
	case r.err != nil:
		return r.err
	case r.n != int64(size) || r.sum != sum:
		return errors.New("the echo differs from what was sent")
	}
	return nil
}
