package polymux

// Attacks by a hostile peer on a polymux server, each run against a
// Listener in this process while the test watches the heap, the goroutines
// and a well-behaved session on the same listener. See SECURITY.md for
// what each attack does to a polymux server.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/polymux/polymux/internal/wire"
)

func TestHostilePingFloodNeverReadingTheReplies(t *testing.T) {
	// Only yamux answers pings. A peer that floods pings without reading
	// the replies meets backpressure: once maxPongs replies wait, the
	// session stops reading until the writer can take them, and no reply
	// is ever dropped.
	t.Run("reads later", func(t *testing.T) {
		// Over net.Pipe, which buffers nothing, the session stops reading
		// as soon as the peer does.
		checkLeaks(t)
		s, p := newRawPeer(t, Yamux, true, nil)
		n := scale(200_000, 4)
		flooded := make(chan error, 1)
		go func() {
			flooded <- p.flood(n, func(b []byte, i int) []byte {
				return p.encode(b, wire.Frame{Type: wire.TypePing, Flags: wire.FlagSYN, Value: uint32(i)})
			})
		}()
		eventually(t, 10*time.Second, "the ping replies at their bound", func() bool {
			pongs, _ := ctrlBacklog(s)
			return pongs == maxPongs
		})
		if got := s.Stats().FramesReceived; got >= uint64(n) {
			t.Fatalf("the session read all %d pings while none of its replies was read", got)
		}
		select {
		case err := <-flooded:
			t.Fatalf("the flood finished (%v) while the session held its replies: no backpressure", err)
		default:
		}
		// Reading again, the peer gets one reply for every ping.
		seen := make([]bool, n)
		var mu sync.Mutex
		replies := 0
		wait := p.readFrames(func(f wire.Frame, _ []byte) {
			if f.Type != wire.TypePing || f.Flags&wire.FlagACK == 0 || f.Value >= uint32(n) {
				return
			}
			mu.Lock()
			if !seen[f.Value] {
				seen[f.Value] = true
				replies++
			}
			mu.Unlock()
		})
		if err := <-flooded; err != nil {
			t.Fatalf("flooding %d pings: %v", n, err)
		}
		eventually(t, 30*time.Second, "a reply to every ping", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return replies == n
		})
		if s.IsClosed() {
			t.Fatalf("the flooded session closed: %v", s.Err())
		}
		s.Close()
		wait()
	})
	t.Run("never reads", func(t *testing.T) {
		// A peer that never reads ends its own session by WriteTimeout,
		// while the queued replies stay within their bound and the heap
		// flat, and the other sessions carry on.
		checkLeaks(t)
		h := newHostileServer(t, &Config{WriteTimeout: time.Second})
		good := h.dialGood(Yamux)
		p, s := h.dialRaw(Yamux)
		hw := watchHeap(t)
		stopCtrl := watchCtrl(t, s)
		flooded := make(chan error, 1)
		go func() {
			// Until the session ends: bounded by count and by the 5 s
			// each write may take.
			flooded <- p.flood(50_000_000, func(b []byte, i int) []byte {
				return p.encode(b, wire.Frame{Type: wire.TypePing, Flags: wire.FlagSYN, Value: uint32(i)})
			})
		}()
		select {
		case <-s.Done():
		case <-time.After(60 * time.Second):
			t.Fatal("the session of a peer that never reads did not end")
		}
		if err := s.Err(); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the session ended with %v, want the write timeout", err)
		}
		if err := <-flooded; err == nil {
			t.Fatal("the flood of a dead session completed")
		}
		t.Logf("%d pings read before the write timeout", s.Stats().FramesReceived)
		stopCtrl()
		hw.check(t, heapBound, 4<<20, 8)
		h.checkGood(good, Yamux)
	})
}

func TestHostileRapidReset(t *testing.T) {
	// HTTP/2's "rapid reset": open streams and reset them as soon as the
	// application has taken them, over and over. The application answers
	// each stream as a server would: a response, then an echo.
	// smux has no RST: there the peer closes its side at once instead, and
	// a stream lives until our FIN is written. So a peer that also never
	// reads fills MaxIncomingStreams, and then the refusals it is owed,
	// until the read loop waits for a writer that cannot write: such a
	// peer's session ends by WriteTimeout, shortened here.
	for _, proto := range protocols {
		for _, reads := range []bool{true, false} {
			name := proto.String() + "/peer reads"
			if !reads {
				name = proto.String() + "/peer never reads"
			}
			codec, _ := codecFor(proto)
			endsItself := !reads && !codec.Caps().Reset
			t.Run(name, func(t *testing.T) {
				checkLeaks(t)
				cfg := &Config{}
				if endsItself {
					cfg.WriteTimeout = 2 * time.Second
				}
				h := newHostileServer(t, cfg)
				good := h.dialGood(proto)
				p, s := h.dialRaw(proto)
				var served atomic.Int64
				wait := serve(s, func(st *Stream) {
					served.Add(1)
					if _, err := st.Write(rapidBody[:]); err != nil {
						st.Close()
						return
					}
					buf := copyBufs.Get().(*[]byte)
					defer copyBufs.Put(buf)
					io.CopyBuffer(st, st, *buf)
					st.CloseWrite()
				})
				defer wait()
				defer s.Close()
				hw := watchHeap(t)
				stopCtrl := watchCtrl(t, s)
				const batch = 200 // below AcceptBacklog: the application takes every stream
				n := scale(20_000, 4) / batch * batch
				final := p.clientID(n)
				echoed := make(chan string, 1)
				if reads {
					var got []byte
					p.readFrames(func(f wire.Frame, payload []byte) {
						if f.Stream != final {
							return
						}
						got = append(got, payload...)
						if f.Flags&(wire.FlagFIN|wire.FlagRST) != 0 {
							echoed <- string(got)
						}
					})
				}
				start := time.Now()
				for first := 0; first < n && !s.IsClosed(); first += batch {
					err := p.flood(batch, func(b []byte, i int) []byte { return p.encode(b, synFrame(p.clientID(first+i))) })
					if err != nil && !endsItself {
						t.Fatalf("opening streams %d..: %v", first, err)
					}
					// Wait until the application has taken them (or the
					// server refused them).
					for deadline := time.Now().Add(10 * time.Second); ; {
						st := s.Stats()
						if served.Load()+int64(st.StreamsRefused) >= int64(first+batch) || s.IsClosed() {
							break
						}
						if time.Now().After(deadline) {
							t.Fatalf("streams %d..%d not taken within 10 s: %+v", first, first+batch, st)
						}
						time.Sleep(100 * time.Microsecond)
					}
					err = p.flood(batch, func(b []byte, i int) []byte {
						if s.caps.Reset {
							return p.encode(b, rstFrame(p.clientID(first+i)))
						}
						return p.encode(b, finFrame(p.clientID(first+i)))
					})
					if err != nil && !endsItself {
						t.Fatalf("resetting streams %d..: %v", first, err)
					}
				}
				st := s.Stats()
				t.Logf("%d cycles in %v: %d served, %d refused", n, time.Since(start), served.Load(), st.StreamsRefused)
				if endsItself {
					select {
					case <-s.Done():
					case <-time.After(30 * time.Second):
						t.Fatal("the session of an smux peer that never reads did not end")
					}
					if !errors.Is(s.Err(), os.ErrDeadlineExceeded) {
						t.Fatalf("the session ended with %v, want the write timeout", s.Err())
					}
				} else if s.IsClosed() {
					t.Fatalf("the session closed: %v", s.Err())
				}
				if reads {
					// Every stream ends and is forgotten, and a normal
					// stream is still served.
					eventually(t, 10*time.Second, "every reset stream forgotten", func() bool { return s.NumStreams() == 0 })
					var b []byte
					b = p.encode(b, synFrame(final))
					b = append(p.encode(b, dataFrame(final, 5)), "hello"...)
					b = p.encode(b, finFrame(final))
					if err := p.sendRaw(b); err != nil {
						t.Fatal(err)
					}
					select {
					case got := <-echoed:
						if len(got) != rapidResponse+5 || !strings.HasSuffix(got, "hello") {
							t.Fatalf("echo after the attack: %q", got)
						}
					case <-time.After(10 * time.Second):
						t.Fatal("no echo after the attack")
					}
				}
				stopCtrl()
				// Without RST, streams live until their FIN is written, so
				// a peer that never reads makes the server hold up to
				// MaxIncomingStreams of them, each with its response; the
				// application holds a goroutine per live stream.
				retained := uint64(8 << 20)
				if !s.caps.Reset && !reads {
					retained += defaultMaxIncomingStreams * rapidResponse
				}
				hw.check(t, heapBound, retained, defaultMaxIncomingStreams+64)
				h.checkGood(good, proto)
			})
		}
	}
}

// rapidResponse is what the application of TestHostileRapidReset writes
// on each stream before echoing it.
const rapidResponse = 4 << 10

var rapidBody [rapidResponse]byte

// copyBufs keeps the test's own garbage out of the heap it measures.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 4<<10); return &b }}

func TestHostileStreamOpenFlood(t *testing.T) {
	// A peer opens stream after stream, reading everything we send. With
	// an application that never accepts, the accept backlog bounds the
	// streams held on yamux, whose openers wait for ACKs, and
	// MaxIncomingStreams on muxado, whose streams wait for Accept; smux
	// cannot refuse, so its session stops reading at the backlog until the
	// application accepts. With one that accepts and holds every stream,
	// MaxIncomingStreams bounds them. Every open past the bound is refused
	// (RST, or FIN without RST), and every refusal reaches the peer.
	const backlog, limit = 64, 128
	for _, proto := range protocols {
		for _, accepts := range []bool{false, true} {
			codec, _ := codecFor(proto)
			caps := codec.Caps()
			name := proto.String() + "/never accepted"
			bound := limit
			if !accepts && caps.AckOpens {
				bound = backlog
			}
			if accepts {
				name = proto.String() + "/accepted and held"
			}
			t.Run(name, func(t *testing.T) {
				checkLeaks(t)
				h := newHostileServer(t, &Config{AcceptBacklog: backlog, MaxIncomingStreams: limit})
				good := h.dialGood(proto)
				p, s := h.dialRaw(proto)
				if accepts {
					wait := serve(s, func(*Stream) {}) // holds them open
					defer wait()
					defer s.Close()
				}
				n := scale(500_000, 4)
				seen := make([]bool, n)
				var refused atomic.Int64
				stopReading := p.readFrames(func(f wire.Frame, _ []byte) {
					i := int(f.Stream-p.clientID(0)) / 2
					if f.Type != wire.TypeWindow || f.Flags&(wire.FlagRST|wire.FlagFIN) == 0 || i < 0 || i >= n || seen[i] {
						return
					}
					seen[i] = true
					refused.Add(1)
				})
				hw := watchHeap(t)
				stopCtrl := watchCtrl(t, s)
				var most atomic.Int64
				stopCount := sample(func() { most.Store(max(most.Load(), int64(s.NumStreams()))) })
				flooded := make(chan error, 1)
				start := time.Now()
				go func() {
					flooded <- p.flood(n, func(b []byte, i int) []byte { return p.encode(b, synFrame(p.clientID(i))) })
				}()
				defer func() {
					s.Close()
					<-flooded
					stopReading()
				}()
				if !accepts && !caps.Reset {
					eventually(t, 30*time.Second, "the session pausing at the backlog", func() bool {
						return s.paused.Load() && s.NumStreams() == backlog
					})
					stopCount()
					stopCtrl()
					if got := s.Stats().StreamsAccepted; got != backlog || most.Load() > backlog || refused.Load() != 0 {
						t.Fatalf("paused at %d streams (%d at most), %d refused; want %d, none refused", got, most.Load(), refused.Load(), backlog)
					}
					hw.check(t, heapBound, 4<<20, 16)
					h.checkGood(good, proto)
					// Accepting one lets the next open in.
					if _, err := s.AcceptStream(ctx(t)); err != nil {
						t.Fatal(err)
					}
					eventually(t, 10*time.Second, "the next open taken", func() bool { return s.Stats().StreamsAccepted > backlog })
					return
				}
				if err := <-flooded; err != nil {
					t.Fatalf("opening %d streams: %v", n, err)
				}
				flooded <- nil
				eventually(t, 30*time.Second, "a refusal for every open past the bound", func() bool {
					return refused.Load() == int64(n-bound)
				})
				stopCount()
				st := s.Stats()
				t.Logf("%d opens in %v: %d accepted, %d refused, at most %d streams", n, time.Since(start), st.StreamsAccepted, st.StreamsRefused, most.Load())
				if most.Load() > int64(bound) || st.StreamsAccepted != uint64(bound) || st.StreamsRefused != uint64(n-bound) {
					t.Fatalf("the session held %d streams (%d accepted, %d refused); bound %d", most.Load(), st.StreamsAccepted, st.StreamsRefused, bound)
				}
				if s.IsClosed() {
					t.Fatalf("the session closed: %v", s.Err())
				}
				stopCtrl()
				// The application runs a (short) goroutine per stream.
				hw.check(t, heapBound, 4<<20, limit+16)
				h.checkGood(good, proto)
			})
		}
	}
}

// sample calls f every millisecond until the returned stop is called.
func sample(f func()) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			f()
			select {
			case <-quit:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(quit)
			<-done
			f()
		})
	}
}

// Raw headers, for frames the codecs refuse to encode.
func yamuxRaw(version, typ byte, flags uint16, id, length uint32) []byte {
	b := []byte{version, typ}
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint32(b, id)
	return binary.BigEndian.AppendUint32(b, length)
}

func smuxRaw(version, cmd byte, length uint16, id uint32) []byte {
	b := []byte{version, cmd}
	b = binary.LittleEndian.AppendUint16(b, length)
	return binary.LittleEndian.AppendUint32(b, id)
}

func muxadoRaw(length uint32, typ, flags byte, id uint32) []byte {
	b := []byte{byte(length >> 16), byte(length >> 8), byte(length), typ<<4 | flags}
	return binary.BigEndian.AppendUint32(b, id)
}

func TestHostileEmptyFrameFlood(t *testing.T) {
	// Frames that carry nothing cost the server a header decode each: no
	// memory, no reply, no effect on the session. muxado kills a session
	// on a zero window increment, and so does polymux.
	type flood struct {
		name  string
		proto Protocol
		frame func(p *rawPeer, id uint32) []byte
		fatal bool // the frame breaks the protocol
	}
	emptyData := func(p *rawPeer, id uint32) []byte { return p.encode(nil, dataFrame(id, 0)) }
	nop := func(p *rawPeer, id uint32) []byte { return p.encode(nil, wire.Frame{Type: wire.TypeNop}) }
	floods := []flood{
		{"empty DATA", Yamux, emptyData, false},
		{"zero window update", Yamux, func(p *rawPeer, id uint32) []byte { return yamuxRaw(0, 1, 0, id, 0) }, false},
		{"empty PSH", SmuxV1, emptyData, false},
		{"NOP", SmuxV1, nop, false},
		{"empty PSH", SmuxV2, emptyData, false},
		{"NOP", SmuxV2, nop, false},
		{"unchanged UPD", SmuxV2, func(p *rawPeer, id uint32) []byte {
			return p.encode(nil, wire.Frame{Type: wire.TypeWindow, Stream: id, Value: 0, Window: protocolWindow})
		}, false},
		{"empty DATA", MuxadoV2, emptyData, false},
		{"empty frame of an unknown type", MuxadoV2, func(p *rawPeer, id uint32) []byte { return muxadoRaw(0, 0xF, 0, id) }, false},
		{"zero window increment", MuxadoV2, func(p *rawPeer, id uint32) []byte {
			return append(muxadoRaw(4, 2, 0, id), 0, 0, 0, 0)
		}, true},
	}
	for _, c := range floods {
		t.Run(c.proto.String()+"/"+c.name, func(t *testing.T) {
			checkLeaks(t)
			h := newHostileServer(t, nil)
			good := h.dialGood(c.proto)
			p, s := h.dialRaw(c.proto)
			wait := serve(s, echo)
			defer wait()
			defer s.Close()
			id := p.openFirst(t)
			eventually(t, 5*time.Second, "stream accepted", func() bool { return s.Stats().StreamsAccepted == 1 })
			hw := watchHeap(t)
			before := s.Stats()
			frame := c.frame(p, id)
			n := scale(500_000, 4)
			if c.fatal {
				n = 1
			}
			start := time.Now()
			if err := p.flood(n, func(b []byte, _ int) []byte { return append(b, frame...) }); err != nil {
				t.Fatalf("%d frames: %v", n, err)
			}
			if c.fatal {
				expectProtocolEnd(t, s, p)
				h.checkGood(good, c.proto)
				return
			}
			eventually(t, 30*time.Second, "every frame read", func() bool {
				return s.Stats().FramesReceived >= before.FramesReceived+uint64(n)
			})
			after := s.Stats()
			t.Logf("%d frames read in %v; %d frames sent meanwhile", n, time.Since(start), after.FramesSent-before.FramesSent)
			if sent := after.FramesSent - before.FramesSent; sent > 4 {
				t.Fatalf("the server sent %d frames in reply to %d empty ones", sent, n)
			}
			if s.IsClosed() {
				t.Fatalf("the session closed: %v", s.Err())
			}
			hw.check(t, heapBound, 2<<20, 8)
			p.expectEcho(p.clientID(1), "still served")
			h.checkGood(good, c.proto)
		})
	}
}

func TestHostileWindowUpdateFlood(t *testing.T) {
	// Credit that grows by a byte at a time costs nothing, and credit that
	// would pass 2^32-1 (or, with absolute windows, claims more consumed
	// than was ever sent) breaks the protocol. smux v1 has no windows: a
	// window update there breaks the protocol at once.
	for _, proto := range protocols {
		t.Run(proto.String(), func(t *testing.T) {
			checkLeaks(t)
			h := newHostileServer(t, nil)
			good := h.dialGood(proto)
			p, s := h.dialRaw(proto)
			wait := serve(s, echo)
			defer wait()
			defer s.Close()
			id := p.openFirst(t)
			var grow func(b []byte, i int) []byte
			var overflow []byte
			switch s.caps.Window {
			case wire.WindowNone:
				overflow = append(smuxRaw(1, 4, 8, id), make([]byte, 8)...)
			case wire.WindowAbsolute:
				grow = func(b []byte, i int) []byte {
					return p.encode(b, wire.Frame{Type: wire.TypeWindow, Stream: id, Window: protocolWindow + uint32(i)})
				}
				// 1 byte consumed of none sent.
				overflow = p.encode(nil, wire.Frame{Type: wire.TypeWindow, Stream: id, Value: 1, Window: protocolWindow})
			case wire.WindowDelta:
				grow = func(b []byte, i int) []byte {
					return p.encode(b, wire.Frame{Type: wire.TypeWindow, Stream: id, Value: 1})
				}
				big := uint32(math.MaxUint32)
				if proto == MuxadoV2 {
					big = 0x7FFFFFFF // the largest increment muxado carries: two of them overflow
					overflow = p.encode(overflow, wire.Frame{Type: wire.TypeWindow, Stream: id, Value: big})
				}
				overflow = p.encode(overflow, wire.Frame{Type: wire.TypeWindow, Stream: id, Value: big})
			}
			if grow != nil {
				eventually(t, 5*time.Second, "stream accepted", func() bool { return s.Stats().StreamsAccepted == 1 })
				hw := watchHeap(t)
				before := s.Stats()
				n := scale(500_000, 4)
				start := time.Now()
				if err := p.flood(n, grow); err != nil {
					t.Fatalf("%d window updates: %v", n, err)
				}
				eventually(t, 30*time.Second, "every update read", func() bool {
					return s.Stats().FramesReceived >= before.FramesReceived+uint64(n)
				})
				t.Logf("%d window updates read in %v", n, time.Since(start))
				if sent := s.Stats().FramesSent - before.FramesSent; sent > 4 {
					t.Fatalf("the server sent %d frames in reply to %d window updates", sent, n)
				}
				if s.IsClosed() {
					t.Fatalf("the session closed: %v", s.Err())
				}
				hw.check(t, heapBound, 2<<20, 8)
				p.expectEcho(p.clientID(1), "still served")
			}
			if err := p.sendRaw(overflow); err != nil {
				t.Fatal(err)
			}
			expectProtocolEnd(t, s, p)
			h.checkGood(good, proto)
		})
	}
}

func TestHostileDataDribble(t *testing.T) {
	// A peer that grants one byte of window at a time gets one-byte DATA
	// frames, never more than it granted; our writer neither spins nor
	// allocates per byte, and while the peer grants nothing it costs no
	// CPU at all. smux v1 has no windows.
	for _, proto := range []Protocol{Yamux, SmuxV2, MuxadoV2} {
		t.Run(proto.String(), func(t *testing.T) {
			checkLeaks(t)
			h := newHostileServer(t, nil)
			good := h.dialGood(proto)
			p, s := h.dialRaw(proto)
			id, st := openFirstStream(t, p, s)
			dribble := scale(2000, 4)
			data := randomBytes(protocolWindow + dribble + 1000)
			type result struct {
				n   int
				err error
			}
			wrote := make(chan result, 1)
			go func() {
				n, err := st.Write(data)
				wrote <- result{n, err}
			}()
			// Frames arrive in order: read DATA until got bytes, checking
			// each against data and against the credit granted.
			got, credit := 0, protocolWindow
			p.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			buf := make([]byte, 64<<10)
			readData := func(want int) {
				t.Helper()
				for got < want {
					f, err := p.codec.ReadFrame(p.br)
					if err != nil {
						t.Fatalf("after %d bytes: %v", got, err)
					}
					if f.Type != wire.TypeData || f.Stream != id {
						continue
					}
					if int(f.Length) > credit {
						t.Fatalf("a %d-byte DATA frame with %d bytes of credit", f.Length, credit)
					}
					credit -= int(f.Length)
					b := buf[:f.Length]
					if _, err := io.ReadFull(p.br, b); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(b, data[got:got+len(b)]) {
						t.Fatalf("bytes %d..%d differ from what was written", got, got+len(b))
					}
					got += len(b)
				}
			}
			readData(protocolWindow)
			grant := make([]byte, 0, 64)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			cpu0, cpuOK := processCPU()
			sent0 := s.Stats().FramesSent
			for got < protocolWindow+dribble {
				switch s.caps.Window {
				case wire.WindowDelta:
					grant = p.encode(grant[:0], wire.Frame{Type: wire.TypeWindow, Stream: id, Value: 1})
				case wire.WindowAbsolute:
					grant = p.encode(grant[:0], wire.Frame{Type: wire.TypeWindow, Stream: id, Value: uint32(got), Window: 1})
				}
				credit++
				if _, err := p.conn.Write(grant); err != nil {
					t.Fatal(err)
				}
				readData(got + 1)
			}
			runtime.ReadMemStats(&after)
			cpu1, _ := processCPU()
			frames := s.Stats().FramesSent - sent0
			allocs := after.Mallocs - before.Mallocs
			t.Logf("%d bytes dribbled in %d frames: %d allocations (%d bytes), %v CPU", dribble, frames, allocs, after.TotalAlloc-before.TotalAlloc, cpu1-cpu0)
			// (A few frames of the first window may be counted late.)
			if frames > uint64(dribble)+8 {
				t.Errorf("%d frames sent for %d one-byte grants", frames, dribble)
			}
			if allocs > uint64(dribble)/4 {
				t.Errorf("%d allocations for %d bytes: the writer allocates per byte", allocs, dribble)
			}
			// The writer still holds 1000 bytes and no credit: it waits
			// without spinning. (Its counters settle first.)
			time.Sleep(50 * time.Millisecond)
			cpu0, _ = processCPU()
			sent0 = s.Stats().FramesSent
			time.Sleep(300 * time.Millisecond)
			cpu1, _ = processCPU()
			if frames := s.Stats().FramesSent - sent0; frames != 0 {
				t.Errorf("%d frames sent without credit", frames)
			}
			if cpuOK && cpu1-cpu0 > 100*time.Millisecond {
				t.Errorf("%v of CPU in 300 ms without credit: the writer spins", cpu1-cpu0)
			}
			st.SetWriteDeadline(time.Now())
			select {
			case r := <-wrote:
				if r.n != protocolWindow+dribble || !errors.Is(r.err, ErrTimeout) {
					t.Fatalf("Write = %d, %v; want exactly the %d bytes granted and a timeout", r.n, r.err, protocolWindow+dribble)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the blocked Write ignored its deadline")
			}
			h.checkGood(good, proto)
		})
	}
}

func TestHostilePeerNeverReadsWhileWeWriteOn100Streams(t *testing.T) {
	// The peer opens 100 streams (granting the largest window it can, or
	// leaving the default one) and never reads. Our writers block once
	// the window or the stream's send buffer is full, so the memory held
	// is bounded; their deadlines fire, except for Writes whose own bytes
	// are in the stuck connection write; then WriteTimeout ends the
	// session, waking every call still blocked.
	const streams = 100
	for _, proto := range protocols {
		for _, huge := range []bool{false, true} {
			name := proto.String() + "/default window"
			if huge {
				name = proto.String() + "/huge window"
			}
			t.Run(name, func(t *testing.T) {
				c, err := codecFor(proto)
				if err != nil {
					t.Fatal(err)
				}
				if huge && c.Caps().Window == wire.WindowNone {
					t.Skip("smux v1 has no windows: the default case already lets us write without limit")
				}
				checkLeaks(t)
				h := newHostileServer(t, &Config{WriteTimeout: time.Second})
				good := h.dialGood(proto)
				p, s := h.dialRaw(proto)
				var b []byte
				for i := range streams {
					id := p.clientID(i)
					b = p.encode(b, synFrame(id))
					if huge {
						switch s.caps.Window {
						case wire.WindowDelta:
							inc := uint32(math.MaxUint32 - protocolWindow)
							if proto == MuxadoV2 {
								inc = 0x7FFFFFFF
							}
							b = p.encode(b, wire.Frame{Type: wire.TypeWindow, Stream: id, Value: inc})
						case wire.WindowAbsolute:
							b = p.encode(b, wire.Frame{Type: wire.TypeWindow, Stream: id, Window: math.MaxUint32})
						}
					}
				}
				if err := p.sendRaw(b); err != nil {
					t.Fatal(err)
				}
				var sts []*Stream
				for range streams {
					st, err := s.AcceptStream(ctx(t))
					if err != nil {
						t.Fatal(err)
					}
					sts = append(sts, st)
				}
				hw := watchHeap(t)
				// One more call blocked without a deadline: a Read.
				readErr := make(chan error, 1)
				go func() {
					_, err := sts[0].Read(make([]byte, 1))
					readErr <- err
				}()
				const deadline = 500 * time.Millisecond
				type result struct {
					n   int
					err error
				}
				results := make(chan result, streams)
				start := time.Now()
				chunk := make([]byte, 64<<10)
				for _, st := range sts {
					go func() {
						st.SetWriteDeadline(start.Add(deadline))
						total := 0
						for range 64 { // at most 4 MiB per stream
							n, err := st.Write(chunk)
							total += n
							if err != nil {
								results <- result{total, err}
								return
							}
						}
						results <- result{total, nil}
					}()
				}
				// A stream accepts at most its window; with a huge window
				// or none, at most its send buffer plus what the writer
				// moved into the connection's kernel buffers.
				// A Write whose bytes are inside the stuck connection write
				// (a direct write: 64 KiB from the caller's slice, where
				// there are windows) is held until WriteTimeout ends it.
				bounded := s.caps.Window != wire.WindowNone && !huge
				accepted, held := 0, 0
				for range streams {
					r := <-results
					accepted += r.n
					switch {
					case errors.Is(r.err, ErrTimeout):
					case errors.Is(r.err, ErrSessionClosed) && s.caps.Window != wire.WindowNone && s.IsClosed():
						held++
					case bounded || r.err != nil:
						t.Errorf("Write returned %v after %d bytes, want a timeout", r.err, r.n)
					}
					if bounded && r.n > protocolWindow {
						t.Errorf("a stream accepted %d bytes; its window is %d", r.n, protocolWindow)
					}
				}
				if !bounded && accepted > streams*streamSendBuffer+16<<20 {
					t.Errorf("%d streams accepted %d bytes; bound %d plus the kernel's buffers", streams, accepted, streams*streamSendBuffer)
				}
				if late := time.Since(start) - deadline; late > 2*time.Second {
					t.Errorf("write deadlines fired %v late", late)
				}
				t.Logf("%d streams accepted %s before their deadlines; %d Writes held in the connection write until WriteTimeout", streams, sizeMiB(uint64(accepted)), held)
				// The test runs a goroutine per stream, and each deadline
				// fires on a goroutine of its own.
				hw.check(t, heapBound, streams*streamSendBuffer+8<<20, 2*streams+16)
				// The session's write is stuck: WriteTimeout ends it, and
				// the blocked Read wakes.
				select {
				case <-s.Done():
				case <-time.After(10 * time.Second):
					t.Fatal("WriteTimeout did not end a session whose peer never reads")
				}
				select {
				case err := <-readErr:
					if err == nil || errors.Is(err, io.EOF) {
						t.Fatalf("blocked Read woke with %v", err)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("a Read blocked on the dead session never woke")
				}
				t.Logf("session ended: %v", s.Err())
				h.checkGood(good, proto)
			})
		}
	}
}

func TestHostilePeerSendsDataNobodyReads(t *testing.T) {
	// The peer opens 128 streams and fills each one's window; the
	// application never accepts them. MaxSessionBuffer bounds what the
	// server holds: with RST the streams past it are reset; without (smux)
	// the session stops reading until the application reads, and only
	// that session stalls.
	const budget = 2 << 20
	const streams = 128
	for _, proto := range protocols {
		t.Run(proto.String(), func(t *testing.T) {
			checkLeaks(t)
			h := newHostileServer(t, &Config{MaxSessionBuffer: budget})
			good := h.dialGood(proto)
			p, s := h.dialRaw(proto)
			hw := watchHeap(t)
			var most atomic.Int64
			stopSample := sample(func() {
				st := s.Stats()
				most.Store(max(most.Load(), st.BufferedBytes, st.BudgetUsed))
			})
			var resets atomic.Int64
			if s.caps.Reset {
				p.readFrames(func(f wire.Frame, _ []byte) {
					if f.Flags&wire.FlagRST != 0 {
						resets.Add(1)
					}
				})
			}
			payload := make([]byte, 16<<10)
			sendErr := make(chan error, 1)
			go func() {
				sendErr <- p.flood(streams*protocolWindow/len(payload), func(b []byte, i int) []byte {
					id := p.clientID(i % streams)
					if i < streams {
						b = p.encode(b, synFrame(id))
					}
					return append(p.encode(b, dataFrame(id, len(payload))), payload...)
				})
			}()
			if s.caps.Reset {
				if err := <-sendErr; err != nil {
					t.Fatalf("sending: %v", err)
				}
				// Every stream past the budget is reset.
				want := int64(streams - budget/protocolWindow)
				eventually(t, 10*time.Second, "streams past the budget reset", func() bool { return resets.Load() >= want })
			} else {
				// The session stops reading: the peer's writes stall.
				select {
				case err := <-sendErr:
					t.Fatalf("the peer sent %d bytes past a %d-byte budget (err %v)", streams*protocolWindow, budget, err)
				case <-time.After(time.Second):
				}
			}
			stopSample()
			t.Logf("at most %s held; %d streams reset", sizeMiB(uint64(most.Load())), resets.Load())
			if most.Load() > budget {
				t.Fatalf("the session held %d bytes, MaxSessionBuffer %d", most.Load(), budget)
			}
			hw.check(t, heapBound, budget+8<<20, 16)
			h.checkGood(good, proto)
			s.Close()
			if !s.caps.Reset {
				<-sendErr
			}
		})
	}
}

func TestHostileMalformedFrames(t *testing.T) {
	// Each frame breaks its protocol: the session ends with ErrProtocol
	// (after GoAway(protocol error) where the protocol has GoAway), and
	// the other sessions on the listener never notice. Where the protocol
	// itself tolerates the frame, the session goes on serving instead.
	type outcome int
	const (
		broken   outcome = iota // ErrProtocol
		survives                // ignored, or only the stream is reset
	)
	type malformed struct {
		name  string
		proto Protocol
		bytes func(p *rawPeer) []byte
		want  outcome
	}
	open := func(p *rawPeer) []byte { return p.encode(nil, synFrame(p.clientID(0))) }
	id := func(p *rawPeer) uint32 { return p.clientID(0) }
	cases := []malformed{
		// A bad version (muxado has no version field).
		{"bad version", Yamux, func(p *rawPeer) []byte { return yamuxRaw(1, 2, 1, 0, 0) }, broken},
		{"bad version", SmuxV1, func(p *rawPeer) []byte { return smuxRaw(2, 3, 0, 0) }, broken},
		{"bad version", SmuxV2, func(p *rawPeer) []byte { return smuxRaw(1, 3, 0, 0) }, broken},
		// An unknown type: muxado skips it, as muxado does.
		{"unknown type", Yamux, func(p *rawPeer) []byte { return yamuxRaw(0, 4, 0, 0, 0) }, broken},
		{"unknown type", SmuxV1, func(p *rawPeer) []byte { return smuxRaw(1, 5, 0, 0) }, broken},
		{"unknown type", SmuxV2, func(p *rawPeer) []byte { return smuxRaw(2, 9, 0, 0) }, broken},
		{"unknown type with a body", MuxadoV2, func(p *rawPeer) []byte { return append(muxadoRaw(1000, 9, 0, 0), make([]byte, 1000)...) }, survives},
		// A length larger than allowed.
		{"data beyond the window", Yamux, func(p *rawPeer) []byte {
			return append(p.encode(open(p), dataFrame(id(p), protocolWindow+1)), make([]byte, protocolWindow+1)...)
		}, broken},
		{"data beyond the window", SmuxV2, func(p *rawPeer) []byte {
			b := open(p)
			for range protocolWindow / 65535 {
				b = append(p.encode(b, dataFrame(id(p), 65535)), make([]byte, 65535)...)
			}
			return append(p.encode(b, dataFrame(id(p), 65535)), make([]byte, 65535)...)
		}, broken},
		{"data beyond the window (resets the stream)", MuxadoV2, func(p *rawPeer) []byte {
			return append(p.encode(open(p), dataFrame(id(p), protocolWindow+1)), make([]byte, protocolWindow+1)...)
		}, survives},
		{"SYN with a body", SmuxV1, func(p *rawPeer) []byte { return append(smuxRaw(1, 0, 4, 3), 1, 2, 3, 4) }, broken},
		{"window update with a long body", SmuxV2, func(p *rawPeer) []byte { return append(smuxRaw(2, 4, 16, 3), make([]byte, 16)...) }, broken},
		{"reset with a long body", MuxadoV2, func(p *rawPeer) []byte { return append(muxadoRaw(8, 0, 0, 3), make([]byte, 8)...) }, broken},
		// The largest length field.
		{"length 0xFFFFFFFF", Yamux, func(p *rawPeer) []byte { return append(open(p), yamuxRaw(0, 0, 0, id(p), math.MaxUint32)...) }, broken},
		{"length 0xFFFF on FIN", SmuxV1, func(p *rawPeer) []byte { return append(open(p), smuxRaw(1, 1, math.MaxUint16, id(p))...) }, broken},
		{"length 0xFFFF on UPD", SmuxV2, func(p *rawPeer) []byte { return append(open(p), smuxRaw(2, 4, math.MaxUint16, id(p))...) }, broken},
		{"length 0xFFFFFF on WNDINC", MuxadoV2, func(p *rawPeer) []byte { return append(open(p), muxadoRaw(0xFFFFFF, 2, 0, id(p))...) }, broken},
		// A stream id of the wrong parity, and the reserved bit of muxado.
		{"wrong id parity", Yamux, func(p *rawPeer) []byte { return p.encode(nil, synFrame(2)) }, broken},
		{"wrong id parity", SmuxV1, func(p *rawPeer) []byte { return p.encode(nil, synFrame(2)) }, broken},
		{"wrong id parity", SmuxV2, func(p *rawPeer) []byte { return p.encode(nil, synFrame(2)) }, broken},
		{"wrong id parity", MuxadoV2, func(p *rawPeer) []byte { return p.encode(nil, synFrame(2)) }, broken},
		{"reserved id bit", MuxadoV2, func(p *rawPeer) []byte { return muxadoRaw(0, 1, 2, 1<<31|3) }, broken},
		// Reuse of a live stream id.
		{"id reuse", Yamux, func(p *rawPeer) []byte { return append(open(p), open(p)...) }, broken},
		{"id reuse", SmuxV1, func(p *rawPeer) []byte { return append(open(p), open(p)...) }, broken},
		{"id reuse", SmuxV2, func(p *rawPeer) []byte { return append(open(p), open(p)...) }, broken},
		{"id reuse", MuxadoV2, func(p *rawPeer) []byte { return append(open(p), open(p)...) }, broken},
		// Stream frames on stream 0.
		{"data on stream 0", Yamux, func(p *rawPeer) []byte { return yamuxRaw(0, 0, 0, 0, 0) }, broken},
		{"window update on stream 0", Yamux, func(p *rawPeer) []byte { return yamuxRaw(0, 1, 1, 0, 0) }, broken},
		{"SYN on stream 0", SmuxV1, func(p *rawPeer) []byte { return smuxRaw(1, 0, 0, 0) }, broken},
		{"data on stream 0", SmuxV2, func(p *rawPeer) []byte { return append(smuxRaw(2, 2, 1, 0), 0) }, broken},
		{"UPD on stream 0", SmuxV2, func(p *rawPeer) []byte { return append(smuxRaw(2, 4, 8, 0), make([]byte, 8)...) }, broken},
		{"data on stream 0", MuxadoV2, func(p *rawPeer) []byte { return muxadoRaw(0, 1, 2, 0) }, broken},
		{"reset on stream 0", MuxadoV2, func(p *rawPeer) []byte { return append(muxadoRaw(4, 0, 0, 0), 0, 0, 0, 0) }, broken},
		{"window increment on stream 0", MuxadoV2, func(p *rawPeer) []byte { return append(muxadoRaw(4, 2, 0, 0), 0, 0, 0, 1) }, broken},
		// Session frames on a stream.
		{"ping on a stream", Yamux, func(p *rawPeer) []byte { return yamuxRaw(0, 2, 1, 5, 0) }, broken},
		{"go away on a stream", Yamux, func(p *rawPeer) []byte { return yamuxRaw(0, 3, 0, 5, 0) }, broken},
		{"NOP on a stream", SmuxV1, func(p *rawPeer) []byte { return smuxRaw(1, 3, 0, 5) }, broken},
		{"NOP on a stream", SmuxV2, func(p *rawPeer) []byte { return smuxRaw(2, 3, 0, 5) }, broken},
		{"go away on a stream", MuxadoV2, func(p *rawPeer) []byte { return append(muxadoRaw(8, 3, 0, 5), make([]byte, 8)...) }, broken},
	}
	for _, c := range cases {
		t.Run(c.proto.String()+"/"+c.name, func(t *testing.T) {
			checkLeaks(t)
			h := newHostileServer(t, nil)
			good := h.dialGood(c.proto)
			p, s := h.dialRaw(c.proto)
			// The application echoes every stream but the first, which it
			// leaves unread: a window it read could be refilled in time.
			wait := serve(s, func(st *Stream) {
				if st.ID() != p.clientID(0) {
					echo(st)
				}
			})
			defer wait()
			defer s.Close()
			hw := watchHeap(t)
			b := c.bytes(p)
			go p.sendRaw(b) // the server may stop reading before the end
			switch c.want {
			case broken:
				expectProtocolEnd(t, s, p)
			case survives:
				p.expectEcho(p.clientID(1), "still served")
				if s.IsClosed() {
					t.Fatalf("the session closed: %v", s.Err())
				}
			}
			hw.check(t, heapBound, 4<<20, 8)
			h.checkGood(good, c.proto)
		})
	}
}

func TestHostileTruncatedFramesAtEOF(t *testing.T) {
	// The peer's connection ends inside a frame: the session ends with an
	// error (not ErrProtocol: the bytes were fine, just cut short), and a
	// stream waiting for data wakes with that error, never with io.EOF,
	// so the application cannot take a cut-short stream for a whole one.
	// A frame's payload is readable only once whole: what a cut frame
	// carried is never delivered, as the peer's Write, which counts only
	// whole frames written, did not report it sent.
	type truncation struct {
		name  string
		bytes func(p *rawPeer, id uint32) []byte
		skip  func(c *wire.Caps) bool
	}
	cases := []truncation{
		{"half a header", func(p *rawPeer, id uint32) []byte { return p.encode(nil, dataFrame(id, 10))[:5] }, nil},
		{"a payload cut short", func(p *rawPeer, id uint32) []byte {
			b := append(p.encode(nil, dataFrame(id, 9)), "only this"...)
			return append(p.encode(b, dataFrame(id, 1000)), "not this"...)
		}, nil},
		{"a control body cut short", func(p *rawPeer, id uint32) []byte {
			b := p.encode(nil, wire.Frame{Type: wire.TypeWindow, Stream: id, Value: 1, Window: protocolWindow})
			return b[:len(b)-2]
		}, func(c *wire.Caps) bool { return c.Window != wire.WindowAbsolute && !c.Reset }},
	}
	for _, proto := range protocols {
		for _, c := range cases {
			t.Run(proto.String()+"/"+c.name, func(t *testing.T) {
				codec, _ := codecFor(proto)
				if c.skip != nil && c.skip(codec.Caps()) {
					t.Skip("no frame of this protocol has a control body")
				}
				checkLeaks(t)
				h := newHostileServer(t, nil)
				good := h.dialGood(proto)
				p, s := h.dialRaw(proto)
				id, st := openFirstStream(t, p, s)
				b := c.bytes(p, id)
				if proto == MuxadoV2 && c.name == "a control body cut short" {
					b = append(muxadoRaw(4, 0, 0, id), 0, 0)[:10] // RST cut short
				}
				if err := p.sendRaw(b); err != nil {
					t.Fatal(err)
				}
				p.conn.(*net.TCPConn).CloseWrite()
				got, err := io.ReadAll(st)
				if err == nil {
					t.Fatalf("Read of a stream cut short mid-frame returned io.EOF after %q", got)
				}
				if c.name == "a payload cut short" && string(got) != "only this" {
					t.Errorf("read %q before the error, want the whole frame that arrived, and nothing of the cut one", got)
				}
				select {
				case <-s.Done():
				case <-time.After(5 * time.Second):
					t.Fatal("the session did not end at EOF")
				}
				if errors.Is(s.Err(), ErrProtocol) || !errors.Is(s.Err(), io.ErrUnexpectedEOF) {
					t.Fatalf("Err() = %v, want an unexpected EOF", s.Err())
				}
				t.Logf("stream: %v; session: %v", err, s.Err())
				h.checkGood(good, proto)
			})
		}
	}
}

func TestClosedStreamsStopTheirDeadlineTimers(t *testing.T) {
	// A server that sets a deadline on every stream it serves and closes
	// the stream before it passes must not keep a timer (and, when it
	// fires, a goroutine) per closed stream until the deadline: a peer
	// opening streams at a high rate would pile them up.
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		a, b := openAccept(t, cli, srv)
		for _, st := range []*Stream{a, b} {
			st.SetDeadline(time.Now().Add(time.Hour))
		}
		a.Close()
		b.Close()
		eventually(t, 5*time.Second, "streams forgotten", func() bool { return cli.NumStreams()+srv.NumStreams() == 0 })
		for _, st := range []*Stream{a, b} {
			for name, d := range map[string]*deadline{"read": &st.dl.read, "write": &st.dl.write} {
				d.mu.Lock()
				armed := d.timer != nil && d.timer.Stop()
				d.mu.Unlock()
				if armed {
					t.Errorf("stream %d: closed and forgotten, its %s deadline timer is still armed", st.ID(), name)
				}
			}
		}
	})
}

func TestDeadlinesCanBeSetAfterTheSessionEnds(t *testing.T) {
	// An application that clears or moves a deadline on a stream whose
	// session has just ended (the peer went away) must not block.
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		a, _ := openAccept(t, cli, srv)
		a.SetDeadline(time.Now().Add(time.Hour))
		cli.Close()
		within(t, 5*time.Second, "SetDeadline after the session ended", func() {
			a.SetDeadline(time.Time{})
			a.SetReadDeadline(time.Now().Add(time.Hour))
		})
	})
}
