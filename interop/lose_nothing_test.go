package interop

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	goyamux "github.com/libp2p/go-yamux/v5"
	"github.com/polymux/polymux"
	"github.com/polymux/polymux/internal/wire"
	"github.com/polymux/polymux/interop/internal/muxes"
	"golang.ngrok.com/muxado/v2"
)

// burstStreams is the size of the burst of opens in TestBurstOfOpens.
const burstStreams = 10_000

// TestBurstOfOpens (issue 9): the client opens 10,000 streams back to back
// and writes one byte on each (the low byte of its id) while the server's
// application accepts as fast as it can, serving each stream in a
// goroutine of its own: every stream is accepted and its byte read, none
// refused. Both directions of polymux: a polymux server against each
// peer's opener, and a polymux opener against each peer's server.
//
// The polymux server has MaxIncomingStreams 10,000 and the default
// AcceptBacklog (256): a yamux opener waits for ACKs, which polymux sends
// at Accept, so it never overflows the backlog; a muxado stream may wait
// past it; an smux session pauses reading while the backlog is full. The
// accept loop never hands streams to a bounded pool: on smux a stream's
// byte may sit behind opens still waiting for Accept.
//
// The peers' limits, from muxes.Options.Streams: go-yamux's
// MaxIncomingStreams (default 1000), which counts a stream from its SYN
// until its acceptor closes it, is raised to 10,000, so that it holds
// however far the server's goroutines fall behind; muxado's AcceptBacklog
// (default 128) too, because a muxado server refuses an open that finds
// its accept queue full (RST AcceptQueueFull; with the default, about 10
// of the 10,000 were refused in a run here) and its opener does not wait.
// hashicorp's and go-yamux's AcceptBacklog (256) stay: the opener waits
// for ACKs. smux's (1024) is fixed; its reader stops while it is full. No
// peer limits its own opens.
func TestBurstOfOpens(t *testing.T) {
	const n = burstStreams
	forEachCell(t, func(t *testing.T, c cell) {
		e := newEnv(t, c, muxes.Options{Streams: n}, 2*time.Minute)
		served := e.serveBurst(e.server, n)
		opened := make(map[uint32]bool, n)
		start := time.Now()
		for len(opened) < n {
			st, err := e.client.Open(e.ctx)
			if err != nil {
				t.Fatalf("%s: open %d: %v", c.clientLib().Name, len(opened)+1, err)
			}
			id := streamID(st)
			opened[id] = true
			if _, err := st.Write([]byte{byte(id)}); err != nil {
				t.Fatalf("stream %d (open %d): write: %v", id, len(opened), err)
			}
		}
		openedIn := time.Since(start)
		select {
		case <-served.all:
		case <-e.ctx.Done():
			t.Fatalf("%d of %d streams accepted and read before the deadline", served.count(), n)
		}
		served.mu.Lock()
		defer served.mu.Unlock()
		for _, err := range served.errs[:min(len(served.errs), 5)] {
			t.Error(err)
		}
		for id := range opened {
			if !served.ids[id] {
				t.Errorf("stream %d was opened and never accepted", id)
				break
			}
		}
		if len(served.ids) != n {
			t.Errorf("%d distinct streams served, want %d", len(served.ids), n)
		}
		if st := e.pm().Stats(); !c.polymuxClient && (st.StreamsAccepted != n || st.StreamsRefused != 0) {
			t.Errorf("polymux server: %d accepted, %d refused; want %d and 0", st.StreamsAccepted, st.StreamsRefused, n)
		}
		t.Logf("%d opens in %v, all served in %v", n, openedIn.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	})
}

// burstServer is what serveBurst saw.
type burstServer struct {
	mu   sync.Mutex
	ids  map[uint32]bool // streams whose byte was read and right
	errs []error
	all  chan struct{} // closed once n streams were served
	n    int
}

func (b *burstServer) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.ids)
}

// serveBurst accepts streams on s until it ends, each in a goroutine of
// its own that reads one byte, checks that it is the low byte of the
// stream's id and closes the stream.
func (e *env) serveBurst(s muxes.Session, n int) *burstServer {
	b := &burstServer{ids: make(map[uint32]bool, n), all: make(chan struct{}), n: n}
	e.spawn(func() {
		for {
			st, err := s.Accept(e.ctx)
			if err != nil {
				return
			}
			e.spawn(func() {
				defer st.Close()
				id := streamID(st)
				var one [1]byte
				_, err := io.ReadFull(st, one[:])
				b.mu.Lock()
				defer b.mu.Unlock()
				switch {
				case err != nil:
					b.errs = append(b.errs, fmt.Errorf("stream %d: read: %w", id, err))
				case one[0] != byte(id):
					b.errs = append(b.errs, fmt.Errorf("stream %d: read byte %d, want %d", id, one[0], byte(id)))
				case b.ids[id]:
					b.errs = append(b.errs, fmt.Errorf("stream %d accepted twice", id))
				default:
					b.ids[id] = true
					if len(b.ids) == b.n {
						close(b.all)
					}
				}
			})
		}
	})
	return b
}

// streamID is the id of a stream of any library.
func streamID(st muxes.Stream) uint32 {
	switch s := st.(type) {
	case interface{ ID() uint32 }: // polymux
		return s.ID()
	case interface{ StreamID() uint32 }: // hashicorp, go-yamux
		return s.StreamID()
	case muxes.SmuxStream:
		return s.S.ID()
	case interface{ Id() uint32 }: // muxado
		return s.Id()
	}
	panic(fmt.Sprintf("no id for a %T", st))
}

// closeSizes are the sizes written just before Close in the tests of a
// graceful close, as in the root package's.
var closeSizes = []int{1, 1_000, 100_000, 1_000_000, 8_000_000}

// randomBytes returns size reproducible random bytes.
func randomBytes(size int, seed uint64) []byte {
	b := make([]byte, size)
	io.ReadFull(randData(seed), b)
	return b
}

// writerPair returns a stream between the two sessions of e: w at
// writer's end, r at the other. The opener writes one byte that the
// acceptor reads (so that muxado's lazy open reaches the acceptor, and
// nothing unread is left at either end).
func (e *env) writerPair(writer muxes.Session) (w, r muxes.Stream) {
	ost, ast := e.pair(e.client, e.server)
	if writer == e.client {
		return ost, ast
	}
	return ast, ost
}

// TestPolymuxCloseDeliversEveryByte (issue 9): polymux writes size bytes,
// closes the stream and at once closes its session; the peer must read
// every byte and then the end of the stream. polymux writes as the client
// (to the peer's server) and as the server (to the peer's client).
//
// Two peers misreport that end, after every byte has arrived; each is
// asserted on its own, deterministically:
//   - go-yamux's Read may return data together with the error of sending
//     a window update on its ended session (polymux's GoAway(0) ends it),
//     with the rest of the stream and its FIN still buffered
//     (TestGoYamuxReadFailsOnceItsSessionEnded). Reading on after such a
//     Read gets the rest and io.EOF, so the reader here does that for
//     go-yamux.
//   - muxado replaces the io.EOF of a stream whose FIN has arrived by
//     "session closed" once its session ends, if its application had not
//     read to the end yet (TestMuxadoSessionEndHidesEOF). That end is
//     accepted for muxado only when the capture of what its connection
//     read shows the FIN.
func TestPolymuxCloseDeliversEveryByte(t *testing.T) {
	forEachCell(t, func(t *testing.T, c cell) {
		for _, size := range closeSizes {
			t.Run(fmt.Sprintf("%dB", size), func(t *testing.T) {
				peerTap := &tapConn{reads: true}
				e := newEnvWrapped(t, c, muxes.Options{}, 30*time.Second, nil, peerTap.wrap)
				w, r := e.writerPair(e.pmSide())
				data := randomBytes(size, uint64(size))
				read := make(chan readResult, 1)
				e.spawn(func() { read <- readOn(r, c.peer.Name == muxes.GoYamux.Name) })
				if n, err := w.Write(data); n != size || err != nil {
					t.Fatalf("polymux Write = %d, %v", n, err)
				}
				if err := w.Close(); err != nil {
					t.Fatalf("polymux Stream.Close: %v", err)
				}
				start := time.Now()
				if err := e.pm().Close(); err != nil {
					t.Fatalf("polymux Session.Close: %v", err)
				}
				took := time.Since(start)
				var res readResult
				select {
				case res = <-read:
				case <-e.ctx.Done():
					t.Fatal("the peer never finished reading")
				}
				e.closeAll()
				wire := func() string { return frameLog(codecOf(c.peer.Protocol), peerTap.bytes(), 8) }
				if !bytes.Equal(res.got, data) {
					t.Fatalf("%s read %d of the %d bytes polymux wrote (%s), then %v. The last frames its connection read:\n%s",
						c.peer.Name, len(res.got), size, prefixNote(res.got, data), res.err, wire())
				}
				if res.spurious != nil {
					t.Logf("libp2p/go-yamux bug (TestGoYamuxReadFailsOnceItsSessionEnded): a Read returned data with %q; reading on got the rest and io.EOF", res.spurious)
				}
				switch {
				case res.err == nil:
				case c.peer.Name == muxes.Muxado.Name && isMuxadoSessionClosed(res.err):
					id := streamID(r)
					if got, err := parseWire(codecOf(c.peer.Protocol), peerTap.bytes(), id); err != nil || !got.fin {
						t.Fatalf("muxado read every byte, then %v, and its connection read no FIN for stream %d (%v):\n%s", res.err, id, err, wire())
					}
					t.Logf("ngrok/muxado bug (TestMuxadoSessionEndHidesEOF): every byte and the FIN arrived, but its Read ended with %q instead of io.EOF", res.err)
				default:
					t.Fatalf("%s read every byte, then %v instead of io.EOF. The last frames its connection read:\n%s", c.peer.Name, res.err, wire())
				}
				t.Logf("%s read all %d bytes; polymux's Session.Close took %v", c.peer.Name, size, took.Round(time.Millisecond))
			})
		}
	})
}

// readResult is what readOn read.
type readResult struct {
	got      []byte
	spurious error // the first error a Read returned with data, if reading went on
	err      error // the end: nil for io.EOF
}

// readOn reads r to its end, as io.ReadAll does. With goOn, a Read that
// returns data with an error does not end it, the error is kept in
// spurious, and reading goes on: see TestGoYamuxReadFailsOnceItsSessionEnded.
func readOn(r io.Reader, goOn bool) readResult {
	var res readResult
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		res.got = append(res.got, buf[:n]...)
		switch {
		case err == io.EOF:
			return res
		case err != nil && n > 0 && goOn:
			if res.spurious == nil {
				res.spurious = err
			}
		case err != nil:
			res.err = err
			return res
		}
	}
}

// isMuxadoSessionClosed reports whether err is muxado's "session closed".
func isMuxadoSessionClosed(err error) bool {
	code, _ := muxado.GetError(err)
	return code == muxado.SessionClosed
}

// prefixNote says how got compares with want.
func prefixNote(got, want []byte) string {
	if bytes.HasPrefix(want, got) {
		return "a prefix of what was written"
	}
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("differing from byte %d", i)
		}
	}
	return "longer than what was written"
}

// TestPeerCloseDeliversWhatItPutOnTheWire (issue 9): the peer writes size
// bytes, closes the stream and at once closes its session. Whatever of it
// reached polymux's connection must reach polymux's reader, in order, and
// the reader sees io.EOF exactly when the stream's FIN arrived; else an
// error, since a stream cut short must never look complete. A capture of
// what polymux read from its connection says what arrived, and one of what
// the peer wrote to its own what the peer put on the wire.
//
// hashicorp/yamux, xtaci/smux and muxado put everything on the wire
// before their Close returns, so from them every byte and the FIN must
// arrive. libp2p/go-yamux does not: its Write and Close only queue frames,
// and its Session.Close closes the connection without writing the queue
// (TestGoYamuxCloseDropsItsSendQueue). Here it lost its FIN in every run
// and data too: all of 1 B and 1 kB every time, all or 34 kB of 100 kB,
// 15-213 kB of 1 MB, up to 262 kB of 8 MB. That loss is logged as
// go-yamux's; what did reach polymux is still checked.
func TestPeerCloseDeliversWhatItPutOnTheWire(t *testing.T) {
	forEachCell(t, func(t *testing.T, c cell) {
		for _, size := range closeSizes {
			t.Run(fmt.Sprintf("%dB", size), func(t *testing.T) {
				pmTap, peerTap := &tapConn{reads: true}, &tapConn{}
				e := newEnvWrapped(t, c, muxes.Options{}, 30*time.Second, pmTap.wrap, peerTap.wrap)
				w, r := e.writerPair(e.peer())
				id := streamID(w)
				data := randomBytes(size, uint64(size))
				read := make(chan readResult, 1)
				e.spawn(func() { read <- readOn(r, false) })
				n, werr := w.Write(data)
				cerr := w.Close()
				e.peer().Close()
				var res readResult
				select {
				case res = <-read:
				case <-e.ctx.Done():
					t.Fatal("polymux never finished reading")
				}
				e.closeAll()
				codec := codecOf(c.peer.Protocol)
				arrived, err := parseWire(codec, pmTap.bytes(), id)
				if err != nil {
					t.Fatalf("parsing what polymux read: %v", err)
				}
				sent, err := parseWire(codec, peerTap.bytes(), id)
				if err != nil {
					t.Fatalf("parsing what %s wrote: %v", c.peer.Name, err)
				}
				if !c.polymuxClient {
					// The peer opened the stream with the byte writerPair
					// writes, which polymux read before.
					arrived.payload, sent.payload = arrived.payload[1:], sent.payload[1:]
				}
				if !bytes.HasPrefix(data, arrived.payload) {
					t.Fatalf("what arrived for stream %d is not what %s was asked to write", id, c.peer.Name)
				}
				if len(res.got) < len(arrived.payload) || len(res.got) > len(arrived.payload)+arrived.partial || !bytes.HasPrefix(data, res.got) {
					t.Fatalf("polymux's reader got %d bytes (%s) of the %d that arrived (+%d in a frame cut short)",
						len(res.got), prefixNote(res.got, data), len(arrived.payload), arrived.partial)
				}
				switch {
				case arrived.fin && res.err != nil:
					t.Fatalf("the stream's FIN arrived after %d bytes, but polymux's reader got %d and then %v, want io.EOF", len(arrived.payload), len(res.got), res.err)
				case !arrived.fin && res.err == nil:
					t.Fatalf("polymux's reader got %d bytes and io.EOF, but no FIN arrived: a stream cut short must not look complete", len(res.got))
				}
				report := fmt.Sprintf("%s: Write = %d, %v; Stream.Close = %v; it wrote to its connection %d bytes of the stream (FIN %v); %d arrived at polymux (FIN %v), and polymux's reader got them, then %v",
					c.peer.Name, n, werr, cerr, len(sent.payload), sent.fin, len(arrived.payload), arrived.fin, errOrEOF(res.err))
				complete := n == size && len(res.got) == size && res.err == nil
				switch {
				case complete:
					t.Log(report)
				case c.peer.Name == muxes.GoYamux.Name:
					t.Logf("libp2p/go-yamux bug (TestGoYamuxCloseDropsItsSendQueue), %d bytes lost: %s", size-len(res.got), report)
				case errors.Is(res.err, syscall.ECONNRESET) && peerTap.in.Load() < pmTap.out.Load():
					// The peer closed its connection before reading all
					// polymux wrote to it (such as the ACK of its open), so
					// its kernel answered with a TCP reset, and polymux's
					// kernel dropped what it had not yet handed to
					// polymux: lost below polymux, by the peer's close.
					t.Logf("%s closed with %d bytes of polymux's unread, and the TCP reset dropped what polymux's kernel held: %s",
						c.peer.Name, pmTap.out.Load()-peerTap.in.Load(), report)
				default:
					t.Fatalf("%s put less than it was asked to on the wire, or it was lost on the way: %s", c.peer.Name, report)
				}
			})
		}
	})
}

func errOrEOF(err error) any {
	if err == nil {
		return io.EOF
	}
	return err
}

// TestGoYamuxCloseDropsItsSendQueue asserts a bug of libp2p/go-yamux
// v5.1.0: Stream.Write and Stream.Close only queue their frames for the
// send loop (sendMsg hands them to sendCh and returns), and Session.Close
// closes the connection without letting the send loop write what is
// queued, so data whose Write reported success, and the FIN, are lost.
// Here go-yamux's connection holds back writes from the moment the stream
// is set up until the connection is closed, as a full socket buffer
// would: Write and both Closes still succeed, and nothing more reaches
// polymux, whose reader gets no data and an error, not io.EOF.
// (hashicorp/yamux, whose Write waits for the send loop, would block in
// Write instead; see TestPeerCloseDeliversWhatItPutOnTheWire for what
// go-yamux loses on an ordinary connection.)
func TestGoYamuxCloseDropsItsSendQueue(t *testing.T) {
	c := cell{muxes.GoYamux, false}
	held := &holdConn{closed: make(chan struct{})}
	e := newEnvWrapped(t, c, muxes.Options{}, 30*time.Second, nil, held.wrap)
	w, r := e.writerPair(e.peer())
	read := make(chan readResult, 1)
	e.spawn(func() { read <- readOn(r, false) })
	held.hold.Store(true)
	if n, err := w.Write(make([]byte, 1000)); n != 1000 || err != nil {
		t.Fatalf("go-yamux Write = %d, %v with its connection's writes held back; the bug would have it return 1000, nil", n, err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("go-yamux Stream.Close: %v", err)
	}
	if err := e.peer().Close(); err != nil {
		t.Fatalf("go-yamux Session.Close: %v", err)
	}
	res := <-read
	if len(res.got) != 0 || res.err == nil {
		t.Fatalf("polymux read %d bytes, then %v; want none and an error", len(res.got), errOrEOF(res.err))
	}
	t.Logf("libp2p/go-yamux bug confirmed: Write and both Closes reported success, and none of it reached polymux (its send loop had tried %d writes); polymux's reader: %v", held.attempts.Load(), res.err)
}

// holdConn holds back every Write, once hold is set, until it is closed.
type holdConn struct {
	net.Conn
	hold     atomic.Bool
	attempts atomic.Int64 // Writes held back
	closed   chan struct{}
	once     sync.Once
}

func (c *holdConn) wrap(conn net.Conn) net.Conn {
	c.Conn = conn
	return c
}

func (c *holdConn) Write(p []byte) (int, error) {
	if c.hold.Load() {
		c.attempts.Add(1)
		<-c.closed
		return 0, net.ErrClosed
	}
	return c.Conn.Write(p)
}

func (c *holdConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// TestGoYamuxReadFailsOnceItsSessionEnds asserts a bug of libp2p/go-yamux
// v5.1.0: once its session has ended (here by polymux's GoAway(0), which
// go-yamux takes as the end of everything), a Read on a stream whose FIN
// and data had arrived returns data together with an error: after
// copying from the buffer it sends a window update, and sendMsg fails
// with the session's error, which Read returns. A reader that stops at
// the error, as io.ReadAll and io.Copy do, loses the rest; reading on
// gets it and io.EOF.
func TestGoYamuxReadFailsOnceItsSessionEnds(t *testing.T) {
	c := cell{muxes.GoYamux, true}
	e := newEnv(t, c, muxes.Options{}, 30*time.Second)
	w, r := e.writerPair(e.pmSide())
	const size = 200_000 // within the 256 KiB window: all of it arrives unread
	data := randomBytes(size, 1)
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.pm().Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-e.peer().Native().(*goyamux.Session).CloseChan():
	case <-e.ctx.Done():
		t.Fatal("go-yamux's session did not end")
	}
	res := readOn(r, true)
	if !bytes.Equal(res.got, data) || res.err != nil {
		t.Fatalf("go-yamux read %d of %d bytes, then %v; want all and io.EOF", len(res.got), size, errOrEOF(res.err))
	}
	if res.spurious == nil {
		t.Fatal("go-yamux read every byte and io.EOF with no error on the way: the bug seems fixed; drop the workaround in TestPolymuxCloseDeliversEveryByte")
	}
	t.Logf("libp2p/go-yamux bug confirmed: a Read returned data with %q; reading on got the rest and io.EOF", res.spurious)
}

// TestMuxadoSessionEndHidesEOF asserts a bug of ngrok muxado v2.0.2: a
// stream's FIN sets io.EOF as its buffer's error, but a stream still open
// for writing stays in the session, and when the session dies
// (session.die → stream.closeWith) its error replaces that io.EOF, so the
// application, having read every byte, gets "session closed" where the
// stream had ended cleanly. Here polymux writes 1,000 bytes, closes the
// stream and the session; muxado reads only after its session has died.
func TestMuxadoSessionEndHidesEOF(t *testing.T) {
	// The bug depends on muxado's own scheduling: about 1 run in 40 its
	// stream reads io.EOF after all. It must show at least once in ten.
	for try := range 10 {
		if muxadoSessionEndHidesEOF(t) {
			return
		}
		t.Logf("try %d: muxado read every byte and io.EOF", try+1)
	}
	t.Fatal("muxado read every byte and io.EOF after its session died, ten times in a row: the bug seems fixed; drop the exception in TestPolymuxCloseDeliversEveryByte")
}

// muxadoSessionEndHidesEOF runs the scenario once and reports whether the
// bug showed; anything else than every byte followed by io.EOF or muxado's
// "session closed" fails the test.
func muxadoSessionEndHidesEOF(t *testing.T) bool {
	c := cell{muxes.Muxado, true}
	peerTap := &tapConn{reads: true}
	e := newEnvWrapped(t, c, muxes.Options{}, 30*time.Second, nil, peerTap.wrap)
	w, r := e.writerPair(e.pmSide())
	data := randomBytes(1000, 1)
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.pm().Close(); err != nil {
		t.Fatal(err)
	}
	dead := make(chan struct{})
	go func() {
		e.peer().Native().(muxado.Session).Wait()
		close(dead)
	}()
	select {
	case <-dead:
	case <-e.ctx.Done():
		t.Fatal("muxado's session did not end")
	}
	if got, err := parseWire(codecOf(c.peer.Protocol), peerTap.bytes(), streamID(r)); err != nil || !got.fin || len(got.payload) != 1+len(data) {
		t.Fatalf("muxado's connection read %d bytes of the stream, FIN %v (%v); want the hello byte, the %d written, and the FIN", len(got.payload), got.fin, err, len(data))
	}
	res := readOn(r, false)
	if !bytes.Equal(res.got, data) {
		t.Fatalf("muxado read %d of %d bytes, then %v", len(res.got), len(data), errOrEOF(res.err))
	}
	if res.err == nil {
		return false
	}
	if !isMuxadoSessionClosed(res.err) {
		t.Fatalf("muxado read every byte, then %v; want io.EOF, or its bug's \"session closed\"", res.err)
	}
	t.Logf("ngrok/muxado bug confirmed: the FIN arrived, every byte was read, then %q instead of io.EOF", res.err)
	return true
}

// frameLog lists the last frames of b, one direction of a connection.
func frameLog(codec wire.Codec, b []byte, last int) string {
	br := bufio.NewReaderSize(bytes.NewReader(b), 64<<10)
	var lines []string
	for {
		f, err := codec.ReadFrame(br)
		if err != nil {
			lines = append(lines, fmt.Sprintf("(end: %v)", errOrEOF(err)))
			break
		}
		lines = append(lines, f.String())
		if f.Type == wire.TypeData {
			if n, _ := io.CopyN(io.Discard, br, int64(f.Length)); n < int64(f.Length) {
				lines = append(lines, "(cut short)")
				break
			}
		}
	}
	if len(lines) > last {
		lines = lines[len(lines)-last:]
	}
	return strings.Join(lines, "\n")
}

// codecOf is the wire codec of p.
func codecOf(p polymux.Protocol) wire.Codec {
	switch p {
	case polymux.Yamux:
		return wire.Yamux()
	case polymux.SmuxV1:
		return wire.Smux(1)
	case polymux.SmuxV2:
		return wire.Smux(2)
	case polymux.MuxadoV2:
		return wire.Muxado()
	}
	panic(fmt.Sprintf("no codec for %v", p))
}

// onTheWire is what one direction of a connection carried for one stream.
type onTheWire struct {
	payload []byte // the stream's payload, in frames that arrived whole
	partial int    // payload bytes of a last frame cut short
	fin     bool   // a whole frame with the stream's FIN arrived
	rst     bool
}

// parseWire decodes b, one direction of a connection, and returns what it
// carried for stream id. A capture may end inside a frame.
func parseWire(codec wire.Codec, b []byte, id uint32) (onTheWire, error) {
	var w onTheWire
	br := bufio.NewReaderSize(bytes.NewReader(b), 64<<10)
	for {
		f, err := codec.ReadFrame(br)
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			return w, nil
		case err != nil:
			return w, err
		}
		if f.Type == wire.TypeData && f.Length > 0 {
			p := make([]byte, f.Length)
			n, err := io.ReadFull(br, p)
			if err != nil {
				if f.Stream == id {
					w.partial = n
				}
				return w, nil
			}
			if f.Stream == id {
				w.payload = append(w.payload, p...)
			}
		}
		if f.Stream == id {
			w.fin = w.fin || f.Flags&wire.FlagFIN != 0
			w.rst = w.rst || f.Flags&wire.FlagRST != 0
		}
	}
}

// tapConn records what is read from a connection (reads) or written to it.
// It keeps the connection's half-close and lets polymux find the socket
// under it (NetConn), so a polymux session on it closes as on the socket.
type tapConn struct {
	net.Conn
	reads   bool
	mu      sync.Mutex
	buf     []byte
	in, out atomic.Int64 // bytes read from and written to the connection
}

func (c *tapConn) wrap(conn net.Conn) net.Conn {
	c.Conn = conn
	return c
}

func (c *tapConn) record(p []byte) {
	c.mu.Lock()
	c.buf = append(c.buf, p...)
	c.mu.Unlock()
}

func (c *tapConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.Add(int64(n))
	if c.reads {
		c.record(p[:n])
	}
	return n, err
}

func (c *tapConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.Add(int64(n))
	if !c.reads {
		c.record(p[:n])
	}
	return n, err
}

// CloseWrite half-closes the TCP connection.
func (c *tapConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// NetConn is the connection under the tap.
func (c *tapConn) NetConn() net.Conn { return c.Conn }

func (c *tapConn) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf
}
