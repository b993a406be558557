package polymuxp2p

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	goyamux "github.com/libp2p/go-libp2p/p2p/muxer/yamux"
)

// pairing is who runs each end of a connection in a test: polymux alone,
// or polymux against go-yamux on either side.
type pairing struct {
	name           string
	server, client network.Multiplexer
}

func pairings() []pairing {
	return []pairing{
		{"polymux-polymux", DefaultTransport, DefaultTransport},
		{"polymux-server-go-yamux-client", DefaultTransport, goyamux.DefaultTransport},
		{"go-yamux-server-polymux-client", goyamux.DefaultTransport, DefaultTransport},
	}
}

// scopeFor is a meter for a polymux end and nil for go-yamux's, whose
// spans rely on Done to release what they hold (as go-libp2p's resource
// manager allows) and so would fail the meter's stricter check.
func scopeFor(tr network.Multiplexer, m *meter) network.PeerScope {
	if tr == network.Multiplexer(goyamux.DefaultTransport) {
		return nil
	}
	return m
}

func TestMemoryIsAllReleasedWhenTheConnectionCloses(t *testing.T) {
	for _, p := range pairings() {
		t.Run(p.name, func(t *testing.T) {
			srvMeter, cliMeter := newMeter(-1), newMeter(-1)
			srv, cli := muxPair(t, p.server, p.client, scopeFor(p.server, srvMeter), scopeFor(p.client, cliMeter), 2*time.Millisecond)
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			for _, dir := range [][2]network.MuxedConn{{cli, srv}, {srv, cli}} {
				opener, acceptor := dir[0], dir[1]
				// Bulk both ways on streams closed as they should be: their
				// windows grow, at priority 128.
				for i := range 4 {
					a, b := opened(t, opener, acceptor)
					wg.Add(2)
					go func() { defer wg.Done(); errs <- echoOnce(b) }()
					go func() { defer wg.Done(); errs <- sendAndCheckEcho(a, 4<<20, uint64(i)) }()
				}
				// Reset by either end, with data in flight.
				for range 4 {
					// The accepting end is never closed: the session's end
					// must release it.
					a, _ := opened(t, opener, acceptor)
					a.Write(make([]byte, 100<<10))
					a.Reset()
					c, d := opened(t, opener, acceptor)
					c.Write(make([]byte, 100<<10))
					d.ResetWithError(7)
				}
				// Left open with unread data, as go-libp2p's
				// SubtestStreamLeftOpen leaves them.
				for range 4 {
					a, _ := opened(t, opener, acceptor)
					if _, err := a.Write(make([]byte, 100<<10)); err != nil {
						t.Fatal(err)
					}
				}
			}
			waitAll(t, &wg, "the bulk streams")
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			closeAll(t, cli, srv)
			waitEnded(t, cli)
			waitEnded(t, srv)
			for _, m := range []struct {
				name string
				tr   network.Multiplexer
				m    *meter
			}{{"server", p.server, srvMeter}, {"client", p.client, cliMeter}} {
				if m.tr == network.Multiplexer(goyamux.DefaultTransport) {
					continue
				}
				m.m.check(t)
				spans, reserves, grown := m.m.counts()
				if spans < 2*(4+8+4) || reserves < spans {
					t.Fatalf("%s: %d spans, %d reservations: the streams were not accounted", m.name, spans, reserves)
				}
				if grown == 0 {
					t.Fatalf("%s: no window growth was reserved: the test missed the priority-128 path", m.name)
				}
			}
		})
	}
}

// echoOnce reads st to its end, writes it all back, and closes st.
func echoOnce(st network.MuxedStream) error {
	defer st.Close()
	st.SetDeadline(time.Now().Add(testTimeout))
	data, err := io.ReadAll(st)
	if err != nil {
		return err
	}
	_, err = st.Write(data)
	return err
}

// sendAndCheckEcho writes size bytes on st, half-closes it, and checks
// that the same bytes come back.
func sendAndCheckEcho(st network.MuxedStream, size int, seed uint64) error {
	defer st.Close()
	st.SetDeadline(time.Now().Add(testTimeout))
	sum, err := writeRandom(st, size, seed)
	if err != nil {
		return err
	}
	if err := st.CloseWrite(); err != nil {
		return err
	}
	n, got, err := readHash(st)
	if err != nil {
		return err
	}
	if n != int64(size) || got != sum {
		return errors.New("the echo differs from what was sent")
	}
	return nil
}

func TestAResourceManagerDenialOfTheInitialWindowRefusesTheStream(t *testing.T) {
	for _, p := range pairings() {
		for _, denier := range []string{"server", "client"} {
			tr := p.server
			if denier == "client" {
				tr = p.client
			}
			if tr == network.Multiplexer(goyamux.DefaultTransport) {
				continue
			}
			t.Run(p.name+"/denied-on-the-"+denier, func(t *testing.T) {
				srvMeter, cliMeter := newMeter(-1), newMeter(-1)
				if denier == "server" {
					srvMeter.deny = 255
				} else {
					cliMeter.deny = 255
				}
				srv, cli := muxPair(t, p.server, p.client, scopeFor(p.server, srvMeter), scopeFor(p.client, cliMeter), 0)
				local, other := srv, cli
				if denier == "client" {
					local, other = cli, srv
				}
				ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
				defer cancel()
				// This side's own open fails with the manager's error.
				if _, err := local.OpenStream(ctx); !errors.Is(err, network.ErrResourceLimitExceeded) {
					t.Fatalf("OpenStream with the initial window denied: %v, want ErrResourceLimitExceeded", err)
				}
				// The peer's open is refused, and the peer sees a reset.
				st, err := other.OpenStream(ctx)
				if err != nil {
					t.Fatal(err)
				}
				st.SetDeadline(time.Now().Add(testTimeout))
				st.Write([]byte("x"))
				if _, err := st.Read(make([]byte, 1)); !errors.Is(err, network.ErrReset) {
					t.Fatalf("the peer's Read on a refused stream: %v, want network.ErrReset", err)
				}
				st.Close()
				closeAll(t, cli, srv)
				waitEnded(t, cli)
				waitEnded(t, srv)
				for _, m := range []*meter{srvMeter, cliMeter} {
					m.check(t)
				}
			})
		}
	}
}

func TestAResourceManagerDenialOfGrowthLeavesTheWindowAsItIs(t *testing.T) {
	srvMeter, cliMeter := newMeter(128), newMeter(128)
	srv, cli := muxPair(t, DefaultTransport, DefaultTransport, srvMeter, cliMeter, 2*time.Millisecond)
	a, b := opened(t, cli, srv)
	errs := make(chan error, 2)
	go func() { errs <- echoOnce(b) }()
	go func() { errs <- sendAndCheckEcho(a, 8<<20, 1) }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	closeAll(t, cli)
	waitEnded(t, cli)
	waitEnded(t, srv)
	for _, m := range []*meter{srvMeter, cliMeter} {
		m.check(t)
		if _, _, grown := m.counts(); grown != 0 {
			t.Fatalf("%d bytes of growth reserved though every growth was denied", grown)
		}
		m.mu.Lock()
		denied := m.denied
		m.mu.Unlock()
		if denied == 0 {
			t.Fatal("no growth was asked for: the test missed the priority-128 path")
		}
	}
}
