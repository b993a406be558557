package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/polymux/polymux/internal/loopback"
	"github.com/polymux/polymux/interop/internal/muxes"
)

const (
	// bulkWriteSize is the size of one Write in bulk1, bulk16 and bulk256,
	// raw TCP's too.
	bulkWriteSize = 32 << 10
	// bigWriteSize is the size of one Write in bulk1_1m and bulk16_1m, raw
	// TCP's too.
	bigWriteSize = 1 << 20
	// slowWriteSize is the size of one Write (and of the reader's buffer)
	// in slowreader: 64 KiB, as it has always been, so runs compare.
	slowWriteSize = 64 << 10
	// rpcSize is the size of one rpc request and of its echo.
	rpcSize = 64
	// mb is what MB/s counts: 1 MB = 1e6 bytes.
	mb = loopback.MB
)

// metric is one column of the table.
type metric struct {
	key          string // JSON key
	header       string // table header
	higherBetter bool
	digits       int  // decimals shown
	noRaw        bool // raw TCP has no meaningful figure (ratios to it are left out)
}

var (
	mBulk1      = metric{key: "bulk1_MBps", header: "bulk1 MB/s", higherBetter: true}
	mAllocs     = metric{key: "bulk1_allocs_per_MiB", header: "allocs/MiB", digits: 1}
	mBulk1M     = metric{key: "bulk1_1MiB_MBps", header: "bulk1 1MiB MB/s", higherBetter: true}
	mAllocs1M   = metric{key: "bulk1_1MiB_allocs_per_MiB", header: "1MiB allocs/MiB", digits: 1}
	mBulk16     = metric{key: "bulk16_MBps", header: "bulk16 MB/s", higherBetter: true}
	mBulk161M   = metric{key: "bulk16_1MiB_MBps", header: "bulk16 1MiB MB/s", higherBetter: true}
	mBulk256    = metric{key: "bulk256_MBps", header: "bulk256 MB/s", higherBetter: true}
	mRPC        = metric{key: "rpc_ops", header: "rpc op/s", higherBetter: true}
	mRPC50      = metric{key: "rpc_p50_us", header: "rpc p50 µs", digits: 1}
	mRPC99      = metric{key: "rpc_p99_us", header: "rpc p99 µs", digits: 1}
	mRPC64      = metric{key: "rpc64_ops", header: "rpc×64 op/s", higherBetter: true}
	mRPC6450    = metric{key: "rpc64_p50_us", header: "rpc×64 p50 µs", digits: 1}
	mRPC6499    = metric{key: "rpc64_p99_us", header: "rpc×64 p99 µs", digits: 1}
	mIdleHeap   = metric{key: "idle_heap_bytes_per_stream", header: "idle B/stream"}
	mIdleGorout = metric{key: "idle_goroutines_per_stream", header: "idle goroutines/stream", digits: 2, noRaw: true}
	mSlow       = metric{key: "slowreader_MBps", header: "slowreader MB/s", higherBetter: true}
)

// workload is one thing measured; it yields one or more metrics.
type workload struct {
	name    string
	about   string
	metrics []metric
	// writeSize is the size of one Write of a bulk workload (and of
	// slowreader), 0 for the others.
	writeSize int
	run       func(r *cellRun) (map[string]float64, error)
	// opts, if not nil, configures the cell's pair instead of bench.opts.
	opts *muxes.Options
	// noPair: the workload makes its own connections; the cell has no pair.
	noPair bool
	// optIn: only -workloads naming it runs it; "all" leaves it out.
	optIn bool
}

func (b *bench) workloads() []workload {
	streamsOpts := b.opts
	streamsOpts.Streams = max(b.opts.Streams, b.streams+1024)
	return []workload{
		b.bulkWorkload("bulk1", "one stream writing 32 KiB writes as fast as it can; allocations per MiB moved, both ends", 1, bulkWriteSize, mBulk1, &mAllocs),
		b.bulkWorkload("bulk1_1m", "the same with 1 MiB writes", 1, bigWriteSize, mBulk1M, &mAllocs1M),
		b.bulkWorkload("bulk16", "16 streams writing 32 KiB writes at once, aggregate", 16, bulkWriteSize, mBulk16, nil),
		b.bulkWorkload("bulk16_1m", "the same with 1 MiB writes", 16, bigWriteSize, mBulk161M, nil),
		b.bulkWorkload("bulk256", "256 streams writing 32 KiB writes at once, aggregate", 256, bulkWriteSize, mBulk256, nil),
		{name: "rpc", about: "open a stream, echo 64 B, close: one caller", metrics: []metric{mRPC, mRPC50, mRPC99}, run: func(r *cellRun) (map[string]float64, error) { return b.rpc(r, 1) }},
		{name: "rpc64", about: "the same with 64 concurrent callers", metrics: []metric{mRPC64, mRPC6450, mRPC6499}, run: func(r *cellRun) (map[string]float64, error) { return b.rpc(r, 64) }},
		{name: "idle", about: "open streams holding one byte each: heap after GC and goroutines, per stream, both ends", metrics: []metric{mIdleHeap, mIdleGorout}, run: b.idle},
		{name: "slowreader", about: "one stream never read while another moves its payload in 64 KiB writes", metrics: []metric{mSlow}, writeSize: slowWriteSize, run: b.slowReader},
		{name: "streams100k", about: "100,000 streams held on one session: heap and goroutines per stream, both ends, and opens per second", metrics: []metric{mS100kHeap, mS100kGorout, mS100kOpens}, run: b.streams100k, opts: &streamsOpts, optIn: true},
		{name: "sessions10k", about: "10,000 session pairs with one stream each: heap, goroutine stacks and goroutines per pair, both ends, and set-up rate", metrics: []metric{mS10kHeap, mS10kStack, mS10kTotal, mS10kGorout, mS10kRate}, run: b.sessions10k, noPair: true, optIn: true},
	}
}

// cellRun is one run of one workload on one contender.
type cellRun struct {
	ctx      context.Context // canceled when the cell fails
	pair     *pair
	c        contender
	progress atomic.Int64 // bumped by the workload as it moves: a stall detector watches it
	note     string       // set by the workload: something to report with the figure
}

// bulkWorkload is the workload of n streams writing size-byte writes
// (b.bulk), yielding MB/s as rate and, if allocs is not nil, allocations
// per MiB as *allocs.
func (b *bench) bulkWorkload(name, about string, n, size int, rate metric, allocs *metric) workload {
	ms := []metric{rate}
	if allocs != nil {
		ms = append(ms, *allocs)
	}
	return workload{name: name, about: about, metrics: ms, writeSize: size, run: func(r *cellRun) (map[string]float64, error) {
		return b.bulk(r, n, size, rate, allocs)
	}}
}

// bulk: n streams, each writing size-byte writes for b.duration; the
// server reads and counts (loopback.Bulk), with a buffer of the same size.
// Raw TCP runs the same, so both write the same size. Figures: aggregate
// MB/s from the first write to the last EOF, as rate; if allocs is not
// nil, Mallocs per MiB over the same span, both ends, as allocs.
func (b *bench) bulk(r *cellRun, n, size int, rate metric, allocs *metric) (map[string]float64, error) {
	res, err := loopback.Bulk(r.ctx, r.pair, n, size, b.duration, &r.progress)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{rate.key: res.MBps()}
	if allocs != nil {
		out[allocs.key] = float64(res.Mallocs) / (float64(res.Bytes) / (1 << 20))
	}
	return out, nil
}

// rpc: conc callers each loop until b.duration has passed: open a stream,
// write 64 B, read the 64 B echo, close (loopback.RPC). The server reads
// the request, echoes it, and closes once the caller has. On raw TCP a
// call dials a connection and closes it with SO_LINGER 0, so no TIME_WAIT
// piles up.
func (b *bench) rpc(r *cellRun, conc int) (map[string]float64, error) {
	res, err := loopback.RPC(r.ctx, r.pair, conc, rpcSize, b.duration, &r.progress)
	if err != nil {
		return nil, err
	}
	us := func(q float64) float64 { return float64(res.Quantile(q)) / float64(time.Microsecond) }
	if conc == 1 {
		return map[string]float64{mRPC.key: res.OpsPerSec(), mRPC50.key: us(0.50), mRPC99.key: us(0.99)}, nil
	}
	return map[string]float64{mRPC64.key: res.OpsPerSec(), mRPC6450.key: us(0.50), mRPC6499.key: us(0.99)}, nil
}

// idle: b.idleStreams streams opened, one byte written on each (muxado
// opens lazily) and read by the server, then left open (holdStreams).
// Figures: heap growth after GC and goroutine growth, both ends, per
// stream.
func (b *bench) idle(r *cellRun) (map[string]float64, error) {
	n := b.idleStreams
	if r.c.isRaw() && n > b.rawIdleLimit {
		n = b.rawIdleLimit
		r.note = fmt.Sprintf("%d connections (file descriptor limit)", n)
	}
	h, err := holdStreams(r, n)
	if err != nil {
		return nil, err
	}
	return map[string]float64{
		mIdleHeap.key:   perUnit(h.after.heap, h.before.heap, n),
		mIdleGorout.key: float64(h.after.goroutines-h.before.goroutines) / float64(n),
	}, nil
}

// slowReader: stream A is written as fast as the library lets, and the
// server never reads it; meanwhile stream B carries b.slowSize bytes.
// Figure: B's MB/s, or a failure if B stalls.
func (b *bench) slowReader(r *cellRun) (map[string]float64, error) {
	p := r.pair
	aArrived := make(chan loopback.Conn, 1)
	bDone := make(chan error, 1)
	var bRead atomic.Int64
	go func() {
		for range 2 {
			st, err := p.Accept(r.ctx)
			if err != nil {
				bDone <- fmt.Errorf("accept: %w", err)
				return
			}
			var tag [1]byte
			if _, err := io.ReadFull(st, tag[:]); err != nil {
				bDone <- fmt.Errorf("read tag: %w", err)
				return
			}
			if tag[0] == 'A' {
				aArrived <- st // held, never read
				continue
			}
			go func() {
				defer st.Close()
				buf := make([]byte, slowWriteSize)
				for {
					k, err := st.Read(buf)
					bRead.Add(int64(k))
					r.progress.Add(int64(k))
					if err == io.EOF {
						bDone <- nil
						return
					}
					if err != nil {
						bDone <- fmt.Errorf("read B: %w", err)
						return
					}
				}
			}()
		}
	}()
	// A is never closed here: its writer stays blocked on the window until
	// the cell closes the session. (Closing it now would hang on muxado,
	// whose Close waits for the stream lock that a Write blocked on the
	// window holds.)
	a, err := p.Open(r.ctx)
	if err != nil {
		return nil, fmt.Errorf("open A: %w", err)
	}
	buf := bytes.Repeat([]byte("polymux!"), slowWriteSize/8)
	if _, err := a.Write([]byte{'A'}); err != nil {
		return nil, fmt.Errorf("write A: %w", err)
	}
	var aServer loopback.Conn
	select {
	case aServer = <-aArrived:
	case err := <-bDone:
		return nil, err
	case <-r.ctx.Done():
		return nil, r.ctx.Err()
	}
	// Hold the server's A until the end: xtaci/smux closes accepted streams
	// the garbage collector finds unreachable (xtaci/smux#116).
	defer runtime.KeepAlive(aServer)
	var aWritten atomic.Int64
	go func() {
		for {
			k, err := a.Write(buf)
			aWritten.Add(int64(k))
			if err != nil {
				return
			}
		}
	}()
	bs, err := p.Open(r.ctx)
	if err != nil {
		return nil, fmt.Errorf("open B: %w", err)
	}
	defer bs.Close()
	if _, err := bs.Write([]byte{'B'}); err != nil {
		return nil, fmt.Errorf("write B: %w", err)
	}
	start := time.Now()
	for left := b.slowSize; left > 0; {
		k := min(left, len(buf))
		if _, err := bs.Write(buf[:k]); err != nil {
			return nil, fmt.Errorf("write B: %w", err)
		}
		left -= k
	}
	if err := bs.CloseWrite(); err != nil {
		return nil, fmt.Errorf("CloseWrite B: %w", err)
	}
	select {
	case err := <-bDone:
		if err != nil {
			return nil, err
		}
	case <-r.ctx.Done():
		return nil, fmt.Errorf("stream B stopped after %d of %d bytes (A's writer got %d out): %w", bRead.Load(), b.slowSize, aWritten.Load(), r.ctx.Err())
	}
	elapsed := time.Since(start)
	r.note = fmt.Sprintf("A's writer got %d bytes out", aWritten.Load())
	return map[string]float64{mSlow.key: float64(b.slowSize) / elapsed.Seconds() / mb}, nil
}
