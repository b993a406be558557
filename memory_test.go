package polymux

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"
	"unsafe"
)

// An idle stream's cost starts with its struct: it must stay within the
// 256-byte size class (flow.Recv's layout is part of that).
func TestStreamFitsIn256Bytes(t *testing.T) {
	if size := unsafe.Sizeof(Stream{}); size > 256 {
		t.Fatalf("Stream is %d bytes, more than 256", size)
	}
}

// countingMemory is a Config.MemoryManager that counts every reservation
// of every stream, and denies those at or below a priority.
type countingMemory struct {
	mu        sync.Mutex
	deny      int // deny reservations at this priority or below; -1 denies none
	spans     int
	done      int
	held      int // reserved and not released, across every span
	grown     int // bytes reserved at the growth priority
	doneTwice bool
	afterDone bool
}

func newCountingMemory(deny int) *countingMemory { return &countingMemory{deny: deny} }

func (m *countingMemory) factory() (MemoryManager, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.spans++
	return &countingSpan{m: m}, nil
}

// check fails the test unless every span ended with nothing held.
func (m *countingMemory) check(t *testing.T) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.held != 0 || m.done != m.spans || m.doneTwice || m.afterDone {
		t.Fatalf("memory manager: %d spans, %d done, %d bytes still held (done twice %v, used after done %v)",
			m.spans, m.done, m.held, m.doneTwice, m.afterDone)
	}
}

type countingSpan struct {
	m    *countingMemory
	held int
	done bool
}

func (s *countingSpan) ReserveMemory(size int, prio uint8) error {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	if s.done {
		s.m.afterDone = true
	}
	if int(prio) <= s.m.deny {
		return fmt.Errorf("%d bytes at priority %d: denied", size, prio)
	}
	s.held += size
	s.m.held += size
	if prio == growthPriority {
		s.m.grown += size
	}
	return nil
}

func (s *countingSpan) ReleaseMemory(size int) {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	if s.done {
		s.m.afterDone = true
	}
	s.held -= size
	s.m.held -= size
}

func (s *countingSpan) Done() {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	if s.done {
		s.m.doneTwice = true
	}
	s.done = true
	s.m.done++
}

func TestAMemoryManagerGetsBackEverythingItGave(t *testing.T) {
	// Streams opened by both sides, ended every way there is (closed,
	// reset, refused, left open at Close), some with grown windows: once
	// the sessions have ended, every span is done and nothing is held.
	forEach(t, func(t *testing.T, e env) {
		mem := newCountingMemory(-1)
		cfg := e.cfg(func(c *Config) { c.MemoryManager = mem.factory; c.MaxIncomingStreams = 8 })
		cli, srv := e.pair(t, cfg, cfg)
		for i := range 6 {
			a, b := openAccept(t, cli, srv)
			if i%2 == 1 {
				a, b = openAccept(t, srv, cli)
			}
			if err := roundTripOnce(a, b); err != nil {
				t.Fatal(err)
			}
			switch i % 3 {
			case 0:
				a.Close()
				b.Close()
			case 1:
				a.Reset()
			}
		}
		// Past MaxIncomingStreams: refused.
		for range 4 {
			if st, err := cli.OpenStream(ctx(t)); err == nil {
				st.Write([]byte("x"))
			}
		}
		cli.Close()
		srv.Close()
		mem.check(t)
		if mem.spans < 12 {
			t.Fatalf("%d spans for at least 12 streams", mem.spans)
		}
	})
}

func TestAMemoryManagerBoundsWindowGrowth(t *testing.T) {
	// Over a long link the window grows, each step reserved at the growth
	// priority; a manager that denies growth keeps it at the initial
	// window, and the transfer goes on.
	for _, p := range windowedProtocols {
		for _, deny := range []int{-1, growthPriority} {
			t.Run(fmt.Sprintf("%v/deny %d", p, deny), func(t *testing.T) {
				checkLeaks(t)
				mem := newCountingMemory(deny)
				cfg := &Config{Protocol: p, MemoryManager: mem.factory}
				cli, srv := linkPair(t, 50*time.Millisecond, 0, 0, cfg, cfg)
				a, b := openAccept(t, cli, srv)
				stop := make(chan struct{})
				go pump(a, stop)
				buf := make([]byte, 64<<10)
				moved := 0
				for moved < 16<<20 && b.ReceiveWindow() <= protocolWindow {
					n, err := b.Read(buf)
					if err != nil {
						t.Fatal(err)
					}
					moved += n
				}
				close(stop)
				grew := b.ReceiveWindow() > protocolWindow
				mem.mu.Lock()
				grown := mem.grown
				mem.mu.Unlock()
				if deny < 0 && (!grew || grown == 0) {
					t.Fatalf("window %d after %d MiB, %d bytes reserved for growth: it should have grown", b.ReceiveWindow(), moved>>20, grown)
				}
				if deny >= 0 && (grew || grown != 0) {
					t.Fatalf("window %d with growth denied", b.ReceiveWindow())
				}
				b.Reset()
				cli.Close()
				srv.Close()
				mem.check(t)
			})
		}
	}
}

func TestAMemoryManagerThatDeniesTheInitialWindowRefusesTheStream(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		denyAll := newCountingMemory(openPriority)
		cli, srv := e.pair(t, e.cfg(func(c *Config) { c.MemoryManager = denyAll.factory }),
			e.cfg(func(c *Config) { c.MemoryManager = denyAll.factory }))
		if _, err := cli.OpenStream(ctx(t)); err == nil {
			t.Fatal("OpenStream succeeded although the memory manager denied the stream")
		}
		// The peer's open: this side's manager denies it, so it is
		// refused where the opener sees it.
		open := newCountingMemory(-1)
		cli2, srv2 := e.pair(t, e.cfg(func(c *Config) { c.MemoryManager = open.factory }),
			e.cfg(func(c *Config) { c.MemoryManager = denyAll.factory }))
		st, err := cli2.OpenStream(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		st.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = st.Read(make([]byte, 1))
		if e.caps().Reset && !errors.Is(err, ErrStreamRefused) || !e.caps().Reset && err != io.EOF {
			t.Fatalf("a stream the peer's manager denied: Read = %v", err)
		}
		if got := srv2.Stats().StreamsRefused; got != 1 {
			t.Fatalf("StreamsRefused = %d", got)
		}
		for _, s := range []*Session{cli, srv, cli2, srv2} {
			s.Close()
		}
		denyAll.check(t)
		open.check(t)
	})
}
