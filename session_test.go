package polymux

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/polymux/polymux/internal/wire"
)

func TestStreamsOpenedFromBothSidesAtOnceAllEcho(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		waitC := acceptLoop(cli, echo)
		waitS := acceptLoop(srv, echo)
		const n = 50
		var wg sync.WaitGroup
		errs := make(chan error, 2*n)
		for i := range 2 * n {
			from := cli
			if i%2 == 1 {
				from = srv
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				st, err := from.OpenStream(ctx(t))
				if err != nil {
					errs <- err
					return
				}
				defer st.Close()
				errs <- roundTrip(st, randomBytes(1000+i))
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if got := cli.Stats().StreamsOpened + srv.Stats().StreamsOpened; got != 2*n {
			t.Fatalf("streams opened = %d, want %d", got, 2*n)
		}
		cli.Close()
		srv.Close()
		waitC()
		waitS()
	})
}

func TestThousandConcurrentStreamsEchoRandomDataVerifiedByHash(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		// Protocols without acknowledgements let the opener run ahead of
		// the acceptor, so give the backlog room for all of them.
		cli, srv := e.pair(t, nil, e.cfg(func(c *Config) { c.AcceptBacklog = 1000 }))
		wait := acceptLoop(srv, echo)
		const n = 1000
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				st, err := cli.OpenStream(ctx(t))
				if err != nil {
					errs <- err
					return
				}
				defer st.Close()
				errs <- roundTrip(st, randomBytes(1+rand.IntN(16<<10)+i))
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if got := srv.Stats().StreamsAccepted; got != n {
			t.Fatalf("server accepted %d streams, want %d", got, n)
		}
		cli.Close()
		wait()
	})
}

func TestHalfCloseWorksInBothDirections(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		for _, dir := range []struct {
			name     string
			from, to *Session
		}{{"client opens", cli, srv}, {"server opens", srv, cli}} {
			t.Run(dir.name, func(t *testing.T) {
				a, b := openAccept(t, dir.from, dir.to)
				request := randomBytes(300 << 10)
				go func() {
					a.Write(request)
					a.CloseWrite()
				}()
				got, err := io.ReadAll(b)
				if err != nil || !bytes.Equal(got, request) {
					t.Fatalf("request: %d bytes, err %v", len(got), err)
				}
				// b's peer half-closed: b can still write, and a still reads.
				reply := randomBytes(200 << 10)
				go func() {
					b.Write(reply)
					b.CloseWrite()
				}()
				got, err = io.ReadAll(a)
				if err != nil || !bytes.Equal(got, reply) {
					t.Fatalf("reply: %d bytes, err %v", len(got), err)
				}
				if _, err := a.Write([]byte("x")); !errors.Is(err, ErrWriteClosed) {
					t.Fatalf("write after CloseWrite: %v, want ErrWriteClosed", err)
				}
				eventually(t, 5*time.Second, "both streams forgotten", func() bool {
					return dir.from.NumStreams() == 0 && dir.to.NumStreams() == 0
				})
				a.Close()
				b.Close()
			})
		}
	})
}

func TestResetFailsThePeersReadAndWriteInBothDirections(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		for _, dir := range []struct {
			name     string
			from, to *Session
		}{{"client resets", cli, srv}, {"server resets", srv, cli}} {
			t.Run(dir.name, func(t *testing.T) {
				a, b := openAccept(t, cli, srv)
				if dir.from == srv {
					a, b = b, a
				}
				readErr := make(chan error, 1)
				go func() {
					_, err := b.Read(make([]byte, 10))
					readErr <- err
				}()
				if err := a.Reset(); err != nil {
					t.Fatal(err)
				}
				// smux has no RST: Reset sends FIN, so the peer reads EOF.
				want := error(ErrStreamReset)
				if !e.caps().Reset {
					want = io.EOF
				}
				select {
				case err := <-readErr:
					if !errors.Is(err, want) {
						t.Fatalf("peer Read after reset: %v, want %v", err, want)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("peer Read not woken by reset")
				}
				if e.caps().Reset {
					if _, err := b.Write([]byte("late")); !errors.Is(err, ErrStreamReset) {
						t.Fatalf("peer Write after reset: %v, want ErrStreamReset", err)
					}
				} else {
					b.Close() // smux: the peer learns nothing more; it closes.
				}
				if _, err := a.Read(make([]byte, 1)); !errors.Is(err, ErrStreamReset) {
					t.Fatalf("own Read after reset: %v", err)
				}
				eventually(t, 5*time.Second, "reset streams forgotten", func() bool {
					return cli.NumStreams() == 0 && srv.NumStreams() == 0
				})
			})
		}
	})
}

func TestAFullAcceptBacklogRefusesOnlyWhereTheOpenerSeesIt(t *testing.T) {
	// Ten opens against a backlog of four. yamux refuses the six with RST
	// (a yamux opener that kept to the backlog would have waited for
	// ACKs); muxado lets them all wait for Accept; smux, which cannot
	// refuse, stops reading until the application accepts. Either way
	// no open is lost.
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, e.cfg(func(c *Config) { c.AcceptBacklog = 4 }))
		var streams []*Stream
		for range 10 {
			st, err := cli.OpenStream(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.Write([]byte{byte(st.ID())}); err != nil {
				t.Fatal(err)
			}
			streams = append(streams, st)
		}
		waiting := 10
		if e.caps().AckOpens {
			waiting = 4
			for _, st := range streams[4:] {
				st.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := st.Read(make([]byte, 1)); !errors.Is(err, ErrStreamRefused) {
					t.Errorf("stream %d past the backlog: Read = %v, want ErrStreamRefused", st.ID(), err)
				}
			}
			if got := srv.Stats().StreamsRefused; got != 6 {
				t.Fatalf("server counted %d refusals, want 6", got)
			}
		} else if !e.caps().Reset {
			eventually(t, 5*time.Second, "the server pausing at the backlog", func() bool { return srv.paused.Load() })
			if got := srv.Stats().StreamsAccepted; got != 4 {
				t.Fatalf("%d streams taken while the backlog of 4 was full", got)
			}
		}
		// Accept them all before reading any: on smux the data of a stream
		// taken first may sit behind the opens still waiting.
		var accepted []*Stream
		for i := range waiting {
			b, err := srv.AcceptStream(ctx(t))
			if err != nil || b.ID() != streams[i].ID() {
				t.Fatalf("accept %d: %v %v", i, b, err)
			}
			accepted = append(accepted, b)
		}
		for _, b := range accepted {
			buf := make([]byte, 1)
			if _, err := io.ReadFull(b, buf); err != nil || buf[0] != byte(b.ID()) {
				t.Fatalf("stream %d: read %v %v", b.ID(), buf, err)
			}
		}
		if got := srv.Stats().StreamsRefused; !e.caps().AckOpens && got != 0 {
			t.Fatalf("%d streams refused", got)
		}
	})
}

func TestStreamsPastMaxIncomingStreamsAreRefused(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, e.cfg(func(c *Config) { c.MaxIncomingStreams = 3 }))
		var open []*Stream
		for range 3 {
			a, b := openAccept(t, cli, srv)
			open = append(open, a, b)
		}
		extra, err := cli.OpenStream(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		want := error(ErrStreamRefused)
		if !e.caps().Reset {
			want = io.EOF
		}
		extra.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := extra.Read(make([]byte, 1)); !errors.Is(err, want) {
			t.Fatalf("fourth stream: %v, want %v", err, want)
		}
		if got := srv.Stats().StreamsRefused; got != 1 {
			t.Fatalf("StreamsRefused = %d, want 1", got)
		}
		// Closing one makes room for another.
		open[0].Close()
		open[1].Close()
		eventually(t, 5*time.Second, "closed stream forgotten", func() bool { return srv.NumStreams() == 2 })
		a, b := openAccept(t, cli, srv)
		if err := roundTripOnce(a, b); err != nil {
			t.Fatal(err)
		}
	})
}

// roundTripOnce sends a few bytes from a to b and back.
func roundTripOnce(a, b *Stream) error {
	if _, err := a.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(b, buf); err != nil {
		return err
	}
	if _, err := b.Write(buf); err != nil {
		return err
	}
	_, err := io.ReadFull(a, buf)
	return err
}

func TestAStreamNobodyReadsDoesNotSlowTheOthers(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		if e.caps().Window == wire.WindowNone {
			testUnreadStreamStallsSessionWithoutWindows(t, e)
			return
		}
		cli, srv := e.pair(t, nil, nil)
		stuck, _ := openAccept(t, cli, srv)
		// Fill the stuck stream's window: exactly the window is accepted.
		stuck.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := stuck.Write(make([]byte, 1<<20))
		if !errors.Is(err, ErrTimeout) || n != protocolWindow {
			t.Fatalf("write to an unread stream: n=%d err=%v; want n=%d and a timeout", n, err, protocolWindow)
		}
		a, b := openAccept(t, cli, srv)
		const total = 64 << 20
		go func() {
			buf := make([]byte, 64<<10)
			for sent := 0; sent < total; sent += len(buf) {
				if _, err := a.Write(buf); err != nil {
					return
				}
			}
			a.CloseWrite()
		}()
		got, err := io.Copy(io.Discard, b)
		if err != nil || got != total {
			t.Fatalf("other stream moved %d bytes (err %v), want %d", got, err, total)
		}
		if buffered := srv.Stats().BufferedBytes; buffered != protocolWindow {
			t.Fatalf("server buffers %d bytes, want just the stuck stream's window %d", buffered, protocolWindow)
		}
	})
}

// testUnreadStreamStallsSessionWithoutWindows shows the documented limit
// of smux v1, which has no per-stream windows: once a stream nobody reads
// holds MaxSessionBuffer, the session stops reading the connection, so the
// other streams stall too, until the application reads.
func testUnreadStreamStallsSessionWithoutWindows(t *testing.T, e env) {
	const budget = protocolWindow
	cli, srv := e.pair(t, nil, e.cfg(func(c *Config) { c.MaxSessionBuffer = budget }))
	stuck, stuckPeer := openAccept(t, cli, srv)
	other, otherPeer := openAccept(t, cli, srv)
	sent := fillUntilBlocked(t, stuck)
	if got := srv.Stats().BufferedBytes; got > budget {
		t.Fatalf("server buffers %d bytes, more than MaxSessionBuffer %d", got, budget)
	}
	if _, err := other.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	otherPeer.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := otherPeer.Read(make([]byte, 5)); !errors.Is(err, ErrTimeout) {
		t.Fatalf("the other stream read %d bytes (err %v) while the session was stalled", n, err)
	}
	// Reading the stuck stream releases the session.
	go io.CopyN(io.Discard, stuckPeer, int64(sent))
	otherPeer.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(otherPeer, make([]byte, 5)); err != nil {
		t.Fatalf("the other stream after the stuck one was read: %v", err)
	}
}

func TestReadDeadlineTimesOutAndCanBeCleared(t *testing.T) {
	forEachTimed(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		a, b := openAccept(t, cli, srv)
		b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := b.Read(make([]byte, 1))
		var ne net.Error
		if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.Is(err, ErrTimeout) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("Read past deadline: %v", err)
		}
		// A deadline in the past fails at once, even with data pending.
		if _, err := a.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "the byte to arrive", func() bool { return srv.Stats().BufferedBytes+cli.Stats().BufferedBytes > 0 })
		b.SetReadDeadline(time.Now().Add(-time.Second))
		if _, err := b.Read(make([]byte, 1)); !errors.Is(err, ErrTimeout) {
			t.Fatalf("past deadline with data pending: %v", err)
		}
		b.SetReadDeadline(time.Time{})
		if _, err := io.ReadFull(b, make([]byte, 1)); err != nil {
			t.Fatalf("the pending byte after clearing the deadline: %v", err)
		}
		b.SetReadDeadline(time.Time{})
		if err := roundTripOnce(a, b); err != nil {
			t.Fatalf("after clearing the deadline: %v", err)
		}
		// A deadline set while Read is blocked wakes it.
		errc := make(chan error, 1)
		go func() {
			_, err := b.Read(make([]byte, 1))
			errc <- err
		}()
		time.Sleep(20 * time.Millisecond)
		b.SetReadDeadline(time.Now())
		select {
		case err := <-errc:
			if !errors.Is(err, ErrTimeout) {
				t.Fatalf("blocked Read: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("blocked Read not woken by a new deadline")
		}
	})
}

func TestWriteTimeoutReportsExactlyWhatWillBeDelivered(t *testing.T) {
	forEachTimed(t, func(t *testing.T, e env) {
		srvCfg, size := e.cfg(nil), 1<<20
		if e.caps().Window == wire.WindowNone {
			// No window: the write blocks once the session buffer and the
			// connection's own buffers are full.
			srvCfg.MaxSessionBuffer, size = protocolWindow, 32<<20
		}
		cli, srv := e.pair(t, nil, srvCfg)
		a, b := openAccept(t, cli, srv)
		data := randomBytes(size)
		a.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := a.Write(data)
		if !errors.Is(err, ErrTimeout) || n == 0 || n == len(data) {
			t.Fatalf("Write with the peer not reading: n=%d err=%v", n, err)
		}
		// Exactly n bytes arrive, and nothing more.
		got := make([]byte, n)
		if _, err := io.ReadFull(b, got); err != nil || !bytes.Equal(got, data[:n]) {
			t.Fatalf("reading the %d accepted bytes: %v", n, err)
		}
		b.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if k, err := b.Read(make([]byte, 1)); !errors.Is(err, ErrTimeout) {
			t.Fatalf("%d bytes past n arrived (err %v)", k, err)
		}
		b.SetReadDeadline(time.Time{})
		// Retrying the rest delivers everything in order, once.
		a.SetWriteDeadline(time.Time{})
		go func() {
			a.Write(data[n:])
			a.CloseWrite()
		}()
		rest, err := io.ReadAll(b)
		if err != nil || !bytes.Equal(rest, data[n:]) {
			t.Fatalf("retry delivered %d bytes, want %d (err %v)", len(rest), len(data)-n, err)
		}
	})
}

func TestKeepaliveClosesASessionWhosePeerStopsAnswering(t *testing.T) {
	for _, proto := range protocols {
		t.Run(proto.String(), func(t *testing.T) {
			checkLeaks(t)
			timed(t, func(t *testing.T) { keepaliveAgainstASilentPeer(t, proto) })
		})
	}
}

// keepaliveAgainstASilentPeer checks that a session whose peer reads but
// never answers ends by keepalive (or, on muxado, stays).
func keepaliveAgainstASilentPeer(t *testing.T, proto Protocol) {
	cfg := &Config{KeepAliveInterval: 50 * time.Millisecond, KeepAliveTimeout: 100 * time.Millisecond}
	s, peer := newRawPeer(t, proto, false, cfg)
	peer.drain() // reads everything, answers nothing
	c, _ := codecFor(proto)
	if !c.Caps().PingReply && !c.Caps().KeepAliveNop {
		// muxado has no liveness on the wire: a silent peer is
		// indistinguishable from an idle one, so the session stays.
		time.Sleep(500 * time.Millisecond)
		if s.IsClosed() {
			t.Fatalf("muxado session closed: %v", s.Err())
		}
		return
	}
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("session still open 5 s after its peer stopped answering")
	}
	if err := s.Err(); !errors.Is(err, ErrKeepAliveTimeout) || !errors.Is(err, ErrSessionClosed) {
		t.Fatalf("Err() = %v, want ErrKeepAliveTimeout", err)
	}
}

func TestKeepaliveKeepsAnIdleSessionWithALivePeer(t *testing.T) {
	forEachTimed(t, func(t *testing.T, e env) {
		ka := e.cfg(func(c *Config) {
			c.KeepAliveInterval = 20 * time.Millisecond
			c.KeepAliveTimeout = 200 * time.Millisecond
		})
		cli, srv := e.pair(t, ka, ka)
		time.Sleep(300 * time.Millisecond)
		if cli.IsClosed() || srv.IsClosed() {
			t.Fatalf("idle session closed: %v / %v", cli.Err(), srv.Err())
		}
		// Probes went out and were answered: pings and their replies
		// (yamux), NOPs (smux). (In a synctest bubble a round trip takes
		// no time, so the frames, not the RTT, show it.)
		if (e.caps().PingReply || e.caps().KeepAliveNop) && srv.Stats().FramesReceived < 3 {
			t.Fatalf("only %d frames (probes) received in 300 ms with a 20 ms interval", srv.Stats().FramesReceived)
		}
		if e.tr.name == "tcp" && e.caps().PingReply && cli.Stats().RTT <= 0 {
			t.Fatal("keepalive pings measured no round trip")
		}
	})
}

func TestPingMeasuresARoundTrip(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		if !e.caps().PingReply {
			if _, err := cli.Ping(ctx(t)); !errors.Is(err, errors.ErrUnsupported) {
				t.Fatalf("Ping on %v: %v, want errors.ErrUnsupported", e.proto, err)
			}
			return
		}
		for _, s := range []*Session{cli, srv} {
			rtt, err := s.Ping(ctx(t))
			if err != nil || rtt <= 0 {
				t.Fatalf("Ping = %v, %v", rtt, err)
			}
			if s.Stats().RTT != rtt {
				t.Fatalf("Stats.RTT = %v, Ping returned %v", s.Stats().RTT, rtt)
			}
		}
	})
}

func TestGoAwayStopsNewStreamsButLetsOpenOnesFinish(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		a, b := openAccept(t, cli, srv)
		if !e.caps().GoAway {
			// smux has no GoAway frame: the call says so, and the streams
			// the client opens from now on are closed at once.
			if err := srv.GoAway(); !errors.Is(err, errors.ErrUnsupported) {
				t.Fatalf("GoAway on %v: %v, want errors.ErrUnsupported", e.proto, err)
			}
			late, err := cli.OpenStream(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			late.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := late.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("stream opened after GoAway: %v, want io.EOF", err)
			}
		} else {
			if err := srv.GoAway(); err != nil {
				t.Fatal(err)
			}
			eventually(t, 5*time.Second, "client to learn of GoAway", func() bool {
				_, err := cli.OpenStream(ctx(t))
				return errors.Is(err, ErrGoAway)
			})
		}
		if err := roundTripOnce(a, b); err != nil {
			t.Fatalf("open stream after GoAway: %v", err)
		}
		// The server may still open streams of its own.
		c, d := openAccept(t, srv, cli)
		if err := roundTripOnce(c, d); err != nil {
			t.Fatal(err)
		}
	})
}

func TestCloseWakesEveryBlockedCall(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		// A short linger: the smux v1 server reads nothing more, so the
		// data queued on w can never be delivered.
		cli, srv := e.pair(t, e.cfg(func(c *Config) { c.AcceptBacklog = 1; c.CloseLinger = time.Second }),
			e.cfg(func(c *Config) { c.MaxSessionBuffer = protocolWindow }))
		r, _ := openAccept(t, cli, srv)
		w, wPeer := openAccept(t, cli, srv)
		fillUntilBlocked(t, w)

		calls := map[string]func() error{
			"Read":   func() error { _, err := r.Read(make([]byte, 1)); return err },
			"Write":  func() error { _, err := w.Write(make([]byte, 1)); return err },
			"Accept": func() error { _, err := cli.AcceptStream(context.Background()); return err },
		}
		if e.caps().AckOpens {
			// A stream never accepted fills the one-slot un-ACKed backlog,
			// so the next open blocks.
			if _, err := cli.OpenStream(ctx(t)); err != nil {
				t.Fatal(err)
			}
			calls["Open"] = func() error { _, err := cli.OpenStream(context.Background()); return err }
		}
		errs := make(chan error, len(calls))
		for name, call := range calls {
			go func() { errs <- fmt.Errorf("%s: %w", name, call()) }()
		}
		time.Sleep(50 * time.Millisecond)
		within(t, 5*time.Second, "Close", func() { cli.Close() })
		for range calls {
			select {
			case err := <-errs:
				if !errors.Is(err, net.ErrClosed) && !errors.Is(err, ErrStreamReset) {
					t.Errorf("%v: want an error matching net.ErrClosed", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("a blocked call was not woken by Close")
			}
		}
		if !errors.Is(cli.Err(), ErrSessionClosed) {
			t.Fatalf("Err() = %v", cli.Err())
		}
		if e.caps().Window == wire.WindowNone {
			// smux v1: the server stopped reading the connection when the
			// unread stream filled its buffer, so it learns of the close
			// only once the application reads that stream.
			time.Sleep(50 * time.Millisecond)
			if srv.IsClosed() {
				t.Fatal("a stalled smux v1 session saw the close without reading")
			}
			go io.Copy(io.Discard, wPeer)
		}
		select {
		case <-srv.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("the peer session did not end after Close")
		}
	})
}

func TestOpenTimeoutResetsOnlyTheUnacknowledgedStream(t *testing.T) {
	forEachTimed(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, e.cfg(func(c *Config) { c.StreamOpenTimeout = 100 * time.Millisecond }), nil)
		st, err := cli.OpenStream(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if !e.caps().AckOpens {
			// Opens are never acknowledged, so nothing times out: the
			// stream still works once the peer accepts it.
			time.Sleep(200 * time.Millisecond)
			b, err := srv.AcceptStream(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			if err := roundTripOnce(st, b); err != nil {
				t.Fatalf("stream after StreamOpenTimeout without acknowledgements: %v", err)
			}
			return
		}
		st.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := st.Read(make([]byte, 1)); !errors.Is(err, ErrOpenTimeout) || !errors.Is(err, ErrStreamReset) {
			t.Fatalf("unacknowledged stream: %v, want ErrOpenTimeout", err)
		}
		if cli.IsClosed() {
			t.Fatalf("the session closed: %v", cli.Err())
		}
		// The server's accept backlog had the stream, then its reset: it is
		// gone, and a new stream works.
		eventually(t, 5*time.Second, "reset stream forgotten", func() bool { return srv.NumStreams() == 0 })
		a, b := openAccept(t, cli, srv)
		if err := roundTripOnce(a, b); err != nil {
			t.Fatal(err)
		}
	})
}

func TestCloseTimeoutResetsAStreamWhosePeerNeverCloses(t *testing.T) {
	forEachTimed(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, e.cfg(func(c *Config) { c.StreamCloseTimeout = 100 * time.Millisecond }), nil)
		a, b := openAccept(t, cli, srv)
		a.Close()
		if _, err := io.ReadAll(b); err != nil {
			t.Fatalf("peer reads to EOF after Close: %v", err)
		}
		// b never closes; after the timeout the stream is reset, so its
		// writes fail (smux, without RST, just forgets it).
		if e.caps().Reset {
			eventually(t, 5*time.Second, "the stream to be reset", func() bool {
				_, err := b.Write([]byte("x"))
				return errors.Is(err, ErrStreamReset)
			})
		} else {
			eventually(t, 5*time.Second, "the client to forget the stream", func() bool { return cli.NumStreams() == 0 })
			b.Close()
		}
		eventually(t, 5*time.Second, "streams forgotten", func() bool { return cli.NumStreams() == 0 && srv.NumStreams() == 0 })
	})
}

func TestCloseWithUnreadDataResetsThePeer(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		a, b := openAccept(t, cli, srv)
		if _, err := a.Write([]byte("unread")); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "data to arrive", func() bool { return srv.Stats().BufferedBytes == 6 })
		b.Close()
		if e.caps().Reset {
			eventually(t, 5*time.Second, "writer to see the reset", func() bool {
				_, err := a.Write([]byte("more"))
				return errors.Is(err, ErrStreamReset)
			})
		} else if _, err := io.ReadAll(a); err != nil { // smux: only FIN
			t.Fatal(err)
		}
		if got := srv.Stats().BufferedBytes; got != 0 {
			t.Fatalf("%d bytes still buffered after Close", got)
		}
	})
}

func TestBufferedPeakKeepsTheHighWaterMark(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		a, b := openAccept(t, cli, srv)
		if got := srv.Stats().BufferedPeak; got != 0 {
			t.Fatalf("BufferedPeak %d before any data", got)
		}
		for _, size := range []int{3000, 1000} {
			if _, err := a.Write(make([]byte, size)); err != nil {
				t.Fatal(err)
			}
			eventually(t, 5*time.Second, "data to arrive", func() bool { return srv.Stats().BufferedBytes == int64(size) })
			if _, err := io.ReadFull(b, make([]byte, size)); err != nil {
				t.Fatal(err)
			}
		}
		st := srv.Stats()
		if st.BufferedBytes != 0 || st.BufferedPeak != 3000 {
			t.Fatalf("after reading everything: BufferedBytes %d, BufferedPeak %d; want 0 and 3000", st.BufferedBytes, st.BufferedPeak)
		}
	})
}

func TestCloseReadDropsDataAndKeepsThePeerWriting(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		a, b := openAccept(t, cli, srv)
		b.CloseRead()
		if _, err := b.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("Read after CloseRead: %v, want io.EOF", err)
		}
		// Far more than a window: the dropped bytes still return credit.
		if _, err := a.Write(make([]byte, 4<<20)); err != nil {
			t.Fatal(err)
		}
		if err := a.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		// b can still write.
		go func() {
			b.Write([]byte("still here"))
			b.CloseWrite()
		}()
		got, err := io.ReadAll(a)
		if err != nil || string(got) != "still here" {
			t.Fatalf("a read %q, %v", got, err)
		}
		if buffered := srv.Stats().BufferedBytes; buffered != 0 {
			t.Fatalf("%d bytes buffered after CloseRead", buffered)
		}
	})
}

func TestSessionBufferBoundsUnreadDataAcrossStreams(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		const budget = 2 * protocolWindow
		cli, srv := e.pair(t, nil, e.cfg(func(c *Config) { c.MaxSessionBuffer = budget }))
		var streams, peers []*Stream
		for range 4 {
			a, b := openAccept(t, cli, srv)
			streams, peers = append(streams, a), append(peers, b)
		}
		accepted := make([]int, len(streams))
		for i, a := range streams {
			a.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
			accepted[i], _ = a.Write(make([]byte, protocolWindow))
		}
		if got := srv.Stats().BufferedBytes; got > budget {
			t.Fatalf("server buffers %d bytes, budget %d", got, budget)
		}
		reset := 0
		for i, a := range streams {
			n, err := a.Write([]byte("x"))
			accepted[i] += n
			if errors.Is(err, ErrStreamReset) {
				reset++
			}
		}
		if e.caps().Reset {
			if reset < 2 {
				t.Fatalf("%d streams reset; at least 2 of 4 cannot fit a %d-byte budget", reset, budget)
			}
			return
		}
		// smux cannot reset: the session stops reading instead, until the
		// application reads, and then every byte arrives.
		if reset != 0 {
			t.Fatalf("%d streams reset on a protocol without RST", reset)
		}
		// Concurrently: with no per-stream windows, a stream's last bytes
		// may sit behind the other streams' data.
		errs := make(chan error, len(peers))
		for i, b := range peers {
			go func() {
				b.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, err := io.ReadFull(b, make([]byte, accepted[i]))
				errs <- err
			}()
		}
		for i := range peers {
			if err := <-errs; err != nil {
				t.Fatalf("stream %d after the stall: %v", i, err)
			}
		}
	})
}

func TestStatsCountStreamsBytesAndFrames(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		a, b := openAccept(t, cli, srv)
		if err := roundTripOnce(a, b); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "counters to settle", func() bool {
			c, s := cli.Stats(), srv.Stats()
			return c.BytesReceived == 4 && s.BytesReceived == 4 && c.BytesSent == 4 && s.BytesSent == 4
		})
		cs, ss := cli.Stats(), srv.Stats()
		if cs.Protocol != e.proto || cs.StreamsOpened != 1 || ss.StreamsAccepted != 1 || cs.ActiveStreams != 1 ||
			cs.BytesSent != 4 || ss.BytesSent != 4 || cs.FramesSent < 2 || ss.FramesReceived < 2 {
			t.Fatalf("client %+v\nserver %+v", cs, ss)
		}
	})
}

func TestAGoroutineFreeStreamModel(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		before := runtime.NumGoroutine()
		cli, srv := e.pair(t, nil, nil)
		perSession := (runtime.NumGoroutine() - before) / 2
		if perSession > 3 {
			t.Fatalf("%d goroutines per session, want at most 3", perSession)
		}
		mid := runtime.NumGoroutine()
		var streams []*Stream
		for range 100 {
			a, b := openAccept(t, cli, srv)
			streams = append(streams, a, b)
		}
		// A writer goroutine may still be at work on the last frames (it
		// runs only while there is something to send): the count must
		// come back down, with 200 streams open.
		eventually(t, 5*time.Second, "no goroutine per open stream", func() bool {
			return runtime.NumGoroutine() <= mid
		})
		for _, st := range streams {
			st.Close()
		}
	})
}
