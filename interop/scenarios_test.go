package interop

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/polymux/polymux"
	"github.com/polymux/polymux/interop/internal/muxes"
	"github.com/xtaci/smux"
)

// TestEcho: the client opens 64 streams at once, each echoing 1 MiB of
// random data off the server, verified by SHA-256.
func TestEcho(t *testing.T) {
	size := 1 << 20
	forEachCell(t, func(t *testing.T, c cell) {
		e := newEnv(t, c, muxes.Options{}, time.Minute)
		e.serveEcho(e.server)
		e.runEchoClients(e.client, 64, size)
	})
}

// TestServerOpens: the server opens 32 streams to the client, which
// echoes them.
func TestServerOpens(t *testing.T) {
	size := 256 << 10
	forEachCell(t, func(t *testing.T, c cell) {
		e := newEnv(t, c, muxes.Options{}, time.Minute)
		e.serveEcho(e.client)
		e.runEchoClients(e.server, 32, size)
	})
}

// hashReply reads st to EOF, then writes the SHA-256 of what it read and
// half-closes: a reply that can only come after the peer's FIN.
func hashReply(st muxes.Stream) error {
	defer st.Close()
	_, sum, err := readAllHash(st)
	if err != nil {
		return fmt.Errorf("acceptor reading to EOF: %w", err)
	}
	if _, err := st.Write(sum[:]); err != nil {
		return fmt.Errorf("acceptor writing its reply after the peer's FIN: %w", err)
	}
	return st.CloseWrite()
}

// TestHalfClose: the client writes, half-closes, and reads to EOF a reply
// the server sends only after reading EOF, in both directions of polymux.
// Also with no data at all (open, then CloseWrite at once): polymux never
// puts SYN and FIN in one muxado frame, since muxado's acceptor then
// cannot write; muxado's own opener does send them together, and a
// polymux acceptor must still be able to reply.
//
// xtaci/smux v1.5.56 cannot be that client: once it has half-closed, the
// peer's FIN makes it delete the stream and drop every received byte not
// yet read (stream.tryHalfCloseCleanup → Session.streamClosed →
// recycleTokens truncates the buffer), so a reply that arrives with its
// FIN before the application reads it is lost. Its cell asserts that.
func TestHalfClose(t *testing.T) {
	forEachCell(t, func(t *testing.T, c cell) {
		for _, size := range []int{100 << 10, 0} {
			t.Run(fmt.Sprintf("%dB", size), func(t *testing.T) {
				e := newEnv(t, c, muxes.Options{}, 30*time.Second)
				acceptErr := make(chan error, 1)
				e.spawn(func() {
					st, err := e.server.Accept(e.ctx)
					if err != nil {
						acceptErr <- err
						return
					}
					acceptErr <- hashReply(st)
				})
				st := e.open(e.client)
				defer st.Close()
				sum, err := writeRandom(st, size, 7)
				if err != nil {
					t.Fatalf("write: %v", err)
				}
				if err := st.CloseWrite(); err != nil {
					t.Fatalf("CloseWrite: %v", err)
				}
				smuxClient := isSmux(e.client)
				if smuxClient {
					// Let the reply and its FIN reach smux before reading.
					if err := <-acceptErr; err != nil {
						t.Fatal(err)
					}
					time.Sleep(200 * time.Millisecond)
				}
				reply, err := io.ReadAll(st)
				if err != nil {
					t.Fatalf("reading the reply after CloseWrite: %v (got %d bytes)", err, len(reply))
				}
				if smuxClient {
					if len(reply) == 0 {
						t.Logf("xtaci/smux bug confirmed: after CloseWrite, the peer's reply (%d bytes, sent before its FIN) was dropped and Read returned io.EOF", len(sum))
						return
					}
					t.Fatalf("xtaci/smux read the reply (%x) after CloseWrite: the half-close data-loss bug seems fixed; test this cell like the others", reply)
				}
				if err := <-acceptErr; err != nil {
					t.Fatal(err)
				}
				if string(reply) != string(sum[:]) {
					t.Fatalf("reply %x, want the SHA-256 of what was sent, %x", reply, sum)
				}
			})
		}
	})
}

// TestLargeStream sends 128 MiB on one stream, verified by hash, from the
// client to the server: polymux sending in one direction, receiving in
// the other.
func TestLargeStream(t *testing.T) {
	size := 128 << 20
	forEachCell(t, func(t *testing.T, c cell) {
		e := newEnv(t, c, muxes.Options{}, 2*time.Minute)
		got := e.acceptHashes(e.server, 1)
		st := e.open(e.client)
		defer st.Close()
		start := time.Now()
		sum, err := writeRandom(st, size, 128)
		if err != nil {
			t.Fatalf("write: %v", err)
		}
		if err := st.CloseWrite(); err != nil {
			t.Fatalf("CloseWrite: %v", err)
		}
		r := <-got
		if r.err != nil {
			t.Fatalf("server: %v", r.err)
		}
		if r.n != int64(size) || r.sum != sum {
			t.Fatalf("the server read %d bytes with SHA-256 %x, want %d with %x", r.n, r.sum[:8], size, sum[:8])
		}
		t.Logf("%d MiB in %v", size>>20, time.Since(start).Round(time.Millisecond))
	})
}

// hashed is what an acceptor read from a stream.
type hashed struct {
	n   int64
	sum [32]byte
	err error
}

// acceptHashes accepts n streams on s, reads each to EOF and reports its
// length and SHA-256 on the channel; then it closes the stream. The
// result goes over a channel, not the stream, because xtaci/smux v1.5.56
// drops what it receives after its own CloseWrite (see TestHalfClose).
func (e *env) acceptHashes(s muxes.Session, n int) <-chan hashed {
	ch := make(chan hashed, n)
	e.spawn(func() {
		for range n {
			st, err := s.Accept(e.ctx)
			if err != nil {
				ch <- hashed{err: err}
				return
			}
			e.spawn(func() {
				defer st.Close()
				n, sum, err := readAllHash(st)
				ch <- hashed{n: n, sum: sum, err: err}
			})
		}
	})
	return ch
}

// TestUnreadStream: the client writes to stream A, which the server never
// reads, as fast as it can, while stream B carries 32 MiB. Per-stream
// windows keep A from blocking B, and bound what A's writer gets out.
//
// smux v1 has no per-stream window, so its cells are skipped: A is bounded
// only by the receiver's session buffer, and once A fills it the whole
// session stalls, on smux and on polymux alike (the protocol's limit;
// TestSmuxV1UnreadStreamStallsSession).
func TestUnreadStream(t *testing.T) {
	size := 32 << 20
	forEachCell(t, func(t *testing.T, c cell) {
		if c.peer.Protocol == polymux.SmuxV1 {
			t.Skip("smux v1 has no per-stream window; see TestSmuxV1UnreadStreamStallsSession")
		}
		e := newEnv(t, c, muxes.Options{}, time.Minute)
		// The server reads each stream's one-byte tag, then B to EOF.
		aCh := make(chan muxes.Stream, 1)
		bGot := make(chan hashed, 1)
		e.spawn(func() {
			for range 2 {
				st, err := e.server.Accept(e.ctx)
				if err != nil {
					bGot <- hashed{err: err}
					return
				}
				var tag [1]byte
				if _, err := io.ReadFull(st, tag[:]); err != nil {
					bGot <- hashed{err: fmt.Errorf("reading a tag: %w", err)}
					return
				}
				if tag[0] == 'A' {
					aCh <- st // never read again
					continue
				}
				e.spawn(func() {
					defer st.Close()
					n, sum, err := readAllHash(st)
					bGot <- hashed{n: n, sum: sum, err: err}
				})
			}
		})

		a := e.open(e.client)
		defer a.Close()
		var aWritten atomic.Int64
		aDone := make(chan error, 1)
		go func() {
			if _, err := a.Write([]byte{'A'}); err != nil {
				aDone <- err
				return
			}
			buf := make([]byte, 32<<10)
			for {
				n, err := a.Write(buf)
				aWritten.Add(int64(n))
				if err != nil {
					aDone <- err
					return
				}
			}
		}()
		var aServer muxes.Stream
		select {
		case aServer = <-aCh:
		case r := <-bGot:
			t.Fatalf("server: %v", r.err)
		case <-e.ctx.Done():
			t.Fatal("stream A never accepted")
		}
		defer aServer.Close()

		b := e.open(e.client)
		defer b.Close()
		start := time.Now()
		sum, err := func() ([32]byte, error) {
			if _, err := b.Write([]byte{'B'}); err != nil {
				return [32]byte{}, err
			}
			sum, err := writeRandom(b, size, 32)
			if err == nil {
				err = b.CloseWrite()
			}
			return sum, err
		}()
		if err != nil {
			t.Fatalf("writing B after %d bytes went to unread A: %v", aWritten.Load(), err)
		}
		r := <-bGot
		if r.err != nil {
			t.Fatalf("server reading B: %v", r.err)
		}
		if r.n != int64(size) || r.sum != sum {
			t.Fatalf("the server read %d bytes of B with SHA-256 %x, want %d with %x", r.n, r.sum[:8], size, sum[:8])
		}
		took := time.Since(start)
		written := aWritten.Load()
		t.Logf("B: %d MiB in %v while A's writer got %d bytes out", size>>20, took.Round(time.Millisecond), written)
		if written > 4<<20 {
			t.Errorf("A's writer got %d bytes out to a reader that never reads; a 256 KiB window should stop it far sooner", written)
		}
		select {
		case err := <-aDone:
			t.Errorf("A's writer stopped with %v; it should block on the window", err)
		default:
		}
		// Closing everything ends A's writer.
		e.closeAll()
		<-aDone
	})
}

// TestSmuxV1UnreadStreamStallsSession asserts xtaci/smux's documented
// head-of-line blocking (xtaci/smux#85, kcptun #660/#722): smux v1 has no
// per-stream window, so a stream nobody reads fills the receiver's session
// buffer (smux MaxReceiveBuffer, 4 MiB by default), after which smux stops
// reading the connection and every other stream stalls too. polymux as the
// receiver does the same once its MaxSessionBuffer is full: without a
// reset frame, not reading is smux v1's only bound (documented in
// polymux). Both directions, with 4 MiB session buffers: stream B stops
// once unread stream A has filled the receiver's buffer.
func TestSmuxV1UnreadStreamStallsSession(t *testing.T) {
	for _, c := range []cell{{muxes.Smux(1), true}, {muxes.Smux(1), false}} {
		t.Run(c.name(), func(t *testing.T) { testSmuxV1Stall(t, c) })
	}
}

func testSmuxV1Stall(t *testing.T, c cell) {
	e := newEnv(t, c, muxes.Options{SessionBuffer: 4 << 20}, 30*time.Second)
	aCh := make(chan muxes.Stream, 1)
	var bRead atomic.Int64
	e.spawn(func() {
		for range 2 {
			st, err := e.server.Accept(e.ctx)
			if err != nil {
				return
			}
			var tag [1]byte
			if _, err := io.ReadFull(st, tag[:]); err != nil {
				return
			}
			if tag[0] == 'A' {
				aCh <- st
				continue
			}
			e.spawn(func() {
				buf := make([]byte, 64<<10)
				for {
					n, err := st.Read(buf)
					bRead.Add(int64(n))
					if err != nil {
						return
					}
				}
			})
		}
	})
	a := e.open(e.client)
	if _, err := a.Write([]byte{'A'}); err != nil {
		t.Fatal(err)
	}
	// Keep the server's A reachable: smux closes an accepted stream that
	// the garbage collector finds unreachable (its finalizer,
	// xtaci/smux#116), which would drop A's data instead of buffering it.
	aServer := <-aCh
	defer aServer.Close()
	// Fill smux's 4 MiB session buffer with A's data.
	var aWritten atomic.Int64
	e.spawn(func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := a.Write(buf)
			aWritten.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	b := e.open(e.client)
	var bWritten atomic.Int64
	e.spawn(func() {
		if _, err := b.Write([]byte{'B'}); err != nil {
			return
		}
		buf := make([]byte, 32<<10)
		for {
			n, err := b.Write(buf)
			bWritten.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	// Wait for both writers to stall.
	var last int64 = -1
	for {
		time.Sleep(500 * time.Millisecond)
		now := aWritten.Load() + bWritten.Load()
		if now == last {
			break
		}
		last = now
		if e.ctx.Err() != nil {
			t.Fatal("the writers never stalled")
		}
	}
	stalledAt := bRead.Load()
	time.Sleep(500 * time.Millisecond)
	if got := bRead.Load(); got != stalledAt || got > 16<<20 {
		t.Fatalf("smux v1: B kept flowing (%d bytes read) while A was unread; with a 4 MiB session buffer it should stall (xtaci/smux#85)", got)
	}
	t.Logf("%s receiving: with unread A holding the 4 MiB session buffer, B stalled after %d bytes (A's writer got %d bytes out, B's %d)",
		c.serverLib().Name, stalledAt, aWritten.Load(), bWritten.Load())
}

// TestReset: polymux resets a stream the peer is using; where the peer has
// a reset of its own, it resets one polymux is using. yamux and muxado
// have RST on the wire: the peer's Read fails. smux has none: polymux's
// Reset sends FIN, so the peer reads io.EOF (documented in polymux). The
// session carries on either way.
func TestReset(t *testing.T) {
	forEachCell(t, func(t *testing.T, c cell) {
		e := newEnv(t, c, muxes.Options{}, 30*time.Second)
		pmIsOpener := c.polymuxClient
		opener, acceptor := e.client, e.server

		// 1. polymux resets.
		acc := make(chan muxes.Stream, 1)
		e.spawn(func() {
			st, err := acceptor.Accept(e.ctx)
			if err == nil {
				acc <- st
			}
			close(acc)
		})
		ost := e.open(opener)
		if _, err := ost.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		ast, ok := <-acc
		if !ok {
			t.Fatal("accept failed")
		}
		var one [1]byte
		if _, err := io.ReadFull(ast, one[:]); err != nil {
			t.Fatal(err)
		}
		pmStream, peerStream := ost, ast
		if !pmIsOpener {
			pmStream, peerStream = ast, ost
		}
		if err := pmStream.(*polymux.Stream).Reset(); err != nil {
			t.Fatalf("Reset: %v", err)
		}
		if _, err := pmStream.Read(one[:]); !errors.Is(err, polymux.ErrStreamReset) {
			t.Errorf("polymux Read after its own Reset: %v, want ErrStreamReset", err)
		}
		peerStream.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := peerStream.Read(one[:])
		switch c.peer.Protocol {
		case polymux.SmuxV1, polymux.SmuxV2:
			if err != io.EOF {
				t.Errorf("smux peer Read after polymux Reset: %v, want io.EOF (smux has no RST; polymux sends FIN)", err)
			}
		default:
			if err == nil || isEOF(err) || isTimeout(err) {
				t.Errorf("%s Read after polymux Reset: %v, want a reset error", c.peer.Name, err)
			} else {
				t.Logf("%s Read after polymux Reset: %v", c.peer.Name, err)
			}
		}
		peerStream.Close()

		// 2. The peer resets, where it can.
		switch c.peer.Name {
		case muxes.GoYamux.Name:
			ost, ast := e.pair(opener, acceptor)
			pmStream, peerStream := ost, ast
			if !pmIsOpener {
				pmStream, peerStream = ast, ost
			}
			if err := peerStream.(interface{ Reset() error }).Reset(); err != nil {
				t.Fatal(err)
			}
			pmStream.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := pmStream.Read(one[:]); !errors.Is(err, polymux.ErrStreamReset) {
				t.Errorf("polymux Read after go-yamux Reset: %v, want ErrStreamReset", err)
			}
			if _, err := pmStream.Write([]byte("y")); !errors.Is(err, polymux.ErrStreamReset) {
				t.Errorf("polymux Write after go-yamux Reset: %v, want ErrStreamReset", err)
			}
			pmStream.Close()
		case muxes.Muxado.Name:
			// muxado has no Reset method; it resets (RST StreamClosed) a
			// stream it closed when data still arrives for it.
			ost, ast := e.pair(opener, acceptor)
			pmStream, peerStream := ost, ast
			if !pmIsOpener {
				pmStream, peerStream = ast, ost
			}
			peerStream.Close()
			pmStream.SetWriteDeadline(time.Now().Add(10 * time.Second))
			var werr error
			for werr == nil {
				_, werr = pmStream.Write(make([]byte, 1024))
				time.Sleep(time.Millisecond)
			}
			if !errors.Is(werr, polymux.ErrStreamReset) {
				t.Errorf("polymux Write to a stream muxado closed: %v, want ErrStreamReset (muxado answers data for a closed stream with RST)", werr)
			}
			pmStream.Close()
		default:
			t.Logf("%s has no way to reset a stream", c.peer.Name)
		}

		// 3. The session still works.
		e.serveEcho(acceptor)
		e.runEchoClients(opener, 4, 64<<10)
	})
}

// pair opens a stream on opener, writes one byte so that even muxado's
// lazy open reaches the acceptor, and returns it with the accepted stream
// (its byte read).
func (e *env) pair(opener, acceptor muxes.Session) (muxes.Stream, muxes.Stream) {
	e.t.Helper()
	acc := make(chan muxes.Stream, 1)
	e.spawn(func() {
		st, err := acceptor.Accept(e.ctx)
		if err == nil {
			acc <- st
		}
		close(acc)
	})
	ost := e.open(opener)
	if _, err := ost.Write([]byte("p")); err != nil {
		e.t.Fatalf("write: %v", err)
	}
	ast, ok := <-acc
	if !ok {
		e.t.Fatal("accept failed")
	}
	var one [1]byte
	if _, err := io.ReadFull(ast, one[:]); err != nil {
		e.t.Fatalf("read: %v", err)
	}
	return ost, ast
}

// checkEcho round-trips a few bytes over a stream whose other end echoes.
func checkEcho(st muxes.Stream, msg string) error {
	st.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := st.Write([]byte(msg)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(st, buf); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

// TestSmuxWriteToReturnsEOF asserts a bug of xtaci/smux v1.5.56:
// Stream.WriteTo, which io.Copy prefers to Read, returns io.EOF at the end
// of the stream instead of nil (io.WriterTo's contract), so io.Copy from a
// smux stream reports a clean end as an error. muxes.SmuxStream hides
// WriteTo for that reason.
func TestSmuxWriteToReturnsEOF(t *testing.T) {
	c := cell{muxes.Smux(2), true}
	e := newEnv(t, c, muxes.Options{}, 30*time.Second)
	st := e.open(e.client)
	defer st.Close()
	if _, err := st.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	raw, err := e.server.Native().(*smux.Session).AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got bytes.Buffer
	n, err := io.Copy(&got, raw)
	if n != 5 || got.String() != "hello" {
		t.Fatalf("io.Copy from smux: %d bytes %q, %v", n, got.String(), err)
	}
	if err != io.EOF {
		t.Fatalf("io.Copy from a smux stream ended with %v; xtaci/smux's WriteTo used to return io.EOF (bug fixed? drop the workaround in muxes.SmuxStream)", err)
	}
}

// TestMuxadoCloseWaitsForWindow asserts a bug of ngrok muxado v2.0.2: a
// Write waiting for window holds the stream's writer lock
// (stream.write → condWindow.Decrement, which has no deadline), and Close
// sends its FIN through the same lock, so Close blocks until the peer
// reads (or the session dies), unlike a net.Conn's Close. Here the
// polymux server reads nothing at first: muxado's Close hangs; once
// polymux drains the stream, the Write completes and Close returns.
func TestMuxadoCloseWaitsForWindow(t *testing.T) {
	c := cell{muxes.Muxado, false}
	e := newEnv(t, c, muxes.Options{}, 30*time.Second)
	st := e.open(e.client)
	const size = 1 << 20
	wrote := make(chan error, 1)
	go func() {
		_, err := st.Write(make([]byte, size))
		wrote <- err
	}()
	srv := e.accept(e.server) // muxado's SYN rides on the first DATA
	time.Sleep(200 * time.Millisecond)
	closed := make(chan error, 1)
	go func() { closed <- st.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("muxado Close returned (%v) while a Write waited for window; the bug seems fixed", err)
	case <-time.After(500 * time.Millisecond):
	}
	n, _, err := readAllHash(srv)
	if err != nil || n != size {
		t.Fatalf("polymux read %d bytes, %v; want %d and EOF", n, err, size)
	}
	if err := <-wrote; err != nil {
		t.Fatalf("muxado Write: %v", err)
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("muxado Close still blocked after the window opened")
	}
}
