package polymux

// The hostile-peer kit: a polymux Listener on 127.0.0.1 that the test
// drives, a raw client (rawPeer) that writes hand-built frames of any
// protocol to it, a well-behaved client on the same listener whose
// session must stay unaffected, and a watcher of the process's heap and
// goroutines while an attack runs.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/polymux/polymux/internal/wire"
)

// heapBound is the stated bound on the heap growth any attack may cause in
// a server with the default configuration (see SECURITY.md).
const heapBound = 64 << 20

// scale returns n, or n/div under the race detector, which makes the
// floods several times slower.
func scale(n, div int) int {
	if raceEnabled {
		return max(n/div, 1)
	}
	return n
}

// hostileServer is a polymux Listener (Auto: it detects each client's
// protocol) whose sessions the test receives one by one.
type hostileServer struct {
	t        testing.TB
	ln       *Listener
	sessions chan *Session
	loopDone chan struct{}
	mu       sync.Mutex
	all      []*Session
}

// newHostileServer listens on 127.0.0.1 with cfg. Every session it
// accepts is closed when the test ends, after which the Listener is.
func newHostileServer(t testing.TB, cfg *Config) *hostileServer {
	t.Helper()
	if cfg == nil {
		cfg = &Config{}
	}
	ln, err := Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := &hostileServer{t: t, ln: ln, sessions: make(chan *Session, 64), loopDone: make(chan struct{})}
	go func() {
		defer close(h.loopDone)
		for {
			s, err := ln.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.all = append(h.all, s)
			h.mu.Unlock()
			select {
			case h.sessions <- s:
			default:
				s.Close()
			}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-h.loopDone
		h.mu.Lock()
		all := h.all
		h.mu.Unlock()
		for _, s := range all {
			s.Close()
		}
	})
	return h
}

// next returns the next session the Listener accepted.
func (h *hostileServer) next() *Session {
	h.t.Helper()
	select {
	case s := <-h.sessions:
		return s
	case <-time.After(10 * time.Second):
		h.t.Fatal("the listener accepted no session within 10 s")
		return nil
	}
}

// helloFrame is a harmless first frame by which the server detects proto:
// a ping (yamux), a NOP (smux) or GoAway(0) (muxado, whose only other
// detectable first frame opens a stream).
func helloFrame(proto Protocol) wire.Frame {
	switch proto {
	case Yamux:
		return wire.Frame{Type: wire.TypePing, Flags: wire.FlagSYN}
	case MuxadoV2:
		return wire.Frame{Type: wire.TypeGoAway}
	}
	return wire.Frame{Type: wire.TypeNop}
}

// dialRaw connects a raw peer of proto to the listener, sends the hello
// frame and returns the peer and the server session serving it.
func (h *hostileServer) dialRaw(proto Protocol) (*rawPeer, *Session) {
	h.t.Helper()
	c, err := net.Dial("tcp", h.ln.Addr().String())
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	codec, err := codecFor(proto)
	if err != nil {
		h.t.Fatal(err)
	}
	p := &rawPeer{t: h.t, conn: c, codec: codec, br: bufio.NewReaderSize(c, 64<<10)}
	if err := p.send(helloFrame(proto), nil); err != nil {
		h.t.Fatal(err)
	}
	s := h.next()
	if s.Protocol() != proto {
		h.t.Fatalf("raw %v peer detected as %v", proto, s.Protocol())
	}
	return p, s
}

// dialGood connects a well-behaved client of proto whose server session
// echoes every stream, and checks one round trip.
func (h *hostileServer) dialGood(proto Protocol) *Session {
	h.t.Helper()
	c, err := Dial("tcp", h.ln.Addr().String(), &Config{Protocol: proto})
	if err != nil {
		h.t.Fatal(err)
	}
	st, err := c.OpenStream(ctx(h.t)) // its SYN lets the server detect proto
	if err != nil {
		h.t.Fatal(err)
	}
	s := h.next()
	wait := serve(s, echo)
	h.t.Cleanup(func() {
		c.Close()
		s.Close()
		wait()
	})
	if err := roundTrip(st, randomBytes(4<<10)); err != nil {
		h.t.Fatalf("good %v client: %v", proto, err)
	}
	return c
}

// checkGood checks that the good session still echoes and that a new
// client of proto is served: an attack on one session never affects the
// others on the listener.
func (h *hostileServer) checkGood(good *Session, proto Protocol) {
	h.t.Helper()
	st, err := good.OpenStream(ctx(h.t))
	if err != nil {
		h.t.Fatalf("good session after the attack: %v", err)
	}
	if err := roundTrip(st, randomBytes(256<<10)); err != nil {
		h.t.Fatalf("good session after the attack: %v", err)
	}
	h.dialGood(proto)
}

// serve accepts streams on s and runs handle on each in its own goroutine
// until the session ends; the returned function waits for all of them.
// Unlike acceptLoop it keeps no per-stream state, so floods of streams do
// not grow the test's own heap.
func serve(s *Session, handle func(*Stream)) (wait func()) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			st, err := s.AcceptStream(context.Background())
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(st)
			}()
		}
	}()
	return wg.Wait
}

// encode appends f to dst, panicking on a frame the codec cannot express
// (a bug in the test).
func (p *rawPeer) encode(dst []byte, f wire.Frame) []byte {
	b, err := p.codec.AppendFrame(dst, f)
	if err != nil {
		panic(err)
	}
	return b
}

// flood sends n frames, appended by add(dst, i), in writes of about 64 KiB,
// and returns the first write error.
func (p *rawPeer) flood(n int, add func(dst []byte, i int) []byte) error {
	buf := make([]byte, 0, 80<<10)
	for i := range n {
		buf = add(buf, i)
		if len(buf) >= 64<<10 {
			if err := p.sendRaw(buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
	}
	if len(buf) > 0 {
		return p.sendRaw(buf)
	}
	return nil
}

// clientID is the id of the i-th stream a client opens.
func (p *rawPeer) clientID(i int) uint32 { return p.codec.Caps().FirstID[0] + 2*uint32(i) }

// Neutral stream frames every codec can encode (smux has no RST).
func synFrame(id uint32) wire.Frame {
	return wire.Frame{Type: wire.TypeWindow, Flags: wire.FlagSYN, Stream: id}
}
func finFrame(id uint32) wire.Frame {
	return wire.Frame{Type: wire.TypeWindow, Flags: wire.FlagFIN, Stream: id}
}
func rstFrame(id uint32) wire.Frame {
	return wire.Frame{Type: wire.TypeWindow, Flags: wire.FlagRST, Stream: id, Value: uint32(wire.CodeNone)}
}
func dataFrame(id uint32, n int) wire.Frame {
	return wire.Frame{Type: wire.TypeData, Stream: id, Length: uint32(n)}
}

// readFrames reads frames in the background until the connection ends,
// calling fn with each frame and its payload (valid only during the call).
// The returned function waits for the loop to end.
func (p *rawPeer) readFrames(fn func(f wire.Frame, payload []byte)) (wait func()) {
	done := make(chan struct{})
	p.conn.SetReadDeadline(time.Time{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			f, err := p.codec.ReadFrame(p.br)
			if err != nil {
				return
			}
			var payload []byte
			if f.Type == wire.TypeData && f.Length > 0 {
				if int(f.Length) > len(buf) {
					if _, err := p.br.Discard(int(f.Length)); err != nil {
						return
					}
				} else {
					payload = buf[:f.Length]
					if _, err := io.ReadFull(p.br, payload); err != nil {
						return
					}
				}
			}
			fn(f, payload)
		}
	}()
	return func() { <-done }
}

// expectEcho opens stream id on the raw peer's session, sends msg and FIN,
// and expects the server application (an echo) to send msg and FIN back:
// the session still serves streams after the attack. The raw peer must not
// be reading in the background.
func (p *rawPeer) expectEcho(id uint32, msg string) {
	p.t.Helper()
	var b []byte
	b = p.encode(b, synFrame(id))
	b = append(p.encode(b, dataFrame(id, len(msg))), msg...)
	b = p.encode(b, finFrame(id))
	if err := p.sendRaw(b); err != nil {
		p.t.Fatalf("sending the echo stream: %v", err)
	}
	var got []byte
	for {
		f, payload, err := p.next()
		if err != nil {
			p.t.Fatalf("waiting for the echo of stream %d (got %q): %v", id, got, err)
		}
		if f.Stream != id {
			continue
		}
		if f.Flags&wire.FlagRST != 0 {
			p.t.Fatalf("echo stream %d reset: %v", id, f)
		}
		got = append(got, payload...)
		if f.Flags&wire.FlagFIN != 0 {
			break
		}
	}
	if string(got) != msg {
		p.t.Fatalf("echo of stream %d: %q, want %q", id, got, msg)
	}
}

// expectProtocolEnd waits for s to end with ErrProtocol; where the
// protocol has GoAway, the peer must first receive GoAway(protocol error),
// and in every protocol the connection must then be closed.
func expectProtocolEnd(t *testing.T, s *Session, p *rawPeer) {
	t.Helper()
	if s.caps.GoAway {
		expectProtocolClose(t, s, p)
	} else {
		select {
		case <-s.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("session still open after a protocol violation")
		}
		if !errors.Is(s.Err(), ErrProtocol) {
			t.Fatalf("Err() = %v, want ErrProtocol", s.Err())
		}
	}
	p.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	// Closing a socket with unread bytes resets the connection.
	if _, err := io.Copy(io.Discard, p.br); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("connection not closed after the protocol error: %v", err)
	}
}

// heapWatch samples the heap and the goroutine count while an attack runs.
// The heap is measured as the live heap of the latest collection, so that
// garbage (which the collector frees at its own pace) does not count.
type heapWatch struct {
	baseHeap   uint64
	baseGo     int
	peakHeap   atomic.Uint64
	peakAlloc  atomic.Uint64 // HeapAlloc, garbage included: logged only
	peakGo     atomic.Int64
	stop, done chan struct{}
}

// liveHeap is the heap the latest collection found live.
func liveHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	return s[0].Value.Uint64()
}

// heapAfterGC is the live heap after a full collection.
func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	return liveHeap()
}

// watchHeap starts sampling every 10 ms; stop it with check.
func watchHeap(t testing.TB) *heapWatch {
	w := &heapWatch{baseHeap: heapAfterGC(), baseGo: runtime.NumGoroutine(), stop: make(chan struct{}), done: make(chan struct{})}
	w.peakHeap.Store(w.baseHeap)
	w.peakAlloc.Store(w.baseHeap)
	w.peakGo.Store(int64(w.baseGo))
	go func() {
		defer close(w.done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		var m runtime.MemStats
		for {
			if h := liveHeap(); h > w.peakHeap.Load() {
				w.peakHeap.Store(h)
			}
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > w.peakAlloc.Load() {
				w.peakAlloc.Store(m.HeapAlloc)
			}
			if g := int64(runtime.NumGoroutine()); g > w.peakGo.Load() {
				w.peakGo.Store(g)
			}
			select {
			case <-tick.C:
			case <-w.stop:
				return
			}
		}
	}()
	t.Cleanup(w.halt)
	return w
}

func (w *heapWatch) halt() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// check stops the watch and fails the test if the live heap grew by more
// than peak at any sample, or by more than retained after the attack, or
// if more than goroutines goroutines were added at any time.
func (w *heapWatch) check(t testing.TB, peak, retained uint64, goroutines int) {
	t.Helper()
	w.halt()
	now := heapAfterGC()
	grown := func(n uint64) uint64 {
		if n > w.baseHeap {
			return n - w.baseHeap
		}
		return 0
	}
	grownPeak, grownNow := grown(w.peakHeap.Load()), grown(now)
	addedGo := int(w.peakGo.Load()) - w.baseGo
	t.Logf("heap: base %s, peak live +%s (with garbage +%s), retained +%s; goroutines: base %d, peak +%d",
		sizeMiB(w.baseHeap), sizeMiB(grownPeak), sizeMiB(grown(w.peakAlloc.Load())), sizeMiB(grownNow), w.baseGo, addedGo)
	if grownPeak > peak {
		t.Errorf("live heap grew by %s during the attack, bound %s", sizeMiB(grownPeak), sizeMiB(peak))
	}
	if grownNow > retained {
		t.Errorf("heap retained %s more after the attack, bound %s", sizeMiB(grownNow), sizeMiB(retained))
	}
	if addedGo > goroutines {
		t.Errorf("%d goroutines added during the attack, bound %d", addedGo, goroutines)
	}
}

func sizeMiB(n uint64) string { return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20)) }

// ctrlBacklog is what the session's writer holds in its bounded queues of
// replies to the peer: pongs and refusals.
func ctrlBacklog(s *Session) (pongs, refusals int) {
	q := &s.w.sched
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pongs), len(q.refusals)
}

// watchCtrl samples the writer's reply queues until the test ends or the
// returned stop is called, failing the test if they exceed their bounds.
func watchCtrl(t testing.TB, s *Session) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	var maxP, maxR int
	go func() {
		defer close(done)
		for {
			p, r := ctrlBacklog(s)
			maxP, maxR = max(maxP, p), max(maxR, r)
			select {
			case <-quit:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			close(quit)
			<-done
			if maxP > maxPongs || maxR > maxRefusals {
				t.Errorf("writer queues held %d pongs and %d refusals; bounds %d and %d", maxP, maxR, maxPongs, maxRefusals)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// openFirst opens the raw peer's first stream and returns its id.
func (p *rawPeer) openFirst(t testing.TB) uint32 {
	t.Helper()
	id := p.clientID(0)
	if err := p.send(synFrame(id), nil); err != nil {
		t.Fatal(err)
	}
	return id
}

// openFirstStream opens the raw peer's first stream and accepts it on s.
func openFirstStream(t testing.TB, p *rawPeer, s *Session) (uint32, *Stream) {
	t.Helper()
	id := p.openFirst(t)
	st, err := s.AcceptStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	return id, st
}
