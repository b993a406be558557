package polymux

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/polymux/polymux/internal/wire"
)

// rawPeer returns a server session of the environment's protocol on one
// end of a new connection pair and a raw peer on the other.
func (e env) rawPeer(t testing.TB, cfg *Config) (*Session, *rawPeer) {
	t.Helper()
	c1, c2 := e.tr.pair(t)
	if cfg == nil {
		cfg = &Config{}
	}
	cfg.Protocol = e.proto
	s, err := Server(c1, cfg)
	if err != nil {
		t.Fatal(err)
	}
	codec, _ := codecFor(e.proto)
	p := &rawPeer{t: t, conn: c2, codec: codec, br: bufio.NewReader(c2)}
	t.Cleanup(func() {
		s.Close()
		c2.Close()
	})
	return s, p
}

// closeSizes are the sizes written just before Close in the tests of a
// graceful close.
var closeSizes = []int{1, 1000, 100_000, 1_000_000, 8_000_000}

func TestWriteThenCloseThenSessionCloseDeliversEveryByte(t *testing.T) {
	// The writer reports success, closes its stream and at once its
	// session; the reader must get every byte and a clean EOF, whichever
	// side writes.
	forEach(t, func(t *testing.T, e env) {
		for _, size := range closeSizes {
			for _, fromServer := range []bool{false, true} {
				name := fmt.Sprintf("%d bytes from the client", size)
				if fromServer {
					name = fmt.Sprintf("%d bytes from the server", size)
				}
				t.Run(name, func(t *testing.T) {
					cli, srv := e.pair(t, nil, nil)
					w, r := openAccept(t, cli, srv)
					ws := cli
					if fromServer {
						w, r, ws = r, w, srv
					}
					data := randomBytes(size)
					got := make(chan error, 1)
					go func() {
						h := sha256.New()
						n, err := io.Copy(h, r)
						if err == nil && (n != int64(size) || !bytes.Equal(h.Sum(nil), sum(data))) {
							err = fmt.Errorf("read %d bytes of %d, or different ones", n, size)
						}
						got <- err
					}()
					if n, err := w.Write(data); n != size || err != nil {
						t.Fatalf("Write = %d, %v", n, err)
					}
					if err := w.Close(); err != nil {
						t.Fatal(err)
					}
					within(t, 10*time.Second, "Session.Close", func() { ws.Close() })
					select {
					case err := <-got:
						if err != nil {
							t.Fatalf("the reader: %v", err)
						}
					case <-time.After(20 * time.Second):
						t.Fatal("the reader never reached EOF")
					}
				})
			}
		}
	})
}

func sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

func TestCloseLingerBoundsCloseAgainstAPeerThatDoesNotRead(t *testing.T) {
	// A stream filled to its window, and a peer whose application never
	// reads: Close gives up after CloseLinger, not later. A negative
	// linger closes at once.
	for _, linger := range []time.Duration{300 * time.Millisecond, -1} {
		t.Run(fmt.Sprint(linger), func(t *testing.T) {
			forEachTimed(t, func(t *testing.T, e env) {
				cli, srv := e.pair(t, e.cfg(func(c *Config) { c.CloseLinger = linger }), e.cfg(func(c *Config) {
					c.MaxSessionBuffer = protocolWindow // smux v1: the server stops reading
				}))
				w, _ := openAccept(t, cli, srv)
				fillUntilBlocked(t, w)
				start := time.Now()
				within(t, 5*time.Second, "Close", func() { cli.Close() })
				if took := time.Since(start); took > max(linger, 0)+2*time.Second {
					t.Fatalf("Close took %v with a linger of %v", took, linger)
				}
			})
		})
	}
}

func TestStreamsNeverClosedAreResetAfterTheirData(t *testing.T) {
	// Session.Close sends what a stream the application left open wrote,
	// then resets it, so its reader learns the data ended short and never
	// reads a clean EOF. (A reset drops what its reader has not read yet.)
	// smux has no reset: the end of the session says it.
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		w, r := openAccept(t, cli, srv)
		data := randomBytes(100_000)
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		cli.Close()
		got, err := io.ReadAll(r)
		want := error(ErrStreamReset)
		if !e.caps().Reset {
			want = ErrSessionClosed
		}
		if !errors.Is(err, want) {
			t.Fatalf("after %d bytes: %v, want %v", len(got), err, want)
		}
		if !bytes.HasPrefix(data, got) {
			t.Fatalf("the %d bytes read are not what was written", len(got))
		}
	})
}

// burst opens n streams on cli back to back, writing one byte (the low
// byte of the id) on each, then calling after, if set.
func burst(t *testing.T, cli *Session, n int, after func(*Stream) error) []*Stream {
	t.Helper()
	streams := make([]*Stream, 0, n)
	for range n {
		st, err := cli.OpenStream(ctx(t))
		if err != nil {
			t.Fatalf("open %d: %v", len(streams), err)
		}
		if _, err := st.Write([]byte{byte(st.ID())}); err != nil {
			t.Fatalf("write on stream %d: %v", st.ID(), err)
		}
		if after != nil {
			if err := after(st); err != nil {
				t.Fatalf("stream %d: %v", st.ID(), err)
			}
		}
		streams = append(streams, st)
	}
	return streams
}

// serveBursts accepts streams on srv as fast as it can, each served by a
// goroutine of its own that reads its byte, checks it and closes it. (On
// smux a stream's data may sit behind opens still waiting for Accept, so
// an accept loop that waits for its workers could stall the session.) It
// returns the count of streams served and a function that waits for the
// goroutines once srv has ended.
func serveBursts(t *testing.T, srv *Session) (*atomic.Int64, func()) {
	var served atomic.Int64
	wait := serve(srv, func(st *Stream) {
		b := make([]byte, 1)
		if _, err := io.ReadFull(st, b); err != nil || b[0] != byte(st.ID()) {
			t.Errorf("stream %d: read %v, %v", st.ID(), b, err)
		} else {
			served.Add(1)
		}
		st.Close()
	})
	return &served, wait
}

func TestABurstOfOpensIsAcceptedInFull(t *testing.T) {
	// 10,000 opens back to back with the default AcceptBacklog: none is
	// refused, none is lost, whatever the protocol can say about a full
	// accept queue.
	forEach(t, func(t *testing.T, e env) {
		const n = 10_000
		cli, srv := e.pair(t, nil, e.cfg(func(c *Config) { c.MaxIncomingStreams = n }))
		served, wait := serveBursts(t, srv)
		burst(t, cli, n, nil)
		eventually(t, 60*time.Second, "every stream served", func() bool { return served.Load() == n })
		if st := srv.Stats(); st.StreamsRefused != 0 || st.StreamsAccepted != n {
			t.Fatalf("%d accepted, %d refused of %d", st.StreamsAccepted, st.StreamsRefused, n)
		}
		srv.Close()
		wait()
	})
}

func TestABurstPastMaxIncomingStreamsIsRefusedVisibly(t *testing.T) {
	// The same burst with MaxIncomingStreams 1,000; each opener writes one
	// byte and half-closes, and the application accepts, reads the byte
	// and closes, stream after stream. A stream that does not arrive fails
	// at its opener with a refusal or a reset. On smux, which cannot
	// refuse, the accept backlog holds the opens back, and all arrive.
	forEach(t, func(t *testing.T, e env) {
		const n, limit = 10_000, 1000
		cli, srv := e.pair(t, nil, e.cfg(func(c *Config) { c.MaxIncomingStreams = limit }))
		served := 0
		serving := make(chan struct{})
		go func() {
			defer close(serving)
			for {
				st, err := srv.AcceptStream(ctx(t))
				if err != nil {
					return
				}
				b := make([]byte, 1)
				if _, err := io.ReadFull(st, b); err != nil || b[0] != byte(st.ID()) {
					t.Errorf("stream %d: read %v, %v", st.ID(), b, err)
				} else {
					served++
				}
				st.Close()
			}
		}()
		streams := burst(t, cli, n, (*Stream).CloseWrite)
		arrived, refused := 0, 0
		for _, st := range streams {
			st.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, err := st.Read(make([]byte, 1))
			switch {
			case err == io.EOF:
				arrived++
			case errors.Is(err, ErrStreamRefused) || errors.Is(err, ErrStreamReset):
				refused++
			default:
				t.Fatalf("stream %d: Read = %v, want EOF, a refusal or a reset", st.ID(), err)
			}
		}
		srv.Close()
		<-serving
		t.Logf("%d arrived, %d refused (server: %d served, %d refused)", arrived, refused, served, srv.Stats().StreamsRefused)
		if arrived+refused != n || served != arrived {
			t.Fatalf("%d arrived (%d served) and %d refused of %d", arrived, served, refused, n)
		}
		if !e.caps().Reset && arrived != n {
			t.Fatalf("smux: %d of %d arrived", arrived, n)
		}
	})
}

func TestABurstOfRefusalsIsAnsweredInFull(t *testing.T) {
	// A raw peer sends 100,000 opens in one burst and reads everything;
	// the application accepts none. Every open past the limits is refused
	// with a frame the peer sees, none dropped to keep a queue short. smux
	// cannot refuse: its session stops reading at the backlog instead.
	forEach(t, func(t *testing.T, e env) {
		const backlog, limit = 256, 1000
		s, p := e.rawPeer(t, &Config{AcceptBacklog: backlog, MaxIncomingStreams: limit})
		n := scale(100_000, 2)
		seen := make([]bool, n)
		var refused atomic.Int64
		stop := p.readFrames(func(f wire.Frame, _ []byte) {
			i := int(f.Stream-p.clientID(0)) / 2
			if f.Flags&wire.FlagRST != 0 && i >= 0 && i < n && !seen[i] {
				seen[i] = true
				refused.Add(1)
			}
		})
		flooded := make(chan error, 1)
		go func() {
			flooded <- p.flood(n, func(b []byte, i int) []byte { return p.encode(b, synFrame(p.clientID(i))) })
		}()
		defer func() {
			s.Close()
			<-flooded
			stop()
		}()
		if !e.caps().Reset {
			eventually(t, 10*time.Second, "the session pausing at the backlog", func() bool {
				return s.paused.Load() && s.NumStreams() == backlog
			})
			return
		}
		held := limit
		if e.caps().AckOpens {
			held = backlog
		}
		eventually(t, 60*time.Second, "a refusal for every open past the limits", func() bool {
			return refused.Load() == int64(n-held)
		})
		if err := <-flooded; err != nil {
			t.Fatal(err)
		}
		flooded <- nil
		if st := s.Stats(); st.StreamsAccepted != uint64(held) || st.StreamsRefused != uint64(n-held) {
			t.Fatalf("%d accepted and %d refused of %d; want %d held", st.StreamsAccepted, st.StreamsRefused, n, held)
		}
	})
}

func TestAFreshStreamEchoesAfterASynFinFlood(t *testing.T) {
	// 50,000 opens that close at once, in one burst, then a stream that
	// sends 48 KiB and expects it back. smux v1 used to close that stream
	// unread when the flood had filled the backlog. The peers that wait
	// for an answer to each open (yamux) or can be refused (muxado) send
	// the fresh stream once the flood is answered.
	forEach(t, func(t *testing.T, e env) {
		n := scale(50_000, 2)
		// MaxIncomingStreams out of the way: what is tested is that a full
		// backlog refuses nothing, however far the application's
		// goroutines fall behind the flood.
		s, p := e.rawPeer(t, &Config{MaxIncomingStreams: n + 1})
		wait := serve(s, echo)
		fresh := p.clientID(n)
		msg := randomBytes(48 << 10)
		var mu sync.Mutex
		var got []byte
		var answered atomic.Int64
		done := make(chan struct{})
		stop := p.readFrames(func(f wire.Frame, payload []byte) {
			if f.Stream != fresh {
				if f.Flags&(wire.FlagFIN|wire.FlagRST) != 0 {
					answered.Add(1)
				}
				return
			}
			mu.Lock()
			got = append(got, payload...)
			mu.Unlock()
			if f.Flags&(wire.FlagFIN|wire.FlagRST) != 0 {
				close(done)
			}
		})
		defer func() {
			s.Close()
			stop()
			wait()
		}()
		if err := p.flood(n, func(b []byte, i int) []byte {
			return p.encode(p.encode(b, synFrame(p.clientID(i))), finFrame(p.clientID(i)))
		}); err != nil {
			t.Fatal(err)
		}
		if e.caps().Reset {
			eventually(t, 60*time.Second, "every open of the flood answered", func() bool { return answered.Load() == int64(n) })
		}
		b := p.encode(nil, synFrame(fresh))
		b = append(p.encode(b, dataFrame(fresh, len(msg))), msg...)
		b = p.encode(b, finFrame(fresh))
		if err := p.sendRaw(b); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			t.Fatal("the fresh stream was never answered")
		}
		mu.Lock()
		defer mu.Unlock()
		if !bytes.Equal(got, msg) {
			t.Fatalf("the fresh stream echoed %d bytes of %d (server: %+v)", len(got), len(msg), s.Stats())
		}
	})
}

func TestAFailedWriteStillDeliversWhatThePeerSent(t *testing.T) {
	// The session's first write fails, which ends it; the data and FIN
	// the peer sends afterwards were already on their way, and a Read
	// waiting for them gets them, then EOF, not the session's error.
	for _, proto := range protocols {
		t.Run(proto.String(), func(t *testing.T) {
			checkLeaks(t)
			c1, c2 := net.Pipe()
			go io.Copy(io.Discard, c2) // the session's one byte, then nothing
			s, err := Server(newFaultConn(c1, faultWriteError, 1), &Config{Protocol: proto})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			codec, _ := codecFor(proto)
			p := &rawPeer{t: t, conn: c2, codec: codec, br: bufio.NewReader(c2)}
			defer c2.Close()
			id := p.openFirst(t)
			st, err := s.AcceptStream(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			go s.OpenStream(ctx(t)) // a write, which fails (yamux's ACK may come first)
			eventually(t, 5*time.Second, "the failed write ending the session", s.IsClosed)
			// The read loop still runs: a Read waits for what may come,
			// rather than fail with the session's error.
			st.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if _, err := st.Read(make([]byte, 1)); !errors.Is(err, ErrTimeout) {
				t.Fatalf("a Read while the read loop still runs: %v, want it to wait", err)
			}
			st.SetReadDeadline(time.Time{})
			got := make(chan error, 1)
			go func() {
				b, err := io.ReadAll(st)
				if err == nil && string(b) != "last words" {
					err = fmt.Errorf("read %q", b)
				}
				got <- err
			}()
			b := append(p.encode(nil, dataFrame(id, 10)), "last words"...)
			if err := p.sendRaw(p.encode(b, finFrame(id))); err != nil {
				t.Fatal(err)
			}
			if err := <-got; err != nil {
				t.Fatalf("the stream: %v, want its data and EOF", err)
			}
		})
	}
}
