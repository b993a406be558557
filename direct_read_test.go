package polymux

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"testing"
	"time"
)

// forEachRawStream runs f, for every protocol, on a stream a raw peer p
// opened (id) to a session s of a hostile-peer server, accepted as st.
func forEachRawStream(t *testing.T, f func(t *testing.T, p *rawPeer, s *Session, id uint32, st *Stream)) {
	for _, proto := range protocols {
		t.Run(proto.String(), func(t *testing.T) {
			h := newHostileServer(t, nil)
			p, s := h.dialRaw(proto)
			id, st := openFirstStream(t, p, s)
			f(t, p, s, id, st)
		})
	}
}

// offered reports whether a Read waits on st with its buffer offered to
// the read loop.
func offered(st *Stream) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.dr != nil
}

// Reads of every size, waiting while writes of every size arrive, so that
// payloads go straight into the waiting Read's buffer, into the queue when
// they do not fit, and both in turn: every byte arrives once, in order.
func TestReadsOfEverySizeGetTheBytesInOrder(t *testing.T) {
	writes := []int{1, 100, 5000, 64 << 10, 300 << 10, 17, 1<<20 + 3}
	reads := []int{1, 10, 4096, 70000, 1 << 20, 3}
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		a, b := openAccept(t, cli, srv)
		var want bytes.Buffer
		for i := range 3 {
			for _, n := range writes {
				want.Write(randomBytes(n + i))
			}
		}
		errc := make(chan error, 1)
		go func() {
			data := want.Bytes()
			for i := range 3 {
				for _, n := range writes {
					n += i
					if _, err := a.Write(data[:n]); err != nil {
						errc <- err
						return
					}
					data = data[n:]
				}
			}
			errc <- a.CloseWrite()
		}()
		var got bytes.Buffer
		for i := 0; ; i++ {
			buf := make([]byte, reads[i%len(reads)])
			n, err := b.Read(buf)
			got.Write(buf[:n])
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("read %d: %v", i, err)
			}
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("read %d bytes that differ from the %d written", got.Len(), want.Len())
		}
	})
}

// A whole payload that arrives while a Read waits with room goes straight
// into the Read's buffer: it is never held in the stream's buffer, so the
// session's BufferedPeak stays 0.
func TestAWaitingReadGetsAWholePayloadDirectly(t *testing.T) {
	forEachRawStream(t, func(t *testing.T, p *rawPeer, s *Session, id uint32, st *Stream) {
		payload := randomBytes(20 << 10)
		done := make(chan []byte, 1)
		go func() {
			buf := make([]byte, 64<<10)
			n, _ := st.Read(buf)
			done <- buf[:n]
		}()
		eventually(t, 5*time.Second, "the Read to offer its buffer", func() bool { return offered(st) })
		if err := p.sendRaw(append(p.encode(nil, dataFrame(id, len(payload))), payload...)); err != nil {
			t.Fatal(err)
		}
		if got := <-done; !bytes.Equal(got, payload) {
			t.Fatalf("the Read got %d bytes that are not the %d sent", len(got), len(payload))
		}
		if peak := s.Stats().BufferedPeak; peak != 0 {
			t.Fatalf("the payload went through the stream's buffer (BufferedPeak %d)", peak)
		}
	})
}

// A peer sends a DATA header and part of its payload, then stalls. The
// Read waiting with room for it still ends at its deadline, with nothing:
// the read loop reads straight into a Read's buffer only bytes already
// received. Once the rest arrives the payload is read whole.
func TestAStalledPayloadLeavesAWaitingReadItsDeadline(t *testing.T) {
	forEachRawStream(t, func(t *testing.T, p *rawPeer, _ *Session, id uint32, st *Stream) {
		payload := randomBytes(1000)
		frame := p.encode(nil, dataFrame(id, len(payload)))
		type result struct {
			n   int
			err error
		}
		done := make(chan result, 1)
		buf := make([]byte, 4096)
		st.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		go func() {
			n, err := st.Read(buf)
			done <- result{n, err}
		}()
		eventually(t, 5*time.Second, "the Read to offer its buffer", func() bool { return offered(st) })
		if err := p.sendRaw(append(frame, payload[:10]...)); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-done:
			if r.n != 0 || !errors.Is(r.err, ErrTimeout) {
				t.Fatalf("Read = %d, %v; want 0 and a timeout", r.n, r.err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the Read outlived its deadline by 10 s while the payload stalled")
		}
		if err := p.sendRaw(payload[10:]); err != nil {
			t.Fatal(err)
		}
		st.SetReadDeadline(time.Time{})
		got := make([]byte, len(payload))
		if _, err := io.ReadFull(st, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatal("the payload arrived changed")
		}
	})
}

// Two Reads wait on one stream at once, one of them with its buffer
// offered: between them they read every byte, and each Read returns a
// run of consecutive bytes.
func TestConcurrentReadsShareAStream(t *testing.T) {
	const total = 4 << 20
	pattern := func(i int) byte { return byte(i % 251) }
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		a, b := openAccept(t, cli, srv)
		go func() {
			data := make([]byte, total)
			for i := range data {
				data[i] = pattern(i)
			}
			for len(data) > 0 {
				n := min(len(data), 48<<10)
				if _, err := a.Write(data[:n]); err != nil {
					return
				}
				data = data[n:]
			}
			a.CloseWrite()
		}()
		var wg sync.WaitGroup
		counts := make([]int, 2)
		errs := make([]error, 2)
		for r, size := range []int{1000, 200 << 10} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, size)
				for {
					n, err := b.Read(buf)
					for i := 1; i < n; i++ {
						if buf[i] != byte((int(buf[i-1])+1)%251) {
							errs[r] = errors.New("a Read returned bytes that do not follow each other")
							return
						}
					}
					counts[r] += n
					if err == io.EOF {
						return
					}
					if err != nil {
						errs[r] = err
						return
					}
				}
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if got := counts[0] + counts[1]; got != total {
			t.Fatalf("the Reads got %d bytes (%d and %d), want %d", got, counts[0], counts[1], total)
		}
	})
}
