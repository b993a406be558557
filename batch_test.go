package polymux

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/polymux/polymux/internal/loopback"
)

// TestABatchTakesAMiBOfADirectWriteAndAQuarterOfCopies: on a connection
// that takes vectored writes, and that took the last 256 KiB write fast
// enough (see TestOnlyAFastConnectionGetsMiBBatches; here the first batch
// of copied bytes, over loopback, proves that), one batch carries up to
// directBatchBytes of a direct Write's bytes, so that a 1 MiB Write goes
// out in one connection write, but no more than batchBytes of copied
// bytes, which small Writes leave: control frames wait behind those no
// longer than before. On a connection whose batches are staged in one
// buffer (net.Pipe here, TLS in use), direct bytes keep batchBytes too.
// The test holds the writer's turn, as the writer, and fills batches
// itself; then it hands the turn back, and every byte must arrive intact.
func TestABatchTakesAMiBOfADirectWriteAndAQuarterOfCopies(t *testing.T) {
	for _, proto := range []Protocol{Yamux, SmuxV2, MuxadoV2} {
		for _, vectored := range []bool{true, false} {
			name := proto.String() + "/vectored"
			if !vectored {
				name = proto.String() + "/staged"
			}
			t.Run(name, func(t *testing.T) {
				checkLeaks(t)
				testBatchBounds(t, proto, vectored)
			})
		}
	}
}

func testBatchBounds(t *testing.T, proto Protocol, vectored bool) {
	var c1, c2 net.Conn
	if vectored {
		c1, c2 = loopback.MustTCPPair(t)
	} else {
		c1, c2 = net.Pipe()
	}
	cfg := &Config{Protocol: proto, InitialStreamWindow: 4 << 20, MaxStreamWindow: 4 << 20}
	cli, srv := sessionsOver(t, c1, c2, cfg, cfg)
	if cli.w.enc.vectored != vectored {
		t.Fatalf("vectored writes: %v, want %v", cli.w.enc.vectored, vectored)
	}
	direct, directPeer := openAccept(t, cli, srv)
	copied1, copiedPeer1 := openAccept(t, cli, srv)
	copied2, copiedPeer2 := openAccept(t, cli, srv)
	for _, st := range []*Stream{direct, copied1, copied2} {
		eventually(t, 5*time.Second, "the peer's 4 MiB window", func() bool {
			st.mu.Lock()
			defer st.mu.Unlock()
			return st.swin.Avail() >= 2<<20
		})
	}
	w := &cli.w
	handBack := takeWriterTurn(t, cli)

	big := bytes.Repeat([]byte("0123456789abcdef"), (2<<20)/16) // direct: >= directMin
	small := bytes.Repeat([]byte("fedcba9876543210"), (200<<10)/16)
	written := make(chan error, 3)
	go func() { _, err := copied1.Write(small); written <- err }()
	go func() { _, err := copied2.Write(small); written <- err }()
	for range 2 {
		if err := <-written; err != nil { // copied: returns at once
			t.Fatal(err)
		}
	}

	// Copied bytes only: the batch stops at batchBytes.
	w.b.reset()
	w.top()
	checkFill(t, "copied bytes", w.b.dataBytes, batchBytes, cli.frameMax)
	if err := w.flush(); err != nil {
		t.Fatal(err)
	}
	w.b.reset()
	w.top() // the copied bytes left: 2*200 KiB - 256 KiB
	if err := w.flush(); err != nil {
		t.Fatal(err)
	}

	go func() { _, err := direct.Write(big); written <- err }()
	eventually(t, 5*time.Second, "the direct Write to offer its bytes", direct.directPending)
	w.b.reset()
	w.top()
	want := batchBytes
	if vectored {
		want = directBatchBytes
	}
	checkFill(t, "a direct Write's bytes", w.b.dataBytes, want, cli.frameMax)
	if err := w.flush(); err != nil {
		t.Fatal(err)
	}
	if vectored {
		// A link slower than a MiB per quarter of WriteTimeout (10 s):
		// the next batch keeps batchBytes.
		w.enc.noteWrite(batchBytes, time.Now().Add(-2*time.Second))
		w.b.reset()
		w.top()
		checkFill(t, "a direct Write's bytes after a slow write", w.b.dataBytes, batchBytes, cli.frameMax)
		if err := w.flush(); err != nil {
			t.Fatal(err)
		}
	}
	handBack()

	readAll := func(st *Stream, want []byte) {
		t.Helper()
		got := make([]byte, len(want))
		if _, err := io.ReadFull(st, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatal("the bytes read differ from those written")
		}
	}
	readAll(copiedPeer1, small)
	readAll(copiedPeer2, small)
	readAll(directPeer, big)
	if err := <-written; err != nil {
		t.Fatal(err)
	}
}

// checkFill checks that a batch of what carries bound bytes, or less than
// a frame more: the writer takes whole frames until the bound is reached.
func checkFill(t *testing.T, what string, got, bound, frame int) {
	t.Helper()
	if got < bound || got >= bound+frame {
		t.Errorf("a batch of %s carries %d bytes, want %d to %d", what, got, bound, bound+frame-1)
	}
}

// TestOnlyAFastConnectionGetsMiBBatches: the encoder allows batches of
// directBatchBytes only once a write of at least batchBytes went at a rate
// that carries directBatchBytes within a quarter of WriteTimeout, and
// takes that back after a slower one. Small writes say nothing: the
// kernel's buffer takes them at once on any link.
func TestOnlyAFastConnectionGetsMiBBatches(t *testing.T) {
	e := new(encoder)
	e.init(nil, 10*time.Second, nil)
	steps := []struct {
		size int
		took time.Duration
		fast bool
	}{
		{100, 0, false}, // nothing known yet
		{batchBytes, time.Millisecond, true},
		{100, 5 * time.Second, true},                // a small write proves nothing
		{batchBytes, 700 * time.Millisecond, false}, // 1 MiB would take 2.8 s > 2.5 s
		{batchBytes, 600 * time.Millisecond, true},  // 2.4 s
		{directBatchBytes, 3 * time.Second, false},
	}
	for i, st := range steps {
		e.noteWrite(st.size, time.Now().Add(-st.took))
		if e.fast != st.fast {
			t.Errorf("step %d: after %d bytes in %v, fast = %v, want %v", i, st.size, st.took, e.fast, st.fast)
		}
	}
	off := new(encoder)
	off.init(nil, 0, nil)
	off.noteWrite(batchBytes, time.Now().Add(-time.Hour))
	if !off.fast {
		t.Error("with no WriteTimeout, no write is too slow")
	}
}
