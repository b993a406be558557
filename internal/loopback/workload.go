package loopback

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// MB is what the workloads' MB/s count: 1 MB = 1e6 bytes.
const MB = 1e6

// BulkResult is what Bulk measured.
type BulkResult struct {
	Bytes   int64         // received by the accepting end
	Elapsed time.Duration // from the first write until the last EOF
	Mallocs uint64        // heap allocations over the same span, whole process
}

// MBps is the aggregate rate.
func (r BulkResult) MBps() float64 { return float64(r.Bytes) / r.Elapsed.Seconds() / MB }

// Bulk opens n connections on t; once all are open, each writes size-byte
// buffers until d has passed and then half-closes, while the accepting end
// reads every connection to EOF. progress, if not nil, counts the bytes
// as they arrive (a meter or a stall detector reads it).
//
// Bulk returns once every connection has ended. If ctx ends first it
// closes them all, so it returns promptly, with an error. Accept is given
// a context that ends with Bulk; a transport whose Accept ignores it is
// ended by closing the transport.
func Bulk(ctx context.Context, t Transport, n, size int, d time.Duration, progress *atomic.Int64) (BulkResult, error) {
	if progress == nil {
		progress = new(atomic.Int64)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var held connSet
	defer held.closeAll()
	stop := context.AfterFunc(ctx, held.closeAll)
	defer stop()

	results := make(chan result, n)
	go acceptAll(ctx, t, n, &held, results, func(c Conn) (int64, error) {
		return drain(c, size, progress)
	})

	conns := make([]Conn, 0, n)
	for range n {
		c, err := t.Open(ctx)
		if err != nil {
			return BulkResult{}, fmt.Errorf("open: %w", err)
		}
		held.add(c)
		conns = append(conns, c)
	}
	buf := bytes.Repeat([]byte("polymux!"), (size+7)/8)[:size]
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	end := start.Add(d)
	werrs := make(chan error, n)
	for _, c := range conns {
		go func() { werrs <- writeUntil(c, buf, end) }()
	}
	var errs []error
	for range n {
		errs = append(errs, <-werrs)
	}
	var total int64
	for range n {
		r := <-results
		total += r.n
		errs = append(errs, r.err)
	}
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	if ctx.Err() != nil {
		return BulkResult{}, fmt.Errorf("bulk: %w", context.Cause(ctx))
	}
	if err := errors.Join(errs...); err != nil {
		return BulkResult{}, err
	}
	return BulkResult{Bytes: total, Elapsed: elapsed, Mallocs: after.Mallocs - before.Mallocs}, nil
}

// writeUntil writes buf on c until end has passed, then half-closes. On a
// write error it closes c, so that the reader at the other end ends too.
func writeUntil(c Conn, buf []byte, end time.Time) error {
	for time.Now().Before(end) {
		if _, err := c.Write(buf); err != nil {
			c.Close()
			return fmt.Errorf("write: %w", err)
		}
	}
	if err := c.CloseWrite(); err != nil {
		return fmt.Errorf("close write: %w", err)
	}
	return nil
}

// drain reads c to EOF, counting into progress, and closes it.
func drain(c Conn, size int, progress *atomic.Int64) (int64, error) {
	defer c.Close()
	buf := make([]byte, max(size, 64<<10))
	var total int64
	for {
		k, err := c.Read(buf)
		total += int64(k)
		progress.Add(int64(k))
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, fmt.Errorf("read: %w", err)
		}
	}
}

// result is what one accepted connection of a workload yielded.
type result struct {
	n   int64
	err error
}

// acceptAll accepts n connections on t and runs serve on each in its own
// goroutine, sending one result per connection; a failed Accept sends a
// result for it and for each connection not yet accepted.
func acceptAll(ctx context.Context, t Transport, n int, held *connSet, results chan<- result, serve func(Conn) (int64, error)) {
	for i := range n {
		c, err := t.Accept(ctx)
		if err != nil {
			for range n - i {
				results <- result{err: fmt.Errorf("accept: %w", err)}
			}
			return
		}
		held.add(c)
		go func() {
			k, err := serve(c)
			results <- result{k, err}
		}()
	}
}

// RPCResult is what RPC measured.
type RPCResult struct {
	Latencies []time.Duration // of every completed call, sorted
	Elapsed   time.Duration
}

// Ops is the number of completed calls.
func (r RPCResult) Ops() int { return len(r.Latencies) }

// OpsPerSec is the rate of completed calls, all callers together.
func (r RPCResult) OpsPerSec() float64 { return float64(len(r.Latencies)) / r.Elapsed.Seconds() }

// Quantile is the latency at q (0.5 for the median, 0.99 for p99), or 0
// when no call completed.
func (r RPCResult) Quantile(q float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	return r.Latencies[int(q*float64(len(r.Latencies)-1))]
}

// RPC runs conc callers, each calling until d has passed: open a
// connection on t, write size bytes, read their echo, close. The accepting
// end echoes the request and holds the connection until the caller closes
// it. A caller whose connection can set SO_LINGER (TCP) closes with
// linger 0, so thousands of calls leave no TIME_WAIT behind. progress, if
// not nil, counts the completed calls.
//
// RPC returns once every caller has stopped. If ctx ends first, it closes
// the calls in flight, so it returns promptly, with an error. The
// accepting goroutine ends when its Accept fails: once RPC has returned
// (its context ends then) or when t is closed.
func RPC(ctx context.Context, t Transport, conc, size int, d time.Duration, progress *atomic.Int64) (RPCResult, error) {
	if progress == nil {
		progress = new(atomic.Int64)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go echoServer(ctx, t, size)

	inFlight := make([]connSlot, conc)
	stop := context.AfterFunc(ctx, func() {
		for i := range inFlight {
			inFlight[i].close()
		}
	})
	defer stop()
	start := time.Now()
	end := start.Add(d)
	var (
		mu   sync.Mutex // guards lats and errs
		lats []time.Duration
		errs []error
		wg   sync.WaitGroup
	)
	for i := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			req := bytes.Repeat([]byte{'r'}, size)
			reply := make([]byte, size)
			var err error
			for time.Now().Before(end) && ctx.Err() == nil {
				t0 := time.Now()
				if err = call(ctx, t, &inFlight[i], req, reply); err != nil {
					break
				}
				mine = append(mine, time.Since(t0))
				progress.Add(1)
			}
			mu.Lock()
			lats = append(lats, mine...)
			errs = append(errs, err)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if ctx.Err() != nil {
		return RPCResult{}, fmt.Errorf("rpc: %w", context.Cause(ctx))
	}
	if err := errors.Join(errs...); err != nil {
		return RPCResult{}, err
	}
	if len(lats) == 0 {
		return RPCResult{}, errors.New("rpc: no call completed")
	}
	slices.Sort(lats)
	return RPCResult{Latencies: lats, Elapsed: elapsed}, nil
}

// call is one rpc, with its connection in slot while it is in flight.
func call(ctx context.Context, t Transport, slot *connSlot, req, reply []byte) error {
	c, err := t.Open(ctx)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		l.SetLinger(0)
	}
	slot.set(c)
	defer slot.set(nil)
	defer c.Close()
	if _, err := c.Write(req); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := io.ReadFull(c, reply); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(req, reply) {
		return fmt.Errorf("echo %q, want %q", reply, req)
	}
	return nil
}

// echoServer accepts on t until Accept fails; it echoes one size-byte
// request per connection and then reads until the caller closes.
func echoServer(ctx context.Context, t Transport, size int) {
	for {
		c, err := t.Accept(ctx)
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			req := make([]byte, size)
			if _, err := io.ReadFull(c, req); err != nil {
				return
			}
			if _, err := c.Write(req); err != nil {
				return
			}
			io.Copy(io.Discard, c)
		}()
	}
}

// connSlot holds the connection a caller has in flight, so that the end of
// the workload's context can close it.
type connSlot struct {
	mu     sync.Mutex // guards c and closed
	c      Conn
	closed bool
}

// set puts c in the slot (nil empties it); once the slot is closed, c is
// closed at once.
func (s *connSlot) set(c Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed && c != nil {
		c.Close()
		return
	}
	s.c = c
}

// close closes the connection in flight and every later one.
func (s *connSlot) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.c != nil {
		s.c.Close()
	}
}

// connSet holds the connections of a workload so that they can all be
// closed when it ends early.
type connSet struct {
	mu     sync.Mutex // guards conns and closed
	conns  []Conn
	closed bool
}

// add remembers c; once the set is closed, c is closed at once.
func (s *connSet) add(c Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return
	}
	s.conns = append(s.conns, c)
}

// closeAll closes every connection in the set, and every one added later.
func (s *connSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}
