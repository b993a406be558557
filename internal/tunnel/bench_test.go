package tunnel

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/polymux/polymux"
	"github.com/polymux/polymux/internal/loopback"
)

// benchDuration is how long each workload runs on each path per iteration.
const benchDuration = time.Second

// through is a loopback.TCP reached through a tunnel: Open dials the
// client's -L listener, whose connections the server delivers to the
// TCP's listener, where Accept takes them.
type through struct {
	*loopback.TCP
	bind string
}

// Open dials the tunnel's -L listener.
func (th through) Open(ctx context.Context) (loopback.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", th.bind)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// BenchmarkTunnel compares the tunnel with direct TCP in the same run:
// both ends of every connection, the tunnel's client and its server all
// in this process on 127.0.0.1, TLS 1.3 and yamux on, default settings.
// Each iteration runs the workload for benchDuration directly, then
// through the tunnel, and reports both and their ratio:
//
//	bulk1, bulk16: one or 16 connections writing 64 KiB at a time (MB/s)
//	rpc1, rpc16:   one or 16 callers, each call a new connection that
//	               sends 64 bytes and reads the echo (op/s, p50, p99)
//
// Run it with go test -run '^$' -bench Tunnel ./internal/tunnel/ (add
// -cpuprofile to see where the tunnel's time goes).
func BenchmarkTunnel(b *testing.B) {
	_, addr, fp, _ := newServer(b, ServerConfig{Timeouts: Timeouts{}.withDefaults()})
	for _, w := range []struct {
		name string
		n    int
		bulk bool
	}{{"bulk1", 1, true}, {"bulk16", 16, true}, {"rpc1", 1, false}, {"rpc16", 16, false}} {
		b.Run(w.name, func(b *testing.B) {
			var direct, tunnel benchResult
			for b.Loop() {
				direct.add(b, runBench(b, w.bulk, w.n, func(t *loopback.TCP) loopback.Transport { return t }))
				tunnel.add(b, runBench(b, w.bulk, w.n, func(t *loopback.TCP) loopback.Transport {
					return through{t, tunnelTo(b, addr, fp, t.Addr().String())}
				}))
			}
			direct.report(b, "direct", w.bulk)
			tunnel.report(b, "tunnel", w.bulk)
			b.ReportMetric(tunnel.rate/direct.rate, "ratio")
		})
	}
}

// tunnelTo starts a tunnel client with one -L to target and returns its
// listening address once the session is up; it stops with the benchmark.
func tunnelTo(b *testing.B, server, fp, target string) string {
	cli, lb, r := startClient(b, server, fp, ClientConfig{
		Local:    []Forward{{Bind: "127.0.0.1:0", Target: target}},
		Mux:      &polymux.Config{Protocol: polymux.Yamux},
		Timeouts: Timeouts{}.withDefaults(),
	})
	lb.wait(b, 1, "session up")
	b.Cleanup(func() { r.stop() })
	return cli.Addrs()[0].String()
}

// benchResult sums the runs of one path.
type benchResult struct {
	runs          int
	rate          float64 // MB/s or op/s, summed over runs
	p50, p99      time.Duration
	latencyRounds int
}

// add adds one run; r is a loopback.BulkResult or loopback.RPCResult.
func (s *benchResult) add(b *testing.B, r any) {
	s.runs++
	switch r := r.(type) {
	case loopback.BulkResult:
		s.rate += r.MBps()
	case loopback.RPCResult:
		s.rate += r.OpsPerSec()
		s.p50 += r.Quantile(0.50)
		s.p99 += r.Quantile(0.99)
		s.latencyRounds++
	default:
		b.Fatalf("unexpected result %T", r)
	}
}

// report reports the averages under names prefixed by path.
func (s *benchResult) report(b *testing.B, path string, bulk bool) {
	s.rate /= float64(s.runs)
	if bulk {
		b.ReportMetric(s.rate, path+"-MB/s")
		return
	}
	b.ReportMetric(s.rate, path+"-op/s")
	b.ReportMetric(float64(s.p50)/float64(s.latencyRounds)/1e3, path+"-p50-µs")
	b.ReportMetric(float64(s.p99)/float64(s.latencyRounds)/1e3, path+"-p99-µs")
}

// runBench runs one workload on a fresh loopback TCP listener, reached as
// via makes it.
func runBench(b *testing.B, bulk bool, n int, via func(*loopback.TCP) loopback.Transport) any {
	t, err := loopback.NewTCP()
	if err != nil {
		b.Fatal(err)
	}
	defer t.Close()
	tr := via(t)
	ctx, cancel := context.WithTimeout(context.Background(), benchDuration+30*time.Second)
	defer cancel()
	var r any
	if bulk {
		r, err = loopback.Bulk(ctx, tr, n, 64<<10, benchDuration, nil)
	} else {
		r, err = loopback.RPC(ctx, tr, n, 64, benchDuration, nil)
	}
	if err != nil {
		b.Fatal(fmt.Errorf("%T: %w", tr, err))
	}
	return r
}
