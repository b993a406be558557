package loopback

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func TestTCPPairCarriesBothWays(t *testing.T) {
	c, s := MustTCPPair(t)
	defer c.Close()
	defer s.Close()
	if ip := c.RemoteAddr().(*net.TCPAddr).IP; !ip.IsLoopback() {
		t.Errorf("pair is on %v, not loopback", ip)
	}
	for _, dir := range []struct{ w, r net.Conn }{{c, s}, {s, c}} {
		go dir.w.Write([]byte("ping"))
		buf := make([]byte, 4)
		if _, err := io.ReadFull(dir.r, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("read %q, %v", buf, err)
		}
	}
}

func TestBulkOverTCPMovesBytesAndEnds(t *testing.T) {
	tt := newTCP(t)
	r, err := Bulk(context.Background(), tt, 4, 1000, 100*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Bytes <= 0 || r.Elapsed < 100*time.Millisecond || r.MBps() <= 0 {
		t.Errorf("result %+v", r)
	}
	if n := tt.open(); n != 0 {
		t.Errorf("%d connections left open", n)
	}
}

func TestRPCOverTCPCountsEveryCall(t *testing.T) {
	tt := newTCP(t)
	r, err := RPC(context.Background(), tt, 4, 64, 100*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Ops() == 0 || r.OpsPerSec() <= 0 || r.Quantile(0.5) <= 0 || r.Quantile(0.99) < r.Quantile(0.5) {
		t.Errorf("result: %d ops, %.0f op/s, p50 %v, p99 %v", r.Ops(), r.OpsPerSec(), r.Quantile(0.5), r.Quantile(0.99))
	}
}

// silent is a transport whose accepting end never sees a connection: what
// is opened goes nowhere, so every workload on it blocks until its context
// ends.
type silent struct{ *TCP }

func (s silent) Accept(ctx context.Context) (Conn, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func TestWorkloadsReturnOnceTheirContextEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(ctx context.Context, t Transport) error
	}{
		{"bulk", func(ctx context.Context, t Transport) error {
			_, err := Bulk(ctx, t, 2, 1<<20, time.Minute, nil)
			return err
		}},
		{"rpc", func(ctx context.Context, t Transport) error {
			_, err := RPC(ctx, t, 2, 64, time.Minute, nil)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := tc.run(ctx, silent{newTCP(t)})
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("err = %v, want the context's", err)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("returned %v after its context ended", took)
			}
		})
	}
}

func TestTCPCloseEndsOpenConnections(t *testing.T) {
	tt := newTCP(t)
	c, err := tt.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s, err := tt.Accept(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tt.Close()
	if _, err := s.Read(make([]byte, 1)); err == nil {
		t.Error("Read on an accepted connection succeeded after Close")
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Error("Write on an opened connection succeeded after Close")
	}
	if _, err := tt.Open(context.Background()); err == nil {
		t.Error("Open succeeded after Close")
	}
}

// newTCP is NewTCP, closed when the test ends.
func newTCP(t *testing.T) *TCP {
	tt, err := NewTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tt.Close() })
	return tt
}

// open is how many connections t still holds.
func (t *TCP) open() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}
