package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"github.com/polymux/polymux"
	"github.com/polymux/polymux/internal/loopback"
)

const (
	// rpcSize is the size of one rpc request (and of its echo).
	rpcSize = 64
	// drainTimeout is the default bound on how long a workload may take,
	// after its duration has passed, for its writers to stop and its
	// readers to reach EOF.
	drainTimeout = 10 * time.Second
)

// bencher runs the suite with one set of flags.
type bencher struct {
	streams  int
	sizes    []int // bytes per Write in the bulk workloads: each size its own workloads
	duration time.Duration
	drain    time.Duration             // a workload still running this long after its duration fails
	progress io.Writer                 // where the progress line is drawn
	tty      bool                      // progress is a terminal: only then is a progress line drawn
	baseline map[string]workloadResult // raw TCP results by workload name (streams and write size in it), measured once per run
}

// transport is what a workload runs on, and how the bencher ends it.
type transport interface {
	loopback.Transport
	// Close ends the transport and every connection on it, so that a
	// stuck workload returns.
	Close() error
}

// workload is one entry of the suite: run measures it on a transport,
// counting its progress (bytes or calls) into the counter a meter draws.
// The same workload runs on polymux and on raw TCP, so both write the same
// sizes.
type workload struct {
	name  string
	bytes bool // progress counts bytes (else calls)
	size  int  // bytes per Write of a bulk workload; 0 for rpc
	run   func(ctx context.Context, t transport, progress *atomic.Int64) (*workloadResult, error)
}

// workloads is the suite for b's flags, in the order of the table: bulk on
// one stream at every write size, bulk on b.streams streams at every write
// size, then rpc.
func (b *bencher) workloads() []workload {
	bulkN := fmt.Sprintf("bulk %d streams", b.streams)
	if b.streams == 1 {
		bulkN = "bulk 1 stream (again)"
	}
	var ws []workload
	bulk := func(name string, streams int) {
		for _, size := range b.sizes {
			ws = append(ws, workload{fmt.Sprintf("%s, %s writes", name, sizeName(size)), true, size,
				func(ctx context.Context, t transport, p *atomic.Int64) (*workloadResult, error) {
					return runBulk(ctx, t, streams, size, b.duration, p)
				}})
		}
	}
	bulk("bulk 1 stream", 1)
	bulk(bulkN, b.streams)
	return append(ws, workload{"rpc open+echo", false, 0, func(ctx context.Context, t transport, p *atomic.Int64) (*workloadResult, error) {
		return runRPC(ctx, t, b.duration, p)
	}})
}

// runBulk is loopback.Bulk as a workloadResult.
func runBulk(ctx context.Context, t transport, streams, size int, d time.Duration, progress *atomic.Int64) (*workloadResult, error) {
	r, err := loopback.Bulk(ctx, t, streams, size, d, progress)
	if err != nil {
		return nil, err
	}
	return &workloadResult{Bytes: r.Bytes, Seconds: r.Elapsed.Seconds(), MBps: r.MBps()}, nil
}

// runRPC is loopback.RPC with one caller and rpcSize-byte calls, as a
// workloadResult.
func runRPC(ctx context.Context, t transport, d time.Duration, progress *atomic.Int64) (*workloadResult, error) {
	r, err := loopback.RPC(ctx, t, 1, rpcSize, d, progress)
	if err != nil {
		return nil, err
	}
	return &workloadResult{
		Ops:       int64(r.Ops()),
		Seconds:   r.Elapsed.Seconds(),
		OpsPerSec: r.OpsPerSec(),
		P50:       r.Quantile(0.50),
		P99:       r.Quantile(0.99),
	}, nil
}

// runProtocol runs every workload on a polymux session of protocol p and,
// unless already measured in this run, on raw TCP.
func (b *bencher) runProtocol(p polymux.Protocol) protocolRun {
	rep := protocolRun{Protocol: p.String()}
	totals := &sessionTotals{}
	for _, w := range b.workloads() {
		wr := workloadReport{Name: w.name, WriteSize: w.size}
		var errs []string
		mt, err := newMuxTransport(p)
		if err == nil {
			wr.Polymux, err = b.measure(w, mt, fmt.Sprintf("%s · polymux %v", w.name, p))
			mt.settle(time.Second)
			totals.Sessions += 2
			totals.add(mt.client.Stats())
			totals.add(mt.server.Stats())
			mt.Close()
		}
		if err != nil {
			errs = append(errs, "polymux: "+err.Error())
		}
		if r, ok := b.baseline[w.name]; ok {
			wr.TCP = &r
		} else if wr.TCP, err = b.measureTCP(w); err != nil {
			errs = append(errs, "raw TCP: "+err.Error())
		} else {
			b.baseline[w.name] = *wr.TCP
		}
		if wr.Polymux != nil && wr.TCP != nil && wr.TCP.figure() > 0 {
			wr.Ratio = wr.Polymux.figure() / wr.TCP.figure()
		}
		wr.Error = strings.Join(errs, "; ")
		rep.Workloads = append(rep.Workloads, wr)
	}
	rep.Session = totals
	return rep
}

// measureTCP runs w on a fresh raw TCP transport.
func (b *bencher) measureTCP(w workload) (*workloadResult, error) {
	tt, err := loopback.NewTCP()
	if err != nil {
		return nil, err
	}
	defer tt.Close()
	return b.measure(w, tt, w.name+" · raw TCP")
}

// measure runs w on t with a progress line labelled label. A workload
// still running b.drain after its duration has its transport closed, so
// it fails instead of hanging the command.
func (b *bencher) measure(w workload, t transport, label string) (*workloadResult, error) {
	ctx, cancel := context.WithTimeoutCause(context.Background(), b.duration+b.drain,
		fmt.Errorf("not finished %v after its %v duration", b.drain, b.duration))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { t.Close() })
	defer stop()
	var progress atomic.Int64
	m := b.meter(label)
	m.start(&progress, w.bytes)
	r, err := w.run(ctx, t, &progress)
	m.stop()
	return r, err
}

// muxTransport is a polymux session over TCP on 127.0.0.1: the client end
// opens streams, the server end accepts them.
type muxTransport struct {
	client, server *polymux.Session
}

// newMuxTransport makes a client and a server session of protocol p over
// a fresh loopback TCP connection.
func newMuxTransport(p polymux.Protocol) (*muxTransport, error) {
	c, s, err := loopback.TCPPair()
	if err != nil {
		return nil, err
	}
	cfg := &polymux.Config{Protocol: p}
	client, err := polymux.Client(c, cfg)
	if err != nil {
		c.Close()
		s.Close()
		return nil, err
	}
	server, err := polymux.Server(s, cfg)
	if err != nil {
		client.Close()
		s.Close()
		return nil, err
	}
	return &muxTransport{client: client, server: server}, nil
}

// Open opens a stream on the client session.
func (m *muxTransport) Open(ctx context.Context) (loopback.Conn, error) {
	st, err := m.client.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// Accept accepts a stream on the server session.
func (m *muxTransport) Accept(ctx context.Context) (loopback.Conn, error) {
	st, err := m.server.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// settle waits, at most d, until neither session holds a stream: the last
// FIN of a finished workload may still be in flight.
func (m *muxTransport) settle(d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if m.client.NumStreams() == 0 && m.server.NumStreams() == 0 {
			return
		}
	}
}

// Close closes both sessions; Session.Close waits for their goroutines.
func (m *muxTransport) Close() error {
	return errors.Join(m.client.Close(), m.server.Close())
}
