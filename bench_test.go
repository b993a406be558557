package polymux

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"

	"github.com/polymux/polymux/internal/loopback"
)

// benchChunk is the size of one Write in the throughput benchmarks: one
// full frame of the default MaxFrameSize.
const benchChunk = 64 << 10

// BenchmarkThroughput moves b.N chunks of 64 KiB over TCP loopback, on raw
// TCP connections and on polymux streams of one session, in the same run so
// the two can be compared as a ratio.
func BenchmarkThroughput(b *testing.B) {
	for _, streams := range []int{1, 16} {
		b.Run(fmt.Sprintf("streams=%d/tcp", streams), func(b *testing.B) {
			pairs := make([][2]net.Conn, streams)
			for i := range pairs {
				c1, c2 := loopback.MustTCPPair(b)
				pairs[i] = [2]net.Conn{c1, c2}
			}
			benchMove(b, pairs, func() {
				for _, p := range pairs {
					p[0].Close()
					p[1].Close()
				}
			})
		})
		b.Run(fmt.Sprintf("streams=%d/polymux", streams), func(b *testing.B) {
			c1, c2 := loopback.MustTCPPair(b)
			cli, err := Client(c1, nil)
			if err != nil {
				b.Fatal(err)
			}
			srv, err := Server(c2, nil)
			if err != nil {
				b.Fatal(err)
			}
			pairs := make([][2]net.Conn, streams)
			for i := range pairs {
				a, err := cli.OpenStream(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				s, err := srv.AcceptStream(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				pairs[i] = [2]net.Conn{a, s}
			}
			benchMove(b, pairs, func() {
				cli.Close()
				srv.Close()
			})
		})
	}
}

// benchMove writes b.N chunks spread over the pairs (first end writes,
// second end reads) and waits until every byte was read.
func benchMove(b *testing.B, pairs [][2]net.Conn, closeAll func()) {
	b.SetBytes(benchChunk)
	b.ReportAllocs()
	// Warm up buffers and pools so the measurement sees the steady state.
	move(pairs, 4*len(pairs))
	b.ResetTimer()
	move(pairs, b.N)
	b.StopTimer()
	closeAll()
}

// move sends n chunks over the pairs and waits for them to be read.
func move(pairs [][2]net.Conn, n int) {
	var wg sync.WaitGroup
	for i, p := range pairs {
		count := n / len(pairs)
		if i < n%len(pairs) {
			count++
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			buf := make([]byte, benchChunk)
			for range count {
				if _, err := p[0].Write(buf); err != nil {
					panic(err)
				}
			}
		}()
		go func() {
			defer wg.Done()
			buf := make([]byte, benchChunk)
			for left := count * benchChunk; left > 0; {
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
