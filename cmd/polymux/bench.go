package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/polymux/polymux"
)

const (
	// rpcSize is the size of one rpc request (and of its echo).
	rpcSize = 64
	// opTimeout bounds one rpc round trip, so a stuck one ends the workload
	// with an error instead of hanging.
	opTimeout = 5 * time.Second
	// drainTimeout bounds how long a workload may take, after its duration
	// has passed, for its writers to stop and its readers to reach EOF.
	drainTimeout = 10 * time.Second
	// meterInterval is how often the progress line is redrawn.
	meterInterval = 250 * time.Millisecond
)

// allProtocols is what -protocol all runs, in order.
var allProtocols = []polymux.Protocol{polymux.Yamux, polymux.SmuxV1, polymux.SmuxV2, polymux.MuxadoV2}

func benchMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("polymux bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	protoFlag := fs.String("protocol", "yamux", "wire protocol: auto, yamux, smux1, smux2, muxado2, or all (each in turn)")
	streams := fs.Int("streams", 64, "concurrent streams (and raw TCP connections) of the bulk-N workload")
	size := fs.Int("size", 65536, "bytes per Write in the bulk workloads")
	duration := fs.Duration("duration", 2500*time.Millisecond, "how long each workload runs")
	jsonOut := fs.Bool("json", false, "print the results as JSON instead of a table")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: polymux bench [flags]

Runs one polymux session over TCP on 127.0.0.1 in this process and measures
  bulk 1 stream    one stream writing as fast as it can (MB/s, 1 MB = 1e6 bytes)
  bulk N streams   N streams writing concurrently (aggregate MB/s)
  rpc open+echo    open a stream, send %d bytes, read the echo to EOF, close
                   (sequential: op/s and p50/p99 latency)
beside the same workloads on raw TCP (one connection per stream, one dial
per rpc), with the ratio polymux / raw TCP.

flags:
`, rpcSize)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "polymux bench: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	var protos []polymux.Protocol
	if strings.EqualFold(*protoFlag, "all") {
		protos = allProtocols
	} else {
		p, err := polymux.ParseProtocol(*protoFlag)
		if err != nil {
			fmt.Fprintf(stderr, "polymux bench: -protocol: %v (or all)\n", err)
			return 2
		}
		protos = []polymux.Protocol{p}
	}
	switch {
	case *streams < 1:
		fmt.Fprintf(stderr, "polymux bench: -streams must be at least 1, got %d\n", *streams)
		return 2
	case *size < 1:
		fmt.Fprintf(stderr, "polymux bench: -size must be at least 1, got %d\n", *size)
		return 2
	case *duration <= 0:
		fmt.Fprintf(stderr, "polymux bench: -duration must be positive, got %v\n", *duration)
		return 2
	}

	b := &bencher{
		streams:  *streams,
		size:     *size,
		duration: *duration,
		progress: stderr,
		tty:      isTerminal(stderr),
		baseline: make(map[string]workloadResult),
	}
	out := benchOutput{
		GOMAXPROCS:      runtime.GOMAXPROCS(0),
		DurationSeconds: b.duration.Seconds(),
		Streams:         b.streams,
		WriteSize:       b.size,
	}
	ran, failed := 0, false
	for i, p := range protos {
		rep := b.runProtocol(p)
		out.Runs = append(out.Runs, rep)
		if rep.Unsupported {
			fmt.Fprintf(stderr, "protocol %v: not supported yet: %s\n", p, rep.Error)
			if !*jsonOut {
				if i > 0 {
					fmt.Fprintln(stdout)
				}
				fmt.Fprintf(stdout, "protocol %v: not supported yet: %s\n", p, rep.Error)
			}
			continue
		}
		ran++
		for _, w := range rep.Workloads {
			if w.Error != "" {
				failed = true
				fmt.Fprintf(stderr, "polymux bench: %v: %s: %s\n", p, w.Name, w.Error)
			}
		}
		if !*jsonOut {
			if i > 0 {
				fmt.Fprintln(stdout)
			}
			b.printTable(stdout, rep)
		}
	}
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			fmt.Fprintf(stderr, "polymux bench: %v\n", err)
			return 1
		}
	}
	if ran == 0 || failed {
		return 1
	}
	return 0
}

// isTerminal reports whether w is a terminal, where the progress line is
// redrawn in place and cleared; elsewhere each workload leaves its final
// progress line behind.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// bencher runs the suite with one set of flags.
type bencher struct {
	streams  int
	size     int
	duration time.Duration
	progress io.Writer // nil: no progress line
	tty      bool
	baseline map[string]workloadResult // raw TCP results by workload name, measured once per run
}

// benchOutput is the -json document.
type benchOutput struct {
	GOMAXPROCS      int           `json:"gomaxprocs"`
	DurationSeconds float64       `json:"duration_seconds"`
	Streams         int           `json:"streams"`
	WriteSize       int           `json:"write_size"`
	Runs            []protocolRun `json:"runs"`
}

// protocolRun is the suite's outcome for one protocol.
type protocolRun struct {
	Protocol    string           `json:"protocol"`
	Unsupported bool             `json:"unsupported,omitempty"`
	Error       string           `json:"error,omitempty"`
	Workloads   []workloadReport `json:"workloads,omitempty"`
	Session     *sessionTotals   `json:"session,omitempty"`
}

// workloadReport pairs the polymux and raw TCP figures of a workload.
type workloadReport struct {
	Name    string          `json:"name"`
	Polymux *workloadResult `json:"polymux,omitempty"`
	TCP     *workloadResult `json:"tcp,omitempty"`
	Ratio   float64         `json:"ratio,omitempty"` // polymux / raw TCP of MB/s or op/s
	Error   string          `json:"error,omitempty"`
}

// workloadResult is what one workload measured on one transport.
type workloadResult struct {
	Bytes     int64         `json:"bytes,omitempty"` // received by the readers within the duration
	Ops       int64         `json:"ops,omitempty"`   // completed rpcs
	Seconds   float64       `json:"seconds"`
	MBps      float64       `json:"mb_per_s,omitempty"`
	OpsPerSec float64       `json:"ops_per_s,omitempty"`
	P50       time.Duration `json:"p50_ns,omitempty"`
	P99       time.Duration `json:"p99_ns,omitempty"`
}

// figure is the number compared between polymux and raw TCP.
func (r *workloadResult) figure() float64 {
	if r.Ops > 0 {
		return r.OpsPerSec
	}
	return r.MBps
}

// sessionTotals sums the Stats of both ends of every polymux session of a
// run, taken once each workload has finished.
type sessionTotals struct {
	Sessions       int    `json:"sessions"`
	StreamsOpened  uint64 `json:"streams_opened"`
	StreamsRefused uint64 `json:"streams_refused"`
	BytesSent      uint64 `json:"bytes_sent"`
	FramesSent     uint64 `json:"frames_sent"`
	FramesReceived uint64 `json:"frames_received"`
	LeftOpen       int    `json:"streams_left_open"` // streams still in a session's table when the workload ended
}

func (t *sessionTotals) add(st polymux.Stats) {
	t.StreamsOpened += st.StreamsOpened
	t.StreamsRefused += st.StreamsRefused
	t.BytesSent += st.BytesSent
	t.FramesSent += st.FramesSent
	t.FramesReceived += st.FramesReceived
	t.LeftOpen += st.ActiveStreams
}

// workload is one entry of the suite.
type workload struct {
	name string
	run  func(t transport, label string) (*workloadResult, error)
}

func (b *bencher) workloads() []workload {
	bulkN := fmt.Sprintf("bulk %d streams", b.streams)
	if b.streams == 1 {
		bulkN = "bulk 1 stream (again)"
	}
	return []workload{
		{"bulk 1 stream", func(t transport, label string) (*workloadResult, error) {
			return runBulk(t, 1, b.size, b.duration, b.meter(label))
		}},
		{bulkN, func(t transport, label string) (*workloadResult, error) {
			return runBulk(t, b.streams, b.size, b.duration, b.meter(label))
		}},
		{"rpc open+echo", func(t transport, label string) (*workloadResult, error) {
			return runRPC(t, b.duration, b.meter(label))
		}},
	}
}

// runProtocol runs every workload on a polymux session of protocol p and,
// unless already measured in this run, on raw TCP.
func (b *bencher) runProtocol(p polymux.Protocol) protocolRun {
	rep := protocolRun{Protocol: p.String()}
	probe, err := newMuxTransport(p)
	if err != nil {
		rep.Unsupported = true
		rep.Error = err.Error()
		return rep
	}
	probe.Close()
	totals := &sessionTotals{}
	for _, w := range b.workloads() {
		wr := workloadReport{Name: w.name}
		var errs []string
		mt, err := newMuxTransport(p)
		if err == nil {
			wr.Polymux, err = w.run(mt, fmt.Sprintf("%s · polymux %v", w.name, p))
			mt.settle(time.Second)
			totals.Sessions += 2
			totals.add(mt.client.Stats())
			totals.add(mt.server.Stats())
			mt.Close()
		}
		if err != nil {
			wr.Polymux = nil
			errs = append(errs, "polymux: "+err.Error())
		}
		if r, ok := b.baseline[w.name]; ok {
			wr.TCP = &r
		} else {
			tt, err := newTCPTransport()
			if err == nil {
				wr.TCP, err = w.run(tt, w.name+" · raw TCP")
				tt.Close()
			}
			if err != nil {
				wr.TCP = nil
				errs = append(errs, "raw TCP: "+err.Error())
			} else {
				b.baseline[w.name] = *wr.TCP
			}
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

func (b *bencher) printTable(w io.Writer, rep protocolRun) {
	fmt.Fprintf(w, "polymux bench: protocol %s over TCP 127.0.0.1, %v per workload, %d-byte writes, GOMAXPROCS=%d\n",
		rep.Protocol, b.duration, b.size, runtime.GOMAXPROCS(0))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "workload\tpolymux\traw TCP\tratio\n")
	for _, wr := range rep.Workloads {
		ratio := "-"
		if wr.Ratio > 0 {
			ratio = fmt.Sprintf("%.2f", wr.Ratio)
		}
		extra := ""
		if p, t := wr.Polymux, wr.TCP; (p != nil && p.Ops > 0) || (t != nil && t.Ops > 0) {
			extra = fmt.Sprintf("p50 %s p99 %s (raw p50 %s p99 %s)", latency(p, false), latency(p, true), latency(t, false), latency(t, true))
		}
		if wr.Error != "" {
			extra = strings.TrimSpace(extra + "  error: " + wr.Error)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s", wr.Name, figure(wr.Polymux), figure(wr.TCP), ratio)
		if extra != "" {
			fmt.Fprintf(tw, "\t%s", extra)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	if s := rep.Session; s != nil {
		fmt.Fprintf(w, "session (both ends, all workloads): %d streams opened, %s payload, %d frames sent (%s/frame), %d refused, %d left open\n",
			s.StreamsOpened, bytesString(s.BytesSent), s.FramesSent, bytesString(s.BytesSent/max(s.FramesSent, 1)), s.StreamsRefused, s.LeftOpen)
	}
}

func figure(r *workloadResult) string {
	switch {
	case r == nil:
		return "error"
	case r.Ops > 0:
		return fmt.Sprintf("%.0f op/s", r.OpsPerSec)
	default:
		return fmt.Sprintf("%.0f MB/s", r.MBps)
	}
}

func latency(r *workloadResult, p99 bool) string {
	if r == nil || r.Ops == 0 {
		return "-"
	}
	d := r.P50
	if p99 {
		d = r.P99
	}
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	default:
		return d.Round(time.Millisecond).String()
	}
}

func bytesString(n uint64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.1f GB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	}
	return fmt.Sprintf("%d B", n)
}

// transport is what a workload runs on: a polymux session (Open opens a
// stream, Accept accepts it on the other end) or raw TCP (Open dials a
// connection, Accept accepts it).
type transport interface {
	Open(ctx context.Context) (net.Conn, error)
	// Accept returns the next connection the Open side made; it returns
	// an error once ctx is done.
	Accept(ctx context.Context) (net.Conn, error)
	// Close releases the transport and waits for its goroutines.
	Close() error
}

// muxTransport is a polymux session over TCP on 127.0.0.1: the client end
// opens streams, the server end accepts them.
type muxTransport struct {
	client, server *polymux.Session
}

func newMuxTransport(p polymux.Protocol) (*muxTransport, error) {
	c, s, err := tcpPair()
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

func (m *muxTransport) Open(ctx context.Context) (net.Conn, error) {
	return m.client.OpenStream(ctx)
}

func (m *muxTransport) Accept(ctx context.Context) (net.Conn, error) {
	return m.server.AcceptStream(ctx)
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

// tcpPair returns both ends of a fresh TCP connection on 127.0.0.1.
func tcpPair() (client, server net.Conn, err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	type accepted struct {
		c   net.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		ch <- accepted{c, err}
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		ln.Close()
		if a := <-ch; a.c != nil {
			a.c.Close()
		}
		return nil, nil, err
	}
	a := <-ch
	if a.err != nil {
		client.Close()
		return nil, nil, a.err
	}
	return client, a.c, nil
}

// tcpTransport is raw TCP on 127.0.0.1: Open dials a new connection.
type tcpTransport struct {
	ln     net.Listener
	addr   string
	dialer net.Dialer
}

func newTCPTransport() (*tcpTransport, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return &tcpTransport{ln: ln, addr: ln.Addr().String()}, nil
}

func (t *tcpTransport) Open(ctx context.Context) (net.Conn, error) {
	return t.dialer.DialContext(ctx, "tcp", t.addr)
}

// Accept accepts a connection; once ctx is done the listener is closed,
// which ends this and every later Accept.
func (t *tcpTransport) Accept(ctx context.Context) (net.Conn, error) {
	stop := context.AfterFunc(ctx, func() { t.ln.Close() })
	defer stop()
	return t.ln.Accept()
}

func (t *tcpTransport) Close() error { return t.ln.Close() }

// firstError keeps the first error reported to it.
type firstError struct {
	mu  sync.Mutex
	err error
}

func (f *firstError) set(err error) {
	f.mu.Lock()
	if f.err == nil {
		f.err = err
	}
	f.mu.Unlock()
}

func (f *firstError) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// connSet remembers connections so a stuck workload can close them all.
type connSet struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (s *connSet) add(c net.Conn) {
	s.mu.Lock()
	s.conns = append(s.conns, c)
	s.mu.Unlock()
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
}

// waitTimeout waits for wg, at most d; it reports whether wg finished.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// runBulk opens streams connections on t and writes size-byte buffers on
// each as fast as it can for d, while the other end reads and discards.
// It reports the bytes the readers received within d. Every writer stops
// at the deadline and closes its connection; every reader reads to EOF
// and closes its end; runBulk returns once all of them have.
func runBulk(t transport, streams, size int, d time.Duration, m *meter) (*workloadResult, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		conns    connSet
		received atomic.Int64
		fail     firstError
		wg       sync.WaitGroup
	)
	defer conns.closeAll()

	// The reading end: accept every connection, read each to EOF.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range streams {
			c, err := t.Accept(ctx)
			if err != nil {
				if ctx.Err() == nil {
					fail.set(fmt.Errorf("accept: %w", err))
				}
				return
			}
			conns.add(c)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					received.Add(int64(n))
					if err != nil {
						if err != io.EOF {
							fail.set(fmt.Errorf("read: %w", err))
						}
						return
					}
				}
			}()
		}
	}()

	// The writing end: open every connection first, then start the clock.
	start := make(chan struct{})
	var deadline time.Time // written before start is closed
	var writers sync.WaitGroup
	for range streams {
		c, err := t.Open(ctx)
		if err != nil {
			fail.set(fmt.Errorf("open: %w", err))
			break
		}
		conns.add(c)
		writers.Add(1)
		go func() {
			defer writers.Done()
			defer c.Close()
			buf := make([]byte, size)
			for i := range buf {
				buf[i] = byte(i)
			}
			<-start
			c.SetWriteDeadline(deadline)
			for {
				if _, err := c.Write(buf); err != nil {
					if !isTimeout(err) && ctx.Err() == nil {
						fail.set(fmt.Errorf("write: %w", err))
					}
					return
				}
			}
		}()
	}
	if err := fail.get(); err != nil {
		cancel()
		conns.closeAll()
		close(start)
		waitTimeout(&writers, drainTimeout)
		waitTimeout(&wg, drainTimeout)
		return nil, err
	}

	m.start(&received, true)
	t0 := time.Now()
	deadline = t0.Add(d)
	close(start)
	timer := time.NewTimer(d)
	<-timer.C
	n := received.Load()
	elapsed := time.Since(t0)
	m.stop()

	writersDone := waitTimeout(&writers, drainTimeout)
	allDone := writersDone && waitTimeout(&wg, drainTimeout)
	if !allDone {
		cancel()
		conns.closeAll()
		waitTimeout(&writers, drainTimeout)
		waitTimeout(&wg, drainTimeout)
		what := "readers did not reach EOF"
		if !writersDone {
			what = "writers did not stop"
		}
		return nil, fmt.Errorf("%s within %v after the deadline", what, drainTimeout)
	}
	if err := fail.get(); err != nil {
		return nil, err
	}
	return &workloadResult{
		Bytes:   n,
		Seconds: elapsed.Seconds(),
		MBps:    float64(n) / elapsed.Seconds() / 1e6,
	}, nil
}

// runRPC runs round trips one after another for d: open a connection on
// t, write rpcSize bytes, read the echo to EOF, close. The other end
// accepts, reads the request, echoes it and closes.
func runRPC(t transport, d time.Duration, m *meter) (*workloadResult, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		fail firstError
		wg   sync.WaitGroup
		ops  atomic.Int64
	)

	wg.Add(1)
	go func() {
		defer wg.Done()
		req := make([]byte, rpcSize)
		for {
			c, err := t.Accept(ctx)
			if err != nil {
				if ctx.Err() == nil {
					fail.set(fmt.Errorf("accept: %w", err))
				}
				return
			}
			c.SetDeadline(time.Now().Add(opTimeout))
			_, err = io.ReadFull(c, req)
			if err == nil {
				_, err = c.Write(req)
			}
			c.Close()
			if err != nil {
				fail.set(fmt.Errorf("server: %w", err))
				return
			}
		}
	}()

	req := make([]byte, rpcSize)
	for i := range req {
		req[i] = byte('a' + i%26)
	}
	resp := make([]byte, 2*rpcSize)
	lat := make([]time.Duration, 0, 1<<16)
	m.start(&ops, false)
	t0 := time.Now()
	end := t0.Add(d)
	var err error
	for time.Now().Before(end) && fail.get() == nil {
		s := time.Now()
		if err = rpcOnce(ctx, t, req, resp); err != nil {
			break
		}
		lat = append(lat, time.Since(s))
		ops.Add(1)
	}
	elapsed := time.Since(t0)
	m.stop()
	cancel()
	if !waitTimeout(&wg, drainTimeout) {
		return nil, fmt.Errorf("server side did not stop within %v", drainTimeout)
	}
	if err == nil {
		err = fail.get()
	}
	if err != nil {
		return nil, err
	}
	if len(lat) == 0 {
		return nil, errors.New("no rpc completed")
	}
	slices.Sort(lat)
	return &workloadResult{
		Ops:       int64(len(lat)),
		Seconds:   elapsed.Seconds(),
		OpsPerSec: float64(len(lat)) / elapsed.Seconds(),
		P50:       lat[(len(lat)-1)*50/100],
		P99:       lat[(len(lat)-1)*99/100],
	}, nil
}

// rpcOnce is one round trip of runRPC.
func rpcOnce(ctx context.Context, t transport, req, resp []byte) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	c, err := t.Open(ctx)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(opTimeout))
	if _, err := c.Write(req); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	n := 0
	for {
		if n == len(resp) {
			return fmt.Errorf("echo longer than the %d-byte request", len(req))
		}
		k, err := c.Read(resp[n:])
		n += k
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
	}
	if string(resp[:n]) != string(req) {
		return fmt.Errorf("echo is %d bytes %q, want the %d-byte request", n, resp[:n], len(req))
	}
	return nil
}

// meter draws the live progress line of one workload on w. A nil *meter
// draws nothing.
type meter struct {
	w      io.Writer
	tty    bool
	label  string
	stopc  chan struct{}
	done   chan struct{}
	t0     time.Time
	n      *atomic.Int64
	bytes  bool
	width  int
	active bool
}

func (b *bencher) meter(label string) *meter {
	if b.progress == nil {
		return nil
	}
	return &meter{w: b.progress, tty: b.tty, label: label}
}

// start begins redrawing the line from counter n (bytes, or ops).
func (m *meter) start(n *atomic.Int64, bytes bool) {
	if m == nil {
		return
	}
	m.n, m.bytes, m.t0 = n, bytes, time.Now()
	m.stopc, m.done = make(chan struct{}), make(chan struct{})
	m.active = true
	go func() {
		defer close(m.done)
		tick := time.NewTicker(meterInterval)
		defer tick.Stop()
		for {
			select {
			case <-m.stopc:
				return
			case <-tick.C:
				m.draw()
			}
		}
	}()
}

func (m *meter) draw() {
	el := time.Since(m.t0)
	v := float64(m.n.Load()) / el.Seconds()
	var line string
	if m.bytes {
		line = fmt.Sprintf("%s  %4.1fs  %6.0f MB/s", m.label, el.Seconds(), v/1e6)
	} else {
		line = fmt.Sprintf("%s  %4.1fs  %6.0f op/s  %d ops", m.label, el.Seconds(), v, m.n.Load())
	}
	width := utf8.RuneCountInString(line)
	pad := max(m.width-width, 0)
	m.width = width
	fmt.Fprintf(m.w, "\r%s%s", line, strings.Repeat(" ", pad))
}

// stop ends the redrawing. On a terminal the line is cleared; elsewhere
// its final state is left behind, ended by a newline.
func (m *meter) stop() {
	if m == nil || !m.active {
		return
	}
	m.active = false
	close(m.stopc)
	<-m.done
	if m.tty {
		if m.width > 0 {
			fmt.Fprintf(m.w, "\r%s\r", strings.Repeat(" ", m.width))
		}
		return
	}
	m.draw()
	fmt.Fprintln(m.w)
}
