package polymux

// Fuzzing beyond the decoders: arbitrary bytes fed to a live server
// session, and random sequences of API calls on both ends of a session
// pair. Without -fuzz, go test runs the seed corpus only.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/polymux/polymux/internal/wire"
)

// fuzzBuffer is the MaxSessionBuffer of the fuzzed server: the smallest
// allowed, one stream window, so that a few streams exceed it.
const fuzzBuffer = 256 << 10

// fuzzSeedStreams returns, per protocol, byte streams a client could send:
// well-formed sessions and a few broken ones.
func fuzzSeedStreams(proto Protocol) [][]byte {
	codec, _ := codecFor(proto)
	c := codec.Caps()
	enc := func(frames ...wire.Frame) []byte {
		var b []byte
		for _, f := range frames {
			var err error
			if b, err = codec.AppendFrame(b, f); err != nil {
				panic(err)
			}
			if f.Type == wire.TypeData {
				b = append(b, make([]byte, f.Length)...)
			}
		}
		return b
	}
	id := c.FirstID[0]
	seeds := [][]byte{
		enc(helloFrame(proto)),
		enc(synFrame(id), dataFrame(id, 5), finFrame(id)),
		enc(synFrame(id), synFrame(id+2), dataFrame(id, 100), dataFrame(id+2, 3000), finFrame(id+2), finFrame(id)),
		enc(synFrame(id), dataFrame(id, 65535), dataFrame(id, 65535)),
		// Three streams of 128 KiB each: more than the session buffer.
		enc(synFrame(id), synFrame(id+2), synFrame(id+4),
			dataFrame(id, 65535), dataFrame(id+2, 65535), dataFrame(id+4, 65535),
			dataFrame(id, 65535), dataFrame(id+2, 65535), dataFrame(id+4, 65535)),
		enc(synFrame(id), dataFrame(id, 0), finFrame(id), synFrame(id+2)),
		enc(synFrame(id), synFrame(id)),
		enc(synFrame(id + 1)),
		enc(synFrame(id))[:5],
	}
	switch c.Window {
	case wire.WindowDelta:
		seeds = append(seeds, enc(synFrame(id), wire.Frame{Type: wire.TypeWindow, Stream: id, Value: 1 << 20}, dataFrame(id, 10)))
	case wire.WindowAbsolute:
		seeds = append(seeds, enc(synFrame(id), wire.Frame{Type: wire.TypeWindow, Stream: id, Value: 0, Window: 1 << 20}, dataFrame(id, 10)))
	}
	if c.Reset {
		seeds = append(seeds, enc(synFrame(id), dataFrame(id, 10), rstFrame(id), dataFrame(id, 10)))
	}
	if c.PingReply {
		seeds = append(seeds, enc(wire.Frame{Type: wire.TypePing, Flags: wire.FlagSYN, Value: 7}, wire.Frame{Type: wire.TypePing, Flags: wire.FlagACK, Value: 1}))
	}
	if c.GoAway {
		seeds = append(seeds, enc(synFrame(id), wire.Frame{Type: wire.TypeGoAway, Value: 1}))
	}
	return seeds
}

// FuzzServerSession feeds an arbitrary byte stream to a live server
// session through net.Pipe. The first byte picks the protocol (or Auto
// detection). Whatever the bytes, the server must not panic, must end once
// the connection ends, must keep within its buffer budget and must leave
// no goroutine behind.
func FuzzServerSession(f *testing.F) {
	choices := append([]Protocol{Auto}, protocols...)
	for i, proto := range choices {
		seedProto := proto
		if proto == Auto {
			seedProto = Yamux
		}
		for _, s := range fuzzSeedStreams(seedProto) {
			f.Add(append([]byte{byte(i)}, s...))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		checkLeaks(t)
		defer watchdog(20 * time.Second)()
		proto := choices[int(data[0])%len(choices)]
		input := data[1:]
		c1, c2 := net.Pipe()
		s, err := Server(c1, &Config{
			Protocol:           proto,
			AcceptBacklog:      4,
			MaxIncomingStreams: 8,
			MaxSessionBuffer:   fuzzBuffer,
			DetectTimeout:      time.Second,
			WriteTimeout:       time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		var most int64
		var mu sync.Mutex
		stopSample := sample(func() {
			st := s.Stats()
			mu.Lock()
			most = max(most, st.BufferedBytes, st.BudgetUsed)
			mu.Unlock()
		})
		// The application reads a little, answers, then drains the stream.
		wait := serve(s, func(st *Stream) {
			st.SetDeadline(time.Now().Add(time.Second))
			buf := make([]byte, 4<<10)
			n, _ := st.Read(buf)
			st.Write(buf[:n])
			io.Copy(io.Discard, st)
			st.Close()
		})
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			io.Copy(io.Discard, c2)
		}()
		c2.SetWriteDeadline(time.Now().Add(2 * time.Second))
		c2.Write(input)
		c2.Close()
		<-drained
		select {
		case <-s.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("the session did not end after its connection closed")
		}
		wait()
		stopSample()
		if err := s.Err(); !errors.Is(err, ErrSessionClosed) {
			t.Fatalf("Err() = %v, want ErrSessionClosed", err)
		}
		if most > fuzzBuffer {
			t.Fatalf("the session held %d bytes; MaxSessionBuffer %d", most, fuzzBuffer)
		}
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		if m.HeapAlloc > 512<<20 {
			t.Fatalf("heap at %d bytes after one session", m.HeapAlloc)
		}
	})
}

// apiStream is one stream of FuzzSessionAPI seen from both ends: ends[i]
// is the end on session i, and the counts are of the bytes end i wrote and
// read.
type apiStream struct {
	index   int
	ends    [2]*Stream
	sent    [2]int
	recv    [2]int
	eof     [2]bool // end i read io.EOF
	wclosed [2]bool // end i closed its writing side
	gone    [2]bool // end i was reset or closed: calls on it fail
	// cut[i]: data toward end i may stop short (a reset, CloseRead or
	// Close on either end), so end i may read a prefix only.
	cut [2]bool
}

// apiByte is byte off of what end dir of stream index writes.
func apiByte(index, dir, off int) byte { return byte(index*31 + dir*17 + off*7 + off>>8) }

// fill puts the bytes from off of what end dir of stream index writes in b.
func (a *apiStream) fill(dir, off int, b []byte) {
	for i := range b {
		b[i] = apiByte(a.index, dir, off+i)
	}
}

// check verifies that b, read by end i at offset recv[i], is what the
// other end wrote there.
func (a *apiStream) check(t *testing.T, i int, b []byte) {
	t.Helper()
	for k, c := range b {
		if want := apiByte(a.index, 1-i, a.recv[i]+k); c != want {
			t.Fatalf("stream %d end %d: byte %d is %#x, want %#x", a.index, i, a.recv[i]+k, c, want)
		}
	}
}

// apiSizes are the sizes a write or read of FuzzSessionAPI uses.
var apiSizes = [...]int{0, 1, 7, 100, 4 << 10, 64 << 10, 100 << 10, 300 << 10}

// FuzzSessionAPI drives a random sequence of API calls on both ends of a
// client and server session over net.Pipe: opens from either side,
// writes and reads of many sizes with short deadlines, half-closes,
// CloseRead, Reset and Close. Then every stream still open is closed and
// read to the end. Every byte read must be the byte written at that
// offset; a stream no reset or close cut short must deliver every byte
// its writer's Writes reported, then io.EOF.
func FuzzSessionAPI(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 1, 0, 2, 2, 0, 3, 3, 0, 0, 1, 0, 9, 2, 0, 15})
	f.Add([]byte{1, 0, 1, 0, 1, 0, 13, 1, 0, 12, 2, 0, 14, 5, 0, 1, 0, 0, 0})
	f.Add([]byte{2, 0, 0, 0, 0, 1, 0, 1, 0, 14, 1, 1, 15, 4, 0, 1, 6, 0, 0, 2, 0, 15})
	f.Add([]byte{3, 0, 0, 0, 1, 0, 14, 1, 0, 14, 7, 0, 0, 2, 0, 14, 3, 0, 1})
	f.Add([]byte{0, 0, 1, 0, 0, 0, 0, 1, 0, 11, 1, 1, 11, 6, 0, 0, 1, 1, 13, 2, 1, 15})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 1 {
			return
		}
		checkLeaks(t)
		defer watchdog(30 * time.Second)()
		proto := protocols[int(data[0])%len(protocols)]
		ops := data[1:]
		if len(ops) > 3*48 {
			ops = ops[:3*48]
		}
		c1, c2 := net.Pipe()
		cfg := &Config{Protocol: proto}
		cli, err := Client(c1, cfg)
		if err != nil {
			t.Fatal(err)
		}
		srv, err := Server(c2, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		defer srv.Close()
		sessions := [2]*Session{cli, srv}
		var streams []*apiStream
		buf := make([]byte, apiSizes[len(apiSizes)-1])
		for len(ops) >= 3 {
			op, x, y := ops[0], int(ops[1]), int(ops[2])
			ops = ops[3:]
			if op%8 == 0 { // open from side x&1
				if len(streams) >= 16 {
					continue
				}
				side := x & 1
				c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				a, err := sessions[side].OpenStream(c)
				if err != nil {
					cancel()
					t.Fatalf("open: %v", err)
				}
				b, err := sessions[1-side].AcceptStream(c)
				cancel()
				if err != nil {
					t.Fatalf("accept: %v", err)
				}
				s := &apiStream{index: len(streams)}
				s.ends[side], s.ends[1-side] = a, b
				streams = append(streams, s)
				continue
			}
			if len(streams) == 0 {
				continue
			}
			s := streams[x%len(streams)]
			i := y & 1
			st := s.ends[i]
			size := apiSizes[(y>>1)%len(apiSizes)]
			switch op % 8 {
			case 1, 2: // write
				p := buf[:size]
				s.fill(i, s.sent[i], p)
				st.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
				n, err := st.Write(p)
				st.SetWriteDeadline(time.Time{})
				s.sent[i] += n
				if err != nil && !errors.Is(err, ErrTimeout) && !s.gone[i] && !s.wclosed[i] && !s.cut[1-i] {
					t.Fatalf("stream %d end %d: Write: %v", s.index, i, err)
				}
			case 3, 4: // read
				st.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
				n, err := st.Read(buf[:size])
				st.SetReadDeadline(time.Time{})
				s.check(t, i, buf[:n])
				s.recv[i] += n
				if errors.Is(err, io.EOF) {
					s.eof[i] = true
				} else if err != nil && !errors.Is(err, ErrTimeout) && !s.gone[i] && !s.cut[i] {
					t.Fatalf("stream %d end %d: Read: %v", s.index, i, err)
				}
			case 5: // half-close, or CloseRead
				if y&2 == 0 {
					st.CloseWrite()
					s.wclosed[i] = true
				} else {
					st.CloseRead()
					s.cut[i] = true
				}
			case 6: // reset, or close
				if y&2 == 0 {
					st.Reset()
				} else {
					st.Close()
				}
				s.gone[i], s.wclosed[i] = true, true
				s.cut[0], s.cut[1] = true, true
			case 7: // a deadline in the past fails at once, and can be cleared
				// (Bytes already buffered are still returned.)
				st.SetReadDeadline(time.Now().Add(-time.Second))
				n, err := st.Read(buf[:1])
				st.SetReadDeadline(time.Time{})
				s.check(t, i, buf[:n])
				s.recv[i] += n
				switch {
				case errors.Is(err, io.EOF):
					s.eof[i] = true
				case n == 0 && !errors.Is(err, ErrTimeout) && !s.gone[i] && !s.cut[i]:
					t.Fatalf("stream %d end %d: Read past its deadline: %v", s.index, i, err)
				}
			}
		}
		// Close every writing side still open, then read every stream to
		// its end, all at once.
		for _, s := range streams {
			for i, st := range s.ends {
				if !s.wclosed[i] {
					st.CloseWrite()
				}
			}
		}
		var wg sync.WaitGroup
		errs := make(chan error, 2*len(streams))
		for _, s := range streams {
			for i, st := range s.ends {
				if s.gone[i] || s.eof[i] {
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					st.SetReadDeadline(time.Now().Add(10 * time.Second))
					b := make([]byte, 64<<10)
					for {
						n, err := st.Read(b)
						for k := range n {
							if want := apiByte(s.index, 1-i, s.recv[i]+k); b[k] != want {
								errs <- fmt.Errorf("stream %d end %d: byte %d is %#x, want %#x", s.index, i, s.recv[i]+k, b[k], want)
								return
							}
						}
						s.recv[i] += n
						if errors.Is(err, io.EOF) {
							s.eof[i] = true
							return
						}
						if err != nil {
							if !s.cut[i] {
								errs <- fmt.Errorf("stream %d end %d: Read after %d of %d bytes: %v", s.index, i, s.recv[i], s.sent[1-i], err)
							}
							return
						}
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for _, s := range streams {
			for i := range s.ends {
				if s.recv[i] > s.sent[1-i] {
					t.Fatalf("stream %d end %d read %d bytes of %d written", s.index, i, s.recv[i], s.sent[1-i])
				}
				if !s.cut[i] && (!s.eof[i] || s.recv[i] != s.sent[1-i]) {
					t.Fatalf("stream %d end %d read %d bytes (EOF %v) of the %d its peer's Writes reported", s.index, i, s.recv[i], s.eof[i], s.sent[1-i])
				}
			}
		}
	})
}

// watchdog panics, with every goroutine's stack, unless the returned stop
// is called within d: a hang becomes a crash the fuzzer records with its
// input, instead of a worker that stops making progress.
func watchdog(d time.Duration) (stop func()) {
	timer := time.AfterFunc(d, func() {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		panic(fmt.Sprintf("hung for %v:\n%s", d, buf))
	})
	return func() { timer.Stop() }
}
