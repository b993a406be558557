package polymux

import (
	"testing"

	"github.com/polymux/polymux/internal/wire"
)

// TestAGoAwayGoesOutBeforeDataWrittenAfterIt: bytes written after GoAway
// returned never reach the wire before the GoAway, even when the writer
// had already taken the session's own frames for the batch it was filling
// as the GoAway was queued. A peer that reads the reply to such a Write
// then knows it may open no more streams. (Seen once in interop, under
// -race: "ngrok/muxado opened a stream after polymux's GoAway".) The test
// stands in for the writer at that point: it holds the writer's turn,
// takes the session's frames, lets GoAway and a Write in, and fills the
// rest of the batch as the writer would.
func TestAGoAwayGoesOutBeforeDataWrittenAfterIt(t *testing.T) {
	for _, proto := range []Protocol{Yamux, MuxadoV2} {
		t.Run(proto.String(), func(t *testing.T) {
			s, p := newRawPeer(t, proto, false, nil)
			st, err := s.OpenStream(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if _, err := st.Write([]byte("before")); err != nil {
				t.Fatal(err)
			}
			p.expect("the first bytes", func(f wire.Frame) bool { return f.Type == wire.TypeData && f.Length > 0 })
			q, w := &s.w.sched, &s.w
			handBack := takeWriterTurn(t, s)

			// The peer reads on: a pipe write waits for its reader.
			type arrival struct {
				goneAway bool
				payload  string
				err      error
			}
			got := make(chan arrival, 1)
			go func() {
				goneAway := false
				for {
					f, payload, err := p.next()
					switch {
					case err != nil:
						got <- arrival{err: err}
						return
					case f.Type == wire.TypeGoAway:
						goneAway = true
					case f.Type == wire.TypeData && f.Length > 0:
						got <- arrival{goneAway: goneAway, payload: string(payload)}
						return
					}
				}
			}()

			w.b.reset()
			q.sessionFrames(&w.b) // nothing is queued yet
			if err := s.GoAway(); err != nil {
				t.Error(err)
			}
			if _, err := st.Write([]byte("after")); err != nil {
				t.Error(err)
			}
			for w.b.room(5) {
				next := q.nextData()
				if next == nil {
					break
				}
				next.popData(&w.b, s.frameMax, true)
			}
			if w.b.dataBytes != 0 {
				t.Errorf("a batch whose session frames were taken before GoAway took %d bytes written after it", w.b.dataBytes)
			}
			if w.b.frames > 0 {
				if err := w.flush(); err != nil {
					t.Error(err)
				}
			}
			handBack()

			a := <-got
			p.drain() // so that Close's own frames do not wait on the pipe
			switch {
			case a.err != nil:
				t.Fatalf("waiting for the bytes written after GoAway: %v", a.err)
			case !a.goneAway:
				t.Fatalf("%q, written after GoAway returned, arrived before the GoAway", a.payload)
			case a.payload != "after":
				t.Fatalf("data %q, want %q", a.payload, "after")
			}
		})
	}
}
