package polymux

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// readAllIn reads st to EOF with reads of at most chunk bytes, and sends
// what it read (or the error) on the returned channel.
func readAllIn(st *Stream, chunk int) <-chan []byte {
	out := make(chan []byte, 1)
	go func() {
		var got bytes.Buffer
		buf := make([]byte, chunk)
		for {
			n, err := st.Read(buf)
			got.Write(buf[:n])
			if err != nil {
				if err != io.EOF {
					got.WriteString(fmt.Sprintf("\n[read error: %v]", err))
				}
				out <- got.Bytes()
				return
			}
		}
	}()
	return out
}

// Writes on both sides of directMin, on two streams at once, so that the
// Write writing the connection itself carries the other stream's frames
// too, arrive whole and in order.
func TestWritesOfEverySizeArriveInOrder(t *testing.T) {
	sizes := []int{1, 100, directMin - 1, directMin, directMin + 1, 100 << 10, 1<<20 + 7, 3 << 20, 5}
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		var wg sync.WaitGroup
		for s := range 2 {
			a, b := openAccept(t, cli, srv)
			var want bytes.Buffer
			for i := range 3 {
				for _, n := range sizes {
					want.Write(randomBytes(n + s + i))
				}
			}
			got := readAllIn(b, 7000+s*25000) // reads smaller and larger than the writes
			wg.Add(1)
			go func() {
				defer wg.Done()
				data, off := want.Bytes(), 0
				for i := range 3 {
					for _, n := range sizes {
						n += s + i
						if k, err := a.Write(data[off : off+n]); k != n || err != nil {
							t.Errorf("stream %d: Write(%d bytes) = %d, %v", a.ID(), n, k, err)
							return
						}
						off += n
					}
				}
				a.CloseWrite()
				if g := <-got; !bytes.Equal(g, data) {
					t.Errorf("stream %d: read %d bytes, want %d, equal prefix %d", a.ID(), len(g), len(data), commonPrefix(g, data))
				}
			}()
		}
		within(t, 60*time.Second, "the writes and reads", wg.Wait)
	})
}

// commonPrefix is the length of the longest common prefix of a and b.
func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// A Write cut short by its deadline, or by Close from another goroutine,
// reports exactly the bytes the peer gets: retrying p[n:] each time, the
// peer reads the source once, in order, with nothing lost or repeated.
func TestInterruptedWritesReportExactlyWhatArrives(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		a, b := openAccept(t, cli, srv)
		src := randomBytes(48 << 20)
		got := readAllIn(b, 1500) // a slow reader: windows run out
		rng := rand.New(rand.NewPCG(1, uint64(e.proto)))
		pos, timeouts := 0, 0
		for round := 0; round < 200 && pos < len(src)-(8<<20); round++ {
			size := 1<<10 + rng.IntN(2<<20)
			a.SetWriteDeadline(time.Now().Add(time.Duration(rng.IntN(3000)) * time.Microsecond))
			n, err := a.Write(src[pos : pos+size])
			pos += n
			switch {
			case errors.Is(err, ErrTimeout):
				timeouts++
			case err != nil:
				t.Fatalf("round %d: Write = %d, %v", round, n, err)
			case n != size:
				t.Fatalf("round %d: Write = %d of %d with no error", round, n, size)
			}
		}
		if timeouts == 0 {
			t.Fatalf("no Write reached its deadline")
		}
		// The last Write ends by Close, from another goroutine, once it is
		// under way.
		a.SetWriteDeadline(time.Time{})
		wrote := make(chan int)
		go func() {
			n, err := a.Write(src[pos:])
			if err != nil && !errors.Is(err, ErrStreamClosed) {
				t.Errorf("the last Write: %d, %v", n, err)
			}
			wrote <- n
		}()
		eventually(t, 10*time.Second, "the last Write under way", func() bool {
			return a.Session().Stats().BytesSent > uint64(pos)
		})
		a.Close()
		pos += <-wrote
		var g []byte
		within(t, 60*time.Second, "the reader reaching EOF", func() { g = <-got })
		if !bytes.Equal(g, src[:pos]) {
			t.Fatalf("the peer read %d bytes, want %d (%d timeouts), equal prefix %d", len(g), pos, timeouts, commonPrefix(g, src))
		}
	})
}
