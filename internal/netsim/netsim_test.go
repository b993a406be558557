package netsim

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

func TestBytesArriveInOrderNoEarlierThanTheLatency(t *testing.T) {
	a, b := Pipe(Link{Latency: 30 * time.Millisecond})
	defer a.Close()
	defer b.Close()
	data := bytes.Repeat([]byte("0123456789"), 100000)
	start := time.Now()
	go func() {
		for i := 0; i < len(data); i += 7000 {
			a.Write(data[i:min(i+7000, len(data))])
		}
	}()
	first := make([]byte, 1)
	if _, err := io.ReadFull(b, first); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < 30*time.Millisecond {
		t.Fatalf("first byte after %v, before the 30 ms latency", waited)
	}
	rest := make([]byte, len(data)-1)
	if _, err := io.ReadFull(b, rest); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(append(first, rest...), data) {
		t.Fatal("data reordered or corrupted")
	}
}

func TestWritesArePipelinedNotSerialised(t *testing.T) {
	// With an hour of latency, writes that waited for the link's delay
	// would never return: pipelined, they all complete at once.
	a, b := Pipe(Link{Latency: time.Hour})
	defer a.Close()
	defer b.Close()
	for range 20 {
		if _, err := a.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	b.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if n, err := b.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %d bytes an hour early (%v)", n, err)
	}
}

func TestBandwidthCapsTheRate(t *testing.T) {
	a, b := Pipe(Link{Bandwidth: 10 << 20})
	defer a.Close()
	defer b.Close()
	start := time.Now()
	go a.Write(make([]byte, 1<<20))
	if _, err := io.ReadFull(b, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 90*time.Millisecond {
		t.Fatalf("1 MiB over 10 MiB/s took %v, want about 100 ms", took)
	}
}

func TestBufferBlocksTheWriterUntilTheDeadline(t *testing.T) {
	a, b := Pipe(Link{Buffer: 1000})
	defer a.Close()
	defer b.Close()
	a.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
	n, err := a.Write(make([]byte, 5000))
	if n != 1000 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write past the buffer: n=%d err=%v", n, err)
	}
}

func TestReadDeadlineAndClose(t *testing.T) {
	a, b := Pipe(Link{Latency: time.Millisecond})
	b.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := b.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past deadline: %v", err)
	}
	b.SetReadDeadline(time.Time{})
	a.Write([]byte("bye"))
	a.Close()
	got, err := io.ReadAll(b)
	if err != nil || string(got) != "bye" {
		t.Fatalf("after the peer closed: %q %v", got, err)
	}
	if _, err := a.Write([]byte("x")); err == nil {
		t.Fatal("write after Close succeeded")
	}
	b.Close()
	if _, err := b.Read(make([]byte, 1)); err == nil {
		t.Fatal("read after Close succeeded")
	}
}
