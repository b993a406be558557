package polymux

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/polymux/polymux/internal/loopback"
	"github.com/polymux/polymux/internal/netsim"
)

// windowedProtocols are the protocols with per-stream windows to tune.
var windowedProtocols = []Protocol{Yamux, SmuxV2, MuxadoV2}

// linkPair returns a client and a server session over a simulated link
// with the given round trip and bandwidth (0: no cap), closed at the end.
func linkPair(t testing.TB, rtt time.Duration, bandwidth int64, buffer int, cli, srv *Config) (*Session, *Session) {
	t.Helper()
	c1, c2 := netsim.Pipe(netsim.Link{Latency: rtt / 2, Bandwidth: bandwidth, Buffer: buffer})
	return sessionsOver(t, c1, c2, cli, srv)
}

// pump writes chunks to w until stop is closed or a write fails, then
// half-closes it.
func pump(w *Stream, stop chan struct{}) {
	buf := make([]byte, 64<<10)
	for !isClosed(stop) {
		if _, err := w.Write(buf); err != nil {
			return
		}
	}
	w.CloseWrite()
}

func TestAutoTuningGrowsTheWindowToFillALongLink(t *testing.T) {
	for _, p := range windowedProtocols {
		t.Run(p.String(), func(t *testing.T) {
			checkLeaks(t)
			cfg := &Config{Protocol: p}
			cli, srv := linkPair(t, 50*time.Millisecond, 0, 0, cfg, cfg)
			a, b := openAccept(t, cli, srv)
			stop := make(chan struct{})
			go pump(a, stop)
			defer close(stop)
			// 5 MiB in flight is 20 times the initial window: what a
			// 100 MB/s transfer needs on a 50 ms round trip.
			const want = 20 * protocolWindow
			buf := make([]byte, 64<<10)
			moved := 0
			for b.ReceiveWindow() < want {
				if moved > 1<<30 {
					t.Fatalf("window still %d after %d MiB", b.ReceiveWindow(), moved>>20)
				}
				n, err := b.Read(buf)
				if err != nil {
					t.Fatal(err)
				}
				moved += n
			}
			if w := b.ReceiveWindow(); w > DefaultConfig().MaxStreamWindow {
				t.Fatalf("window %d above MaxStreamWindow", w)
			}
			if used := srv.Stats().BudgetUsed; used > DefaultConfig().MaxSessionBuffer {
				t.Fatalf("budget used %d", used)
			}
			t.Logf("%v: window %d KiB after %d MiB", p, b.ReceiveWindow()>>10, moved>>20)
		})
	}
}

func TestMaxStreamWindowEqualToTheInitialWindowDisablesTuning(t *testing.T) {
	checkLeaks(t)
	cfg := &Config{Protocol: Yamux, MaxStreamWindow: protocolWindow}
	cli, srv := linkPair(t, 20*time.Millisecond, 0, 0, cfg, cfg)
	a, b := openAccept(t, cli, srv)
	stop := make(chan struct{})
	go pump(a, stop)
	defer close(stop)
	if _, err := io.CopyN(io.Discard, b, 16<<20); err != nil {
		t.Fatal(err)
	}
	if w := b.ReceiveWindow(); w != protocolWindow {
		t.Fatalf("window %d with tuning disabled", w)
	}
}

func TestFastStreamsShareTheBudgetAndReturnItOnClose(t *testing.T) {
	for _, p := range windowedProtocols {
		t.Run(p.String(), func(t *testing.T) {
			checkLeaks(t)
			const budget = 2 << 20
			cfg := &Config{Protocol: p, MaxSessionBuffer: budget}
			cli, srv := linkPair(t, 20*time.Millisecond, 0, 0, cfg, cfg)
			var wg sync.WaitGroup
			var over atomic.Int64
			var peers []*Stream
			for range 8 {
				a, b := openAccept(t, cli, srv)
				peers = append(peers, b)
				wg.Add(2)
				go func() {
					defer wg.Done()
					a.Write(make([]byte, 16<<20))
					a.CloseWrite()
				}()
				go func() {
					defer wg.Done()
					buf := make([]byte, 64<<10)
					for {
						if _, err := b.Read(buf); err != nil {
							return
						}
						if used := srv.Stats().BudgetUsed; used > budget {
							over.Store(used)
						}
					}
				}()
			}
			wg.Wait()
			if o := over.Load(); o != 0 {
				t.Fatalf("budget used %d, above MaxSessionBuffer %d", o, budget)
			}
			grown := false
			for _, b := range peers {
				grown = grown || b.ReceiveWindow() > protocolWindow
			}
			if !grown {
				t.Fatal("no window grew: the budget was not shared, it was never used")
			}
			for _, b := range peers {
				b.Close()
			}
			eventually(t, 5*time.Second, "the budget to be returned", func() bool { return srv.Stats().BudgetUsed == 0 })
		})
	}
}

func TestBufferedBytesNeverExceedMaxSessionBuffer(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		const budget = 8 << 20
		cli, srv := e.pair(t, nil, e.cfg(func(c *Config) { c.MaxSessionBuffer = budget; c.AcceptBacklog = 100 }))
		var streams []*Stream
		for range 100 {
			a, _ := openAccept(t, cli, srv)
			streams = append(streams, a)
		}
		var wg sync.WaitGroup
		for _, a := range streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
				a.Write(make([]byte, 1<<20))
			}()
		}
		done := make(chan struct{})
		go func() {
			wg.Wait()
			close(done)
		}()
		for !isClosed(done) {
			st := srv.Stats()
			if st.BufferedBytes > budget || st.BudgetUsed > budget {
				t.Fatalf("buffered %d, budget used %d, MaxSessionBuffer %d", st.BufferedBytes, st.BudgetUsed, budget)
			}
			time.Sleep(time.Millisecond)
		}
		if st := srv.Stats(); st.BufferedBytes > budget || st.BudgetUsed > budget {
			t.Fatalf("buffered %d, budget used %d", st.BufferedBytes, st.BudgetUsed)
		}
	})
}

func TestStreamsWritingAtOnceShareTheLinkEqually(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) {
			checkLeaks(t)
			cfg := &Config{Protocol: p}
			// A 32 MiB/s link with a small buffer: the session's writer,
			// not the link, decides who goes next.
			cli, srv := linkPair(t, 2*time.Millisecond, 32<<20, 128<<10, cfg, cfg)
			const n = 8
			stop := make(chan struct{})
			start := make(chan struct{})
			var got [n]atomic.Int64
			var total atomic.Int64
			var wg sync.WaitGroup
			for i := range n {
				a, b := openAccept(t, cli, srv)
				wg.Add(2)
				go func() {
					defer wg.Done()
					<-start
					pump(a, stop)
				}()
				go func() {
					defer wg.Done()
					buf := make([]byte, 64<<10)
					for {
						k, err := b.Read(buf)
						got[i].Add(int64(k))
						total.Add(int64(k))
						if err != nil {
							return
						}
					}
				}()
			}
			close(start)
			// Measure from when every stream is busy, over about a second
			// of the link's time.
			eventually(t, 30*time.Second, "4 MiB to cross the link", func() bool { return total.Load() >= 4<<20 })
			var base [n]int64
			for i := range got {
				base[i] = got[i].Load()
			}
			from := total.Load()
			eventually(t, 30*time.Second, "32 MiB more to cross the link", func() bool { return total.Load() >= from+32<<20 })
			shares := make([]int64, n)
			var sum int64
			for i := range got {
				shares[i] = got[i].Load() - base[i]
				sum += shares[i]
			}
			close(stop)
			cli.Close()
			wg.Wait()
			lo, hi := slices.Min(shares), slices.Max(shares)
			mean := float64(sum) / n
			t.Logf("%v: per-stream MiB %v, spread %.1f%% of the mean", p, mib(shares), 100*float64(hi-lo)/mean)
			if float64(hi-lo) > 0.10*mean {
				t.Fatalf("shares %v differ by more than 10%% of the mean", mib(shares))
			}
		})
	}
}

func mib(v []int64) []string {
	out := make([]string, len(v))
	for i, x := range v {
		out[i] = fmt.Sprintf("%.2f", float64(x)/(1<<20))
	}
	return out
}

// BenchmarkLongLink moves one stream over a simulated 50 ms round trip with
// no bandwidth cap, with a fixed 256 KiB window and with auto-tuning, in
// the same run.
func BenchmarkLongLink(b *testing.B) {
	for _, p := range windowedProtocols {
		for _, mode := range []string{"fixed", "tuned"} {
			b.Run(p.String()+"/"+mode, func(b *testing.B) {
				cfg := &Config{Protocol: p}
				if mode == "fixed" {
					cfg.MaxStreamWindow = protocolWindow
				}
				cli, srv := linkPair(b, 50*time.Millisecond, 0, 0, cfg, cfg)
				a, r := openAccept(b, cli, srv)
				b.SetBytes(benchChunk)
				b.ResetTimer()
				go func() {
					buf := make([]byte, benchChunk)
					for range b.N {
						if _, err := a.Write(buf); err != nil {
							return
						}
					}
				}()
				if _, err := io.CopyN(io.Discard, r, int64(b.N)*benchChunk); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				b.ReportMetric(float64(r.ReceiveWindow()>>10), "window-KiB")
			})
		}
	}
}

// BenchmarkPingUnderLoad measures Ping round trips while 64 streams move
// bulk data over TCP loopback: pings go ahead of queued data.
func BenchmarkPingUnderLoad(b *testing.B) {
	c1, c2 := loopback.MustTCPPair(b)
	cli, err := Client(c1, nil)
	if err != nil {
		b.Fatal(err)
	}
	srv, err := Server(c2, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	defer cli.Close()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 64 {
		a, r := openAccept(b, cli, srv)
		wg.Add(2)
		go func() {
			defer wg.Done()
			pump(a, stop)
		}()
		go func() {
			defer wg.Done()
			io.Copy(io.Discard, r)
		}()
	}
	time.Sleep(200 * time.Millisecond) // let the transfer reach full speed
	start := srv.Stats().BytesReceived
	t0 := time.Now()
	rtts := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		rtt, err := cli.Ping(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		rtts = append(rtts, rtt)
	}
	b.StopTimer()
	rate := float64(srv.Stats().BytesReceived-start) / time.Since(t0).Seconds()
	close(stop)
	cli.Close()
	wg.Wait()
	slices.Sort(rtts)
	frame := time.Duration(float64(benchChunk) / rate * float64(time.Second))
	b.ReportMetric(float64(rtts[len(rtts)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(rtts[len(rtts)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(frame.Microseconds()), "frame-µs")
	b.ReportMetric(rate/1e6, "bulk-MB/s")
}
