package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	"github.com/polymux/polymux/internal/loopback"
	"github.com/polymux/polymux/interop/internal/muxes"
)

var (
	mS100kHeap   = metric{key: "streams100k_heap_bytes_per_stream", header: "streams100k B/stream"}
	mS100kGorout = metric{key: "streams100k_goroutines_per_stream", header: "streams100k goroutines/stream", digits: 2, noRaw: true}
	mS100kOpens  = metric{key: "streams100k_opens_per_sec", header: "streams100k opens/s", higherBetter: true}
	mS10kHeap    = metric{key: "sessions10k_heap_bytes_per_pair", header: "sessions10k heap B/pair"}
	mS10kStack   = metric{key: "sessions10k_stack_bytes_per_pair", header: "sessions10k stack B/pair", noRaw: true}
	mS10kTotal   = metric{key: "sessions10k_bytes_per_pair", header: "sessions10k heap+stack B/pair"}
	mS10kGorout  = metric{key: "sessions10k_goroutines_per_pair", header: "sessions10k goroutines/pair", digits: 1, noRaw: true}
	mS10kRate    = metric{key: "sessions10k_pairs_per_sec", header: "sessions10k set-up pairs/s", higherBetter: true}
)

// memSample is the state of the process once it has gone idle.
type memSample struct {
	heap       uint64 // MemStats.HeapAlloc after two GCs
	stack      uint64 // MemStats.StackInuse
	goroutines int
	settled    bool // the goroutine count stopped changing within the bound
}

const (
	// settleEvery, settleSamples and settleBound: quiesce waits until
	// runtime.NumGoroutine has not changed for settleSamples samples
	// settleEvery apart, at most settleBound.
	settleEvery   = 10 * time.Millisecond
	settleSamples = 5
	settleBound   = 3 * time.Second
)

// quiesce lets the engines go idle (a writer goroutine that exits when it
// has nothing to send, a reader parking), then collects garbage until
// nothing is left to free, and samples the heap, the goroutine stacks and
// the goroutine count. It bumps r's progress as it goes, since a GC of a
// large heap takes a while.
//
// An object with a finalizer or a cleanup (a connection's file, for one)
// is freed only by the first collection after that function has run, and
// those functions run one at a time, on a goroutine of their own. So after
// each collection quiesce waits until every finalizer and cleanup queued
// so far has run, and collects again while the last collection queued
// any, within settleBound in all. Memory that earlier cells, or earlier
// tests in the same process, released that way used to count in the first
// sample and not in the second: it made raw TCP's streams100k growth
// negative once (-589 B per connection against its usual 733, in CI under
// -race).
func quiesce(r *cellRun) memSample {
	deadline := time.Now().Add(settleBound)
	last, same := runtime.NumGoroutine(), 0
	for same < settleSamples && time.Now().Before(deadline) {
		time.Sleep(settleEvery)
		if g := runtime.NumGoroutine(); g == last {
			same++
		} else {
			last, same = g, 0
		}
		r.progress.Add(1)
	}
	for range 4 {
		before := finalizersQueued()
		runtime.GC()
		r.progress.Add(1)
		queued := finalizersQueued()
		for finalizersRun() < queued && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if queued == before {
			break // that collection left nothing for a finalizer
		}
	}
	runtime.GC() // frees what the last finalizers let go
	r.progress.Add(1)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSample{heap: ms.HeapAlloc, stack: ms.StackInuse, goroutines: runtime.NumGoroutine(), settled: same >= settleSamples}
}

// finalizerMetrics are the runtime's counts of finalizers and cleanups
// queued to run and run: finalizersQueued and finalizersRun sum them.
var finalizerMetrics = [...]string{
	"/gc/finalizers/queued:finalizers",
	"/gc/cleanups/queued:cleanups",
	"/gc/finalizers/executed:finalizers",
	"/gc/cleanups/executed:cleanups",
}

func finalizersQueued() uint64 { return readCounts(finalizerMetrics[:2]) }

func finalizersRun() uint64 { return readCounts(finalizerMetrics[2:]) }

// readCounts sums the runtime/metrics counters named.
func readCounts(names []string) uint64 {
	samples := make([]metrics.Sample, len(names))
	for i, n := range names {
		samples[i].Name = n
	}
	metrics.Read(samples)
	var sum uint64
	for _, s := range samples {
		if s.Value.Kind() == metrics.KindUint64 {
			sum += s.Value.Uint64()
		}
	}
	return sum
}

// perUnit is (after - before) / n, signed.
func perUnit(after, before uint64, n int) float64 {
	return float64(int64(after)-int64(before)) / float64(n)
}

// streams100k: b.streams streams opened on one session, one byte written on
// each and read by the server, then held. Figures: heap growth after GC per
// stream and goroutine growth per stream (both ends), and opens per second
// from the first open to the last stream accepted and read. Raw TCP holds
// at most rawStreamsCap connections, fewer if the file descriptor limit
// (two a connection) says so: 100,000 connections to one listener would
// take more ephemeral ports than 127.0.0.1 has.
func (b *bench) streams100k(r *cellRun) (map[string]float64, error) {
	n := b.streams
	if r.c.isRaw() {
		switch {
		case n > b.rawIdleLimit && b.rawIdleLimit < rawStreamsCap:
			n = b.rawIdleLimit
			r.note = fmt.Sprintf("%d connections (file descriptor limit)", n)
		case n > rawStreamsCap:
			n = rawStreamsCap
			r.note = fmt.Sprintf("%d connections (raw TCP is capped at %d)", n, rawStreamsCap)
		}
	}
	h, err := holdStreams(r, n)
	if err != nil {
		return nil, err
	}
	if !h.after.settled {
		r.note = joinNote(r.note, fmt.Sprintf("goroutine count still changing after %v", settleBound))
	}
	return map[string]float64{
		mS100kHeap.key:   perUnit(h.after.heap, h.before.heap, n),
		mS100kGorout.key: float64(h.after.goroutines-h.before.goroutines) / float64(n),
		mS100kOpens.key:  float64(n) / h.elapsed.Seconds(),
	}, nil
}

// rawStreamsCap is the most connections raw TCP holds in streams100k, as
// many as idle holds by default.
const rawStreamsCap = 10000

// held is what holdStreams measured.
type held struct {
	before, after memSample
	elapsed       time.Duration // from the first open to the last stream accepted and read
}

// holdStreams opens n streams on r's pair one after another, writes one
// byte on each (muxado opens lazily), while a goroutine accepts each and
// reads its byte; once all n are accepted and read, it samples again.
// Both samples are taken after quiesce, with the accepting goroutine
// alive, and the slices holding the streams are made before the first
// one, so the growth is the libraries' own. The streams are left open:
// closing the cell's pair ends them.
func holdStreams(r *cellRun, n int) (held, error) {
	p := r.pair
	opened := make([]loopback.Conn, 0, n)
	served := make([]loopback.Conn, 0, n) // the accepting goroutine's until allServed
	allServed := make(chan time.Time, 1)
	acceptErr := make(chan error, 1)
	go func() {
		for len(served) < n {
			st, err := p.Accept(r.ctx)
			if err != nil {
				acceptErr <- err
				return
			}
			var one [1]byte
			if _, err := io.ReadFull(st, one[:]); err != nil {
				acceptErr <- fmt.Errorf("read: %w", err)
				return
			}
			served = append(served, st)
			r.progress.Add(1)
		}
		allServed <- time.Now()
		<-r.ctx.Done() // stay, as in the first sample, until the cell ends
	}()
	var h held
	h.before = quiesce(r)
	start := time.Now()
	for range n {
		st, err := p.Open(r.ctx)
		if err != nil {
			return held{}, fmt.Errorf("open %d: %w", len(opened)+1, err)
		}
		opened = append(opened, st)
		if _, err := st.Write([]byte{1}); err != nil {
			return held{}, fmt.Errorf("write %d: %w", len(opened), err)
		}
		r.progress.Add(1)
	}
	select {
	case end := <-allServed:
		h.elapsed = end.Sub(start)
	case err := <-acceptErr:
		return held{}, fmt.Errorf("accept: %w", err)
	case <-r.ctx.Done():
		return held{}, r.ctx.Err()
	}
	h.after = quiesce(r)
	runtime.KeepAlive(opened)
	runtime.KeepAlive(served)
	return h, nil
}

// sessionPair is one pair of sessions10k: both ends of a TCP connection,
// the sessions on them and one stream at each end (raw TCP: the
// connection is the stream, and there are no sessions).
type sessionPair struct {
	cc, sc         *net.TCPConn
	client, server muxes.Session
	cs, ss         loopback.Conn
}

// pairSet holds the pairs of a sessions10k cell so that the end of the
// cell, or its watchdog, can close them all.
type pairSet struct {
	progress *atomic.Int64 // bumped for every pair closed

	mu     sync.Mutex // guards pairs and closed
	pairs  []sessionPair
	closed bool
}

// add remembers sp (its fields may be filled in later by set), or closes
// it if the set is closed; it returns its index.
func (s *pairSet) add(sp sessionPair) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		closePair(sp)
		return 0, false
	}
	s.pairs = append(s.pairs, sp)
	return len(s.pairs) - 1, true
}

// update applies f to pair i, unless the set is closed (then f's pair is
// closed too).
func (s *pairSet) update(i int, f func(*sessionPair)) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sp := s.pairs[i]
	f(&sp)
	if s.closed {
		closePair(sp)
		return false
	}
	s.pairs[i] = sp
	return true
}

// closeAll closes every pair, and every one added later.
func (s *pairSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	for _, sp := range s.pairs {
		closePair(sp)
		s.progress.Add(1)
	}
}

// closePair closes what sp holds: the connections first, with SO_LINGER 0
// (thousands of connections leave no TIME_WAIT behind), so that neither
// session's Close can wait on its peer; then the sessions.
func closePair(sp sessionPair) {
	for _, c := range []*net.TCPConn{sp.cc, sp.sc} {
		if c != nil {
			c.SetLinger(0)
			c.Close()
		}
	}
	for _, s := range []muxes.Session{sp.client, sp.server} {
		if s != nil {
			s.Close()
		}
	}
}

// sessions10k: b.sessions session pairs set up one after another, each a
// dial to one listener, both sessions over it, one stream opened with one
// byte each way; then all are held. Figures: growth of heap and of
// goroutine stacks after GC, and of goroutines, per pair (both ends), and
// pairs set up per second. Raw TCP: a connection pair with one byte each
// way. Stream limits stay at the libraries' defaults: one stream per
// session refuses nothing.
func (b *bench) sessions10k(r *cellRun) (map[string]float64, error) {
	n := b.sessions
	if lim := b.fdPairs; n > lim {
		n = lim
		r.note = fmt.Sprintf("%d pairs (file descriptor limit)", n)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	addr := ln.Addr().String()
	set := &pairSet{progress: &r.progress, pairs: make([]sessionPair, 0, n)}
	stop := context.AfterFunc(r.ctx, func() { ln.Close(); set.closeAll() })
	defer func() {
		stop()
		set.closeAll()
	}()
	opts := muxes.Options{Window: b.opts.Window}
	dialer := net.Dialer{Timeout: 5 * time.Second}
	var one [1]byte

	before := quiesce(r)
	start := time.Now()
	for k := range n {
		c, err := dialer.DialContext(r.ctx, "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("pair %d: dial: %w", k+1, err)
		}
		cc := c.(*net.TCPConn)
		i, ok := set.add(sessionPair{cc: cc})
		if !ok {
			return nil, r.ctx.Err()
		}
		s, err := ln.Accept()
		if err != nil {
			return nil, fmt.Errorf("pair %d: accept: %w", k+1, err)
		}
		sc := s.(*net.TCPConn)
		if !set.update(i, func(sp *sessionPair) { sp.sc = sc }) {
			return nil, r.ctx.Err()
		}
		var sp sessionPair
		if r.c.isRaw() {
			sp = sessionPair{cc: cc, sc: sc, cs: cc, ss: sc}
		} else {
			sp, err = setUpPair(r.ctx, r.c.lib, opts, cc, sc)
			if !set.update(i, func(p *sessionPair) { *p = sp }) {
				return nil, r.ctx.Err()
			}
			if err != nil {
				return nil, fmt.Errorf("pair %d: %w", k+1, err)
			}
		}
		if _, err := sp.cs.Write(one[:]); err != nil {
			return nil, fmt.Errorf("pair %d: client write: %w", k+1, err)
		}
		if sp.ss == nil {
			if sp.ss, err = sp.server.Accept(r.ctx); err != nil {
				return nil, fmt.Errorf("pair %d: accept stream: %w", k+1, err)
			}
			if !set.update(i, func(p *sessionPair) { p.ss = sp.ss }) {
				return nil, r.ctx.Err()
			}
		}
		if _, err := io.ReadFull(sp.ss, one[:]); err != nil {
			return nil, fmt.Errorf("pair %d: server read: %w", k+1, err)
		}
		if _, err := sp.ss.Write(one[:]); err != nil {
			return nil, fmt.Errorf("pair %d: server write: %w", k+1, err)
		}
		if _, err := io.ReadFull(sp.cs, one[:]); err != nil {
			return nil, fmt.Errorf("pair %d: client read: %w", k+1, err)
		}
		r.progress.Add(1)
	}
	elapsed := time.Since(start)
	after := quiesce(r)
	set.mu.Lock()
	runtime.KeepAlive(set.pairs)
	set.mu.Unlock()
	if !after.settled {
		r.note = joinNote(r.note, fmt.Sprintf("goroutine count still changing after %v", settleBound))
	}
	heap, stack := perUnit(after.heap, before.heap, n), perUnit(after.stack, before.stack, n)
	return map[string]float64{
		mS10kHeap.key:   heap,
		mS10kStack.key:  stack,
		mS10kTotal.key:  heap + stack,
		mS10kGorout.key: float64(after.goroutines-before.goroutines) / float64(n),
		mS10kRate.key:   float64(n) / elapsed.Seconds(),
	}, nil
}

// setUpPair starts lib's server and client sessions on sc and cc (server
// first, as newPair does) and opens the client's stream; the server's
// stream is accepted once a byte is on the way (muxado opens lazily).
// What it made is in the returned pair even when it fails, for closing.
func setUpPair(ctx context.Context, lib *muxes.Lib, o muxes.Options, cc, sc *net.TCPConn) (sessionPair, error) {
	sp := sessionPair{cc: cc, sc: sc}
	var err error
	if sp.server, err = lib.Server(sc, o); err != nil {
		return sp, fmt.Errorf("server session: %w", err)
	}
	if sp.client, err = lib.Client(cc, o); err != nil {
		return sp, fmt.Errorf("client session: %w", err)
	}
	if sp.cs, err = sp.client.Open(ctx); err != nil {
		return sp, fmt.Errorf("open: %w", err)
	}
	return sp, nil
}

// joinNote appends b to a note a, separated by "; ".
func joinNote(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}
