package interop

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/polymux/polymux"
	"github.com/polymux/polymux/internal/loopback"
	"github.com/polymux/polymux/interop/internal/muxes"
	"github.com/xtaci/smux"
)

// cell is one combination of the test matrix: a peer library (which fixes
// the protocol) and a direction.
type cell struct {
	peer muxes.Lib
	// polymuxClient: a polymux client against the peer's server; else the
	// peer's client against a polymux server.
	polymuxClient bool
}

func (c cell) pm() muxes.Lib { return muxes.Polymux(c.peer.Protocol) }

func (c cell) clientLib() muxes.Lib {
	if c.polymuxClient {
		return c.pm()
	}
	return c.peer
}

func (c cell) serverLib() muxes.Lib {
	if c.polymuxClient {
		return c.peer
	}
	return c.pm()
}

// name is the subtest name: protocol/peer/direction.
func (c cell) name() string {
	dir := "peer-client"
	if c.polymuxClient {
		dir = "polymux-client"
	}
	return c.peer.Protocol.String() + "/" + strings.ReplaceAll(c.peer.Name, "/", "-") + "/" + dir
}

// cells is the whole matrix: every peer, both directions.
func cells() []cell {
	var cs []cell
	for _, p := range muxes.Peers() {
		cs = append(cs, cell{p, true}, cell{p, false})
	}
	return cs
}

// forEachCell runs f for every cell as a subtest.
func forEachCell(t *testing.T, f func(t *testing.T, c cell)) {
	for _, c := range cells() {
		t.Run(c.name(), func(t *testing.T) { f(t, c) })
	}
}

// env is one client and one server session over TCP on 127.0.0.1, bounded
// by a watchdog: when the time is up, both sessions and connections are
// closed (so every blocked call returns) and the test fails with the
// goroutines of that moment.
type env struct {
	t              *testing.T
	cell           cell
	ctx            context.Context // done when the watchdog fires or the test ends
	client, server muxes.Session
	wg             sync.WaitGroup // goroutines started with e.spawn
	closeOnce      sync.Once
	closeAll       func()
}

// newEnv connects a client of c.clientLib() to a server of c.serverLib().
func newEnv(t *testing.T, c cell, o muxes.Options, timeout time.Duration) *env {
	t.Helper()
	return newEnvWrapped(t, c, o, timeout, nil, nil)
}

// newEnvWrapped is newEnv with the connection of the polymux side passed
// through wrapPM, and the peer's through wrapPeer, where they are set.
func newEnvWrapped(t *testing.T, c cell, o muxes.Options, timeout time.Duration, wrapPM, wrapPeer func(net.Conn) net.Conn) *env {
	t.Helper()
	checkLeaks(t)
	cc, sc := loopback.MustTCPPair(t)
	e := &env{t: t, cell: c}
	pmConn, peerConn := &cc, &sc
	if !c.polymuxClient {
		pmConn, peerConn = &sc, &cc
	}
	if wrapPM != nil {
		*pmConn = wrapPM(*pmConn)
	}
	if wrapPeer != nil {
		*peerConn = wrapPeer(*peerConn)
	}
	var err error
	if e.server, err = c.serverLib().Server(sc, o); err != nil {
		cc.Close()
		t.Fatalf("%s server: %v", c.serverLib().Name, err)
	}
	if e.client, err = c.clientLib().Client(cc, o); err != nil {
		e.server.Close()
		t.Fatalf("%s client: %v", c.clientLib().Name, err)
	}
	e.closeAll = func() {
		e.closeOnce.Do(func() {
			e.client.Close()
			e.server.Close()
			cc.Close()
			sc.Close()
		})
	}
	e.watchdog(timeout)
	return e
}

// watchdog bounds the test: after timeout, e.closeAll runs and the test
// fails with a goroutine dump. It registers the cleanup that closes
// everything and waits for the goroutines of e.spawn.
func (e *env) watchdog(timeout time.Duration) {
	t := e.t
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	e.ctx = ctx
	var dump string
	stop := context.AfterFunc(ctx, func() {
		if ctx.Err() == context.DeadlineExceeded {
			dump = goroutines()
		}
		e.closeAll()
	})
	t.Cleanup(func() {
		timedOut := ctx.Err() == context.DeadlineExceeded
		cancel()
		stop()
		e.closeAll() // if the watchdog fired, this waits for its call to finish
		done := make(chan struct{})
		go func() { e.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("goroutines of the test still running 10 s after both sessions were closed:\n%s", goroutines())
			<-done
		}
		if timedOut {
			t.Errorf("timed out after %v; both sessions were closed. Goroutines at that moment:\n%s", timeout, dump)
		}
	})
}

// spawn runs f in a goroutine the test waits for at its end.
func (e *env) spawn(f func()) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		f()
	}()
}

// pm is the polymux side's session.
func (e *env) pm() *polymux.Session {
	if e.cell.polymuxClient {
		return e.client.Native().(*polymux.Session)
	}
	return e.server.Native().(*polymux.Session)
}

// peer is the peer library's session.
func (e *env) peer() muxes.Session {
	if e.cell.polymuxClient {
		return e.server
	}
	return e.client
}

// pmSide is the polymux side as a muxes.Session.
func (e *env) pmSide() muxes.Session {
	if e.cell.polymuxClient {
		return e.client
	}
	return e.server
}

// serveEcho accepts streams on s until it ends and echoes each: everything
// read is written back, then the stream is half-closed and closed.
func (e *env) serveEcho(s muxes.Session) {
	e.spawn(func() {
		for {
			st, err := s.Accept(e.ctx)
			if err != nil {
				return
			}
			e.spawn(func() { echo(st) })
		}
	})
}

func echo(st muxes.Stream) {
	defer st.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := st.Read(buf)
		if n > 0 {
			if _, werr := st.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err == io.EOF {
				st.CloseWrite()
			}
			return
		}
	}
}

// open opens a stream on s, failing the test on error.
func (e *env) open(s muxes.Session) muxes.Stream {
	e.t.Helper()
	st, err := s.Open(e.ctx)
	if err != nil {
		e.t.Fatalf("open: %v", err)
	}
	return st
}

// accept accepts a stream on s, failing the test on error.
func (e *env) accept(s muxes.Session) muxes.Stream {
	e.t.Helper()
	st, err := s.Accept(e.ctx)
	if err != nil {
		e.t.Fatalf("accept: %v", err)
	}
	return st
}

// randData is a reproducible stream of random bytes.
func randData(seed uint64) io.Reader {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	return rand.NewChaCha8(key)
}

// writeRandom writes size random bytes from seed to w in writes of varying
// sizes (1 B to 128 KiB), and returns their SHA-256.
func writeRandom(w io.Writer, size int, seed uint64) ([32]byte, error) {
	src := randData(seed)
	sizes := rand.New(rand.NewPCG(seed, 1))
	h := sha256.New()
	buf := make([]byte, 128<<10)
	for size > 0 {
		n := min(size, 1+sizes.IntN(len(buf)))
		if sizes.IntN(8) == 0 {
			n = min(size, 1+sizes.IntN(64)) // some tiny writes
		}
		p := buf[:n]
		src.Read(p)
		h.Write(p)
		if _, err := w.Write(p); err != nil {
			var sum [32]byte
			return sum, err
		}
		size -= n
	}
	return [32]byte(h.Sum(nil)), nil
}

// readAllHash reads r to EOF and returns the count and SHA-256 of the bytes.
// It calls Read, never a WriterTo.
func readAllHash(r io.Reader) (int64, [32]byte, error) {
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var total int64
	for {
		n, err := r.Read(buf)
		h.Write(buf[:n])
		total += int64(n)
		if err == io.EOF {
			return total, [32]byte(h.Sum(nil)), nil
		}
		if err != nil {
			return total, [32]byte(h.Sum(nil)), err
		}
	}
}

// echoRoundTrip writes size random bytes on st while reading the echo,
// half-closes, reads the echo to EOF and checks it, then closes st.
//
// With lateFIN it half-closes only once the whole echo is back: xtaci/smux
// v1.5.56 drops what it receives after its own CloseWrite once the peer's
// FIN arrives (see TestHalfClose), so a smux opener must not half-close
// while echoed data is still on its way.
func echoRoundTrip(st muxes.Stream, size int, seed uint64, lateFIN bool) error {
	defer st.Close()
	type result struct {
		sum [32]byte
		err error
	}
	wrote := make(chan result, 1)
	echoed := make(chan struct{})
	go func() {
		sum, err := writeRandom(st, size, seed)
		if err == nil && lateFIN {
			<-echoed
		}
		if err == nil {
			err = st.CloseWrite()
		}
		wrote <- result{sum, err}
	}()
	var r io.Reader = st
	if lateFIN {
		r = &signalAt{r: st, n: int64(size), ch: echoed}
	} else {
		close(echoed)
	}
	n, got, err := readAllHash(r)
	if err != nil {
		st.Close()
		if lateFIN && n < int64(size) {
			close(echoed)
		}
		<-wrote
		return fmt.Errorf("reading the echo after %d bytes: %w", n, err)
	}
	if lateFIN && n < int64(size) {
		close(echoed)
	}
	w := <-wrote
	switch {
	case w.err != nil:
		return fmt.Errorf("writing: %w", w.err)
	case n != int64(size):
		return fmt.Errorf("echo is %d bytes, want %d", n, size)
	case got != w.sum:
		return fmt.Errorf("echo of %d bytes differs from what was sent (SHA-256 %x, want %x)", n, got[:8], w.sum[:8])
	}
	return nil
}

// signalAt closes ch once n bytes have been read through it.
type signalAt struct {
	r    io.Reader
	n    int64
	ch   chan struct{}
	read int64
}

func (s *signalAt) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	before := s.read
	s.read += int64(n)
	if before < s.n && s.read >= s.n {
		close(s.ch)
	}
	return n, err
}

// isSmux reports whether s is an xtaci/smux session.
func isSmux(s muxes.Session) bool {
	_, ok := s.Native().(*smux.Session)
	return ok
}

// runEchoClients opens n streams on s at once and round-trips size bytes
// on each; the peer must be serving echo.
func (e *env) runEchoClients(s muxes.Session, n, size int) {
	t := e.t
	t.Helper()
	errs := make(chan error, n)
	for i := range n {
		go func() {
			st, err := s.Open(e.ctx)
			if err != nil {
				errs <- fmt.Errorf("stream %d: open: %w", i, err)
				return
			}
			if err := echoRoundTrip(st, size, uint64(i), isSmux(s)); err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
				return
			}
			errs <- nil
		}()
	}
	failed := 0
	for range n {
		if err := <-errs; err != nil {
			failed++
			if failed <= 5 {
				t.Error(err)
			}
		}
	}
	if failed > 5 {
		t.Errorf("... %d of %d streams failed", failed, n)
	}
}

// goroutines returns the stacks of every goroutine.
func goroutines() string {
	buf := make([]byte, 4<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// goroutine is one goroutine of a stack dump.
type goroutine struct {
	id    int
	stack string
}

func parseGoroutines(dump string) []goroutine {
	var gs []goroutine
	for _, block := range strings.Split(dump, "\n\n") {
		// "goroutine 123 [running]:"
		rest, ok := strings.CutPrefix(block, "goroutine ")
		if !ok {
			continue
		}
		idStr, _, _ := strings.Cut(rest, " ")
		id, err := strconv.Atoi(idStr)
		if err != nil {
			continue
		}
		gs = append(gs, goroutine{id, block})
	}
	return gs
}

// ours reports whether a goroutine runs polymux code or this package's:
// those must all end with the test. Goroutines that only run a peer
// library's code (hashicorp/yamux, go-yamux, smux and muxado may keep
// some for a moment, or for good) are not checked.
func (g goroutine) ours() bool {
	return strings.Contains(g.stack, "github.com/polymux/polymux")
}

// checkLeaks fails the test if goroutines running polymux code (or this
// package's) that started during the test are still running 5 s after
// it. Call it before anything that registers cleanups, so its own cleanup
// runs last.
func checkLeaks(t testing.TB) {
	t.Helper()
	before := map[int]bool{}
	for _, g := range parseGoroutines(goroutines()) {
		before[g.id] = true
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			var leaked []string
			for _, g := range parseGoroutines(goroutines()) {
				if !before[g.id] && g.ours() {
					leaked = append(leaked, g.stack)
				}
			}
			if len(leaked) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%d goroutines leaked:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// isEOF reports whether err is io.EOF.
func isEOF(err error) bool { return errors.Is(err, io.EOF) }

// isTimeout reports whether err is a deadline error, of any library.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}
