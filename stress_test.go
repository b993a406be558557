package polymux

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/polymux/polymux/internal/loopback"
)

// The behaviours of a stress stream, chosen at random by its opener and
// told to the acceptor in the stream's header.
const (
	stressEcho           = iota // each side sends its data and half-closes
	stressAcceptorFirst         // the acceptor sends and half-closes before reading
	stressOpenerResets          // the opener resets halfway through its data
	stressAcceptorResets        // the acceptor resets after a few bytes
	stressDeadline              // the opener's read deadline passes once, then is cleared
	stressBehaviours
)

const stressHeaderLen = 1 + 8 + 4 + 4

// stressData writes n bytes of the stream seeded by seed to w.
func stressData(w io.Writer, seed uint64, n int) error {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var buf [8 << 10]byte
	for n > 0 {
		k := min(n, len(buf))
		for i := 0; i < k; i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], r.Uint64())
		}
		if _, err := w.Write(buf[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// stressSum is the hash of stressData(seed, n), and of its first bytes.
func stressSum(seed uint64, n int) []byte {
	h := sha256.New()
	stressData(h, seed, n)
	return h.Sum(nil)
}

// stressSize picks a random size: mostly small, sometimes large.
func stressSize(r *rand.Rand) int {
	switch x := r.IntN(100); {
	case x < 50:
		return r.IntN(1 << 10)
	case x < 95:
		return r.IntN(16 << 10)
	default:
		return r.IntN(128 << 10)
	}
}

// hashReader reads st to its end into h (a hash), returning the byte
// count and how the reading ended.
func hashReader(st *Stream, h io.Writer) (int, error) {
	n, err := io.Copy(h, st)
	if err == nil {
		err = io.EOF
	}
	return int(n), err
}

// stressOpen runs the opener's side of one stream.
func stressOpen(s *Session, r *rand.Rand) error {
	st, err := s.OpenStream(context.Background())
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(60 * time.Second))
	defer st.SetDeadline(time.Time{}) // stops the timers
	behaviour := r.IntN(stressBehaviours)
	seed := r.Uint64()
	up, down := stressSize(r), stressSize(r)
	hdr := make([]byte, 0, stressHeaderLen)
	hdr = append(hdr, byte(behaviour))
	hdr = binary.LittleEndian.AppendUint64(hdr, seed)
	hdr = binary.LittleEndian.AppendUint32(hdr, uint32(up))
	hdr = binary.LittleEndian.AppendUint32(hdr, uint32(down))
	if _, err := st.Write(hdr); err != nil {
		return fmt.Errorf("stream %d: header: %w", st.ID(), err)
	}
	resets := s.caps.Reset
	switch behaviour {
	case stressEcho, stressAcceptorFirst, stressDeadline:
		if behaviour == stressDeadline {
			// The acceptor sends nothing before our data ends, which we
			// have not sent yet: the Read can only time out.
			st.SetReadDeadline(time.Now().Add(time.Millisecond))
			if n, err := st.Read(make([]byte, 1)); !errors.Is(err, ErrTimeout) {
				return fmt.Errorf("stream %d: Read past the deadline: %d, %v", st.ID(), n, err)
			}
			st.SetReadDeadline(time.Now().Add(60 * time.Second))
		}
		werr := make(chan error, 1)
		go func() {
			err := stressData(st, seed, up)
			if err == nil {
				err = st.CloseWrite()
			}
			werr <- err
		}()
		h := sha256.New()
		n, err := hashReader(st, h)
		if !errors.Is(err, io.EOF) {
			return fmt.Errorf("stream %d (behaviour %d): read %d of %d bytes: %w", st.ID(), behaviour, n, down, err)
		}
		if !bytes.Equal(h.Sum(nil), stressSum(seed+1, down)) {
			return fmt.Errorf("stream %d (behaviour %d): %d bytes read differ from the %d sent", st.ID(), behaviour, n, down)
		}
		if err := <-werr; err != nil {
			return fmt.Errorf("stream %d: write: %w", st.ID(), err)
		}
	case stressOpenerResets:
		if err := stressData(st, seed, up/2); err != nil {
			return fmt.Errorf("stream %d: write: %w", st.ID(), err)
		}
		st.Reset()
	case stressAcceptorResets:
		// The acceptor resets after the header: our writes may fail, and
		// we read nothing but the reset (or, without RST, an early EOF).
		go func() {
			stressData(st, seed, up)
			st.CloseWrite()
		}()
		n, err := io.Copy(io.Discard, st)
		if n != 0 || (resets && !errors.Is(err, ErrStreamReset)) || (!resets && err != nil) {
			return fmt.Errorf("stream %d: reset by the acceptor: read %d bytes, %v", st.ID(), n, err)
		}
	}
	return nil
}

// stressAccept runs the acceptor's side of one stream.
func stressAccept(st *Stream) error {
	defer st.Close()
	st.SetDeadline(time.Now().Add(60 * time.Second))
	defer st.SetDeadline(time.Time{}) // stops the timers
	hdr := make([]byte, stressHeaderLen)
	if _, err := io.ReadFull(st, hdr); err != nil {
		// The opener reset the stream before its header went out (Reset
		// drops unsent data): without RST that reads as an early EOF.
		if errors.Is(err, ErrStreamReset) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil
		}
		return fmt.Errorf("stream %d: header: %w", st.ID(), err)
	}
	behaviour := int(hdr[0])
	seed := binary.LittleEndian.Uint64(hdr[1:])
	up := int(binary.LittleEndian.Uint32(hdr[9:]))
	down := int(binary.LittleEndian.Uint32(hdr[13:]))
	resets := st.sess.caps.Reset
	switch behaviour {
	case stressDeadline:
		// Read everything first, then answer.
		h := sha256.New()
		n, err := hashReader(st, h)
		if !errors.Is(err, io.EOF) || !bytes.Equal(h.Sum(nil), stressSum(seed, up)) {
			return fmt.Errorf("stream %d: read %d of %d bytes (%v) or they differ", st.ID(), n, up, err)
		}
		if err := stressData(st, seed+1, down); err != nil {
			return err
		}
		return st.CloseWrite()
	case stressEcho:
		werr := make(chan error, 1)
		go func() {
			err := stressData(st, seed+1, down)
			if err == nil {
				err = st.CloseWrite()
			}
			werr <- err
		}()
		h := sha256.New()
		n, err := hashReader(st, h)
		if !errors.Is(err, io.EOF) || !bytes.Equal(h.Sum(nil), stressSum(seed, up)) {
			return fmt.Errorf("stream %d: read %d of %d bytes (%v) or they differ", st.ID(), n, up, err)
		}
		return <-werr
	case stressAcceptorFirst:
		if err := stressData(st, seed+1, down); err != nil {
			return err
		}
		if err := st.CloseWrite(); err != nil {
			return err
		}
		h := sha256.New()
		n, err := hashReader(st, h)
		if !errors.Is(err, io.EOF) || !bytes.Equal(h.Sum(nil), stressSum(seed, up)) {
			return fmt.Errorf("stream %d: read %d of %d bytes (%v) or they differ", st.ID(), n, up, err)
		}
	case stressOpenerResets:
		// A prefix of the data, then the reset (without RST: EOF).
		var got bytes.Buffer
		n, err := hashReader(st, &got)
		if n > up/2 || (resets && !errors.Is(err, ErrStreamReset)) || (!resets && !errors.Is(err, io.EOF)) {
			return fmt.Errorf("stream %d: reset by the opener: read %d of %d bytes, %v", st.ID(), n, up/2, err)
		}
		var want bytes.Buffer
		stressData(&want, seed, up/2)
		if !bytes.Equal(got.Bytes(), want.Bytes()[:n]) {
			return fmt.Errorf("stream %d: the %d bytes before the reset differ from those sent", st.ID(), n)
		}
	case stressAcceptorResets:
		st.Reset()
	default:
		return fmt.Errorf("stream %d: unknown behaviour %d", st.ID(), behaviour)
	}
	return nil
}

func TestStress10000Streams(t *testing.T) {
	// 10,000 streams in all, opened from both ends of one session pair per
	// protocol, all at once over TCP: random sizes, random half-closes,
	// resets from either end and deadlines, every byte verified by hash.
	if testing.Short() {
		t.Skip("stress test")
	}
	checkLeaks(t)
	const total = 10_000
	perSide := total / len(protocols) / 2
	const workers = 16 // concurrent streams per opening side
	var failures atomic.Int64
	fail := func(err error) {
		if failures.Add(1) <= 20 {
			t.Error(err)
		}
	}
	var completed atomic.Int64
	start := time.Now()
	var all sync.WaitGroup
	for pi, proto := range protocols {
		c1, c2 := loopback.MustTCPPair(t)
		cfg := &Config{Protocol: proto}
		cli, err := Client(c1, cfg)
		if err != nil {
			t.Fatal(err)
		}
		srv, err := Server(c2, cfg)
		if err != nil {
			t.Fatal(err)
		}
		sessions := []*Session{cli, srv}
		var waits []func()
		for _, s := range sessions {
			waits = append(waits, serve(s, func(st *Stream) {
				if err := stressAccept(st); err != nil {
					fail(fmt.Errorf("%v accept: %w", proto, err))
				}
			}))
		}
		var openers sync.WaitGroup
		for si, s := range sessions {
			var next atomic.Int64
			for w := range workers {
				openers.Add(1)
				go func() {
					defer openers.Done()
					r := rand.New(rand.NewPCG(uint64(pi), uint64(si*workers+w)))
					for next.Add(1) <= int64(perSide) {
						if err := stressOpen(s, r); err != nil {
							fail(fmt.Errorf("%v open: %w", proto, err))
						}
						completed.Add(1)
					}
				}()
			}
		}
		all.Add(1)
		go func() {
			defer all.Done()
			openers.Wait()
			// Every stream ends and is forgotten on both sides.
			deadline := time.Now().Add(30 * time.Second)
			for cli.NumStreams()+srv.NumStreams() > 0 {
				if time.Now().After(deadline) {
					fail(fmt.Errorf("%v: %d and %d streams still open after the test", proto, cli.NumStreams(), srv.NumStreams()))
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			cli.Close()
			srv.Close()
			for _, w := range waits {
				w()
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		all.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(4 * time.Minute):
		t.Fatalf("%d of %d streams done after 4 minutes", completed.Load(), total)
	}
	t.Logf("%d streams in %v, %d failures", completed.Load(), time.Since(start).Round(time.Millisecond), failures.Load())
	if completed.Load() != total {
		t.Fatalf("%d of %d streams ran", completed.Load(), total)
	}
}
