package polymux

import (
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// countWrites counts the Writes made to a connection: a connection
// without vectored writes gets one per batch.
type countWrites struct {
	net.Conn
	n atomic.Int64
}

func (c *countWrites) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(p)
}

// A writer goroutine started by a small write lets the goroutines already
// runnable go first, once, and takes what they queue into the same
// connection write: an rpc server's reply and the FIN of the handler
// before it go out together. With one P the order is fixed: the goroutine
// that closes b is runnable when a's Write starts the writer. The scheduler
// takes its global queue first on one turn in 61, so the test tries up to
// three times; without the turn, every try takes two writes.
func TestAWriterStartedBySmallDataTakesWhatRunnableGoroutinesQueue(t *testing.T) {
	for _, proto := range protocols {
		t.Run(proto.String(), func(t *testing.T) {
			checkLeaks(t)
			testCoalesce(t, env{proto: proto})
		})
	}
}

// testCoalesce is the test on one protocol.
func testCoalesce(t *testing.T, e env) {
	c1, c2 := net.Pipe()
	cw := &countWrites{Conn: c1}
	cli, srv := sessionsOver(t, cw, c2, e.cfg(nil), e.cfg(nil))
	var got []int64
	for try := 0; try < 3; try++ {
		a, sa := openAccept(t, cli, srv)
		b, sb := openAccept(t, cli, srv)
		for _, st := range []*Stream{a, b, sa, sb} {
			st.SetDeadline(time.Now().Add(10 * time.Second))
		}
		// Both opens are through; wait for the writer to park.
		if err := roundTripOnce(a, sa); err != nil {
			t.Fatal(err)
		}
		if err := roundTripOnce(b, sb); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "the client's writer to park", func() bool {
			q := &cli.w.sched
			q.mu.Lock()
			defer q.mu.Unlock()
			return !q.running
		})
		before := cw.n.Load()
		prev := runtime.GOMAXPROCS(1)
		closed := make(chan error, 1)
		go func() { closed <- b.Close() }()
		_, err := a.Write([]byte("reply"))
		if err == nil {
			_, err = io.ReadFull(sa, make([]byte, 5))
		}
		if err == nil {
			_, err = sb.Read(make([]byte, 1))
			if err == io.EOF {
				err = nil
			}
		}
		runtime.GOMAXPROCS(prev)
		if err != nil {
			t.Fatal(err)
		}
		if err := <-closed; err != nil {
			t.Fatal(err)
		}
		n := cw.n.Load() - before
		if n == 1 {
			return
		}
		got = append(got, n)
		a.Close()
		sa.Close()
		sb.Close()
	}
	t.Fatalf("a's 5 bytes and b's FIN took %v connection writes in 3 tries, want 1 in one of them", got)
}
