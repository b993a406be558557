package polymux

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"

	"github.com/polymux/polymux/internal/loopback"
)

// benchChunk is the size of one Write in the long-link and
// ping-under-load benchmarks: one full frame of the default MaxFrameSize.
const benchChunk = 64 << 10

// benchWrites are the sizes of one Write in the throughput benchmarks,
// the same for raw TCP and polymux.
var benchWrites = []int{32 << 10, 1 << 20}

// BenchmarkThroughput moves b.N writes over TCP loopback, on raw TCP
// connections (one per stream) and on polymux streams of one session in
// every protocol, in the same run so they can be compared as ratios. With
// several streams, tcp1conn moves the same bytes over one raw connection
// in 1 MiB writes, with no framing: what one connection carries here, the
// ceiling for a multiplexer's ratio to N connections.
func BenchmarkThroughput(b *testing.B) {
	for _, streams := range []int{1, 16} {
		for _, size := range benchWrites {
			name := fmt.Sprintf("streams=%d/write=%dKiB", streams, size>>10)
			b.Run(name+"/tcp", func(b *testing.B) {
				pairs := make([][2]net.Conn, streams)
				for i := range pairs {
					c1, c2 := loopback.MustTCPPair(b)
					pairs[i] = [2]net.Conn{c1, c2}
				}
				benchMove(b, pairs, size, func() {
					for _, p := range pairs {
						p[0].Close()
						p[1].Close()
					}
				})
			})
			if streams > 1 {
				// One connection, in writes of the largest batch polymux
				// makes.
				b.Run(name+"/tcp1conn", func(b *testing.B) {
					c1, c2 := loopback.MustTCPPair(b)
					b.SetBytes(int64(size))
					b.ReportAllocs()
					pair := [][2]net.Conn{{c1, c2}}
					total := b.N * size
					move(pair, 4, directBatchBytes)
					b.ResetTimer()
					move(pair, total/directBatchBytes, directBatchBytes)
					if rest := total % directBatchBytes; rest > 0 {
						move(pair, 1, rest)
					}
					b.StopTimer()
					c1.Close()
					c2.Close()
				})
			}
			for _, proto := range protocols {
				b.Run(name+"/"+proto.String(), func(b *testing.B) {
					c1, c2 := loopback.MustTCPPair(b)
					cfg := &Config{Protocol: proto}
					cli, err := Client(c1, cfg)
					if err != nil {
						b.Fatal(err)
					}
					srv, err := Server(c2, cfg)
					if err != nil {
						b.Fatal(err)
					}
					pairs := make([][2]net.Conn, streams)
					for i := range pairs {
						a, err := cli.OpenStream(context.Background())
						if err != nil {
							b.Fatal(err)
						}
						a.Write([]byte{0}) // muxado opens lazily
						s, err := srv.AcceptStream(context.Background())
						if err != nil {
							b.Fatal(err)
						}
						s.Read(make([]byte, 1))
						pairs[i] = [2]net.Conn{a, s}
					}
					benchMove(b, pairs, size, func() {
						cli.Close()
						srv.Close()
					})
					// How far the readers fell behind: smux v1 has no
					// windows, so only the read loop's yield bounds it.
					b.ReportMetric(float64(srv.Stats().BufferedPeak)/(1<<20), "peak-MiB-buffered")
				})
			}
		}
	}
}

// benchMove writes b.N chunks spread over the pairs (first end writes,
// second end reads) and waits until every byte was read.
func benchMove(b *testing.B, pairs [][2]net.Conn, size int, closeAll func()) {
	b.SetBytes(int64(size))
	b.ReportAllocs()
	// Warm up buffers and pools so the measurement sees the steady state.
	move(pairs, 4*len(pairs), size)
	b.ResetTimer()
	move(pairs, b.N, size)
	b.StopTimer()
	closeAll()
}

// move sends n writes of size over the pairs and waits for them to be read.
func move(pairs [][2]net.Conn, n, size int) {
	var wg sync.WaitGroup
	for i, p := range pairs {
		count := n / len(pairs)
		if i < n%len(pairs) {
			count++
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			buf := make([]byte, size)
			for range count {
				if _, err := p[0].Write(buf); err != nil {
					panic(err)
				}
			}
		}()
		go func() {
			defer wg.Done()
			buf := make([]byte, size)
			for left := count * size; left > 0; {
				k, err := p[1].Read(buf[:min(len(buf), left)])
				if err != nil {
					panic(err)
				}
				left -= k
			}
		}()
	}
	wg.Wait()
}
