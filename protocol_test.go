package polymux

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/polymux/polymux/internal/wire"
)

// expectProtocolClose waits for s to end with ErrProtocol and for the raw
// peer to receive GoAway with the protocol-error code.
func expectProtocolClose(t *testing.T, s *Session, peer *rawPeer) {
	t.Helper()
	f := peer.expect("GoAway(protocol error)", func(f wire.Frame) bool { return f.Type == wire.TypeGoAway })
	if wire.Code(f.Value) != wire.CodeProtocol {
		t.Fatalf("GoAway code %d, want %d", f.Value, wire.CodeProtocol)
	}
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("session still open after a protocol violation")
	}
	if !errors.Is(s.Err(), ErrProtocol) || !errors.Is(s.Err(), ErrSessionClosed) {
		t.Fatalf("Err() = %v, want ErrProtocol", s.Err())
	}
}

func TestYamuxViolationsCloseTheSessionWithGoAwayProtocolError(t *testing.T) {
	syn := func(id uint32) wire.Frame {
		return wire.Frame{Type: wire.TypeWindow, Flags: wire.FlagSYN, Stream: id}
	}
	cases := []struct {
		name string
		run  func(p *rawPeer)
	}{
		{"a bad version byte", func(p *rawPeer) {
			p.sendRaw([]byte{1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0})
		}},
		{"an unknown frame type", func(p *rawPeer) {
			p.sendRaw([]byte{0, 9, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0})
		}},
		{"data beyond the window", func(p *rawPeer) {
			p.send(syn(1), nil)
			p.send(wire.Frame{Type: wire.TypeData, Stream: 1, Length: protocolWindow + 1}, make([]byte, protocolWindow+1))
		}},
		{"a window update that overflows 32 bits", func(p *rawPeer) {
			p.send(syn(1), nil)
			p.send(wire.Frame{Type: wire.TypeWindow, Stream: 1, Value: math.MaxUint32}, nil)
		}},
		{"reuse of a live stream id", func(p *rawPeer) {
			p.send(syn(1), nil)
			p.send(syn(1), nil)
		}},
		{"a stream id of the wrong parity", func(p *rawPeer) {
			p.send(syn(2), nil)
		}},
		{"a stream frame on stream 0", func(p *rawPeer) {
			p.sendRaw([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			checkLeaks(t)
			s, peer := newRawPeer(t, Yamux, true, nil)
			go c.run(peer)
			expectProtocolClose(t, s, peer)
		})
	}
}

func TestYamuxOpensAreAcknowledgedOnAccept(t *testing.T) {
	checkLeaks(t)
	s, peer := newRawPeer(t, Yamux, true, nil)
	peer.send(wire.Frame{Type: wire.TypeWindow, Flags: wire.FlagSYN, Stream: 1}, nil)
	st, err := s.AcceptStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	f := peer.expect("ACK", func(f wire.Frame) bool { return f.Flags&wire.FlagACK != 0 })
	if f.Stream != 1 || f.Type != wire.TypeWindow || f.Value != 0 {
		t.Fatalf("ACK frame %v", f)
	}
	st.Write([]byte("hi"))
	st.CloseWrite()
	f = peer.expect("data", func(f wire.Frame) bool { return f.Type == wire.TypeData })
	if f.Stream != 1 || f.Length != 2 {
		t.Fatalf("data frame %v", f)
	}
	f = peer.expect("FIN", func(f wire.Frame) bool { return f.Flags&wire.FlagFIN != 0 })
	if f.Stream != 1 {
		t.Fatalf("FIN frame %v", f)
	}
}

func TestYamuxPingsAreEchoedWithTheSameOpaqueValue(t *testing.T) {
	checkLeaks(t)
	_, peer := newRawPeer(t, Yamux, true, nil)
	peer.send(wire.Frame{Type: wire.TypePing, Flags: wire.FlagSYN, Value: 0xdeadbeef}, nil)
	f := peer.expect("pong", func(f wire.Frame) bool { return f.Type == wire.TypePing })
	if f.Flags != wire.FlagACK || f.Value != 0xdeadbeef {
		t.Fatalf("pong %v", f)
	}
}

func TestYamuxLargerInitialWindowIsGrantedWithTheOpen(t *testing.T) {
	checkLeaks(t)
	s, peer := newRawPeer(t, Yamux, false, &Config{InitialStreamWindow: 1 << 20})
	if _, err := s.OpenStream(ctx(t)); err != nil {
		t.Fatal(err)
	}
	f := peer.expect("SYN", func(f wire.Frame) bool { return f.Flags&wire.FlagSYN != 0 })
	if f.Stream != 1 || f.Type != wire.TypeWindow || f.Value != 1<<20-protocolWindow {
		t.Fatalf("SYN %v: want stream 1 with a delta of %d", f, 1<<20-protocolWindow)
	}
}

func TestSessionCloseSendsGoAwayNormal(t *testing.T) {
	checkLeaks(t)
	s, peer := newRawPeer(t, Yamux, true, nil)
	go s.Close()
	f := peer.expect("GoAway", func(f wire.Frame) bool { return f.Type == wire.TypeGoAway })
	if f.Value != 0 {
		t.Fatalf("GoAway code %d, want 0", f.Value)
	}
}

func TestStreamIDsRunOutWithErrStreamsExhausted(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		last := e.caps().MaxStreamID // odd: the client's parity
		cli.mu.Lock()
		cli.nextID = last - 2
		cli.mu.Unlock()
		for _, want := range []uint32{last - 2, last} {
			a, b := openAccept(t, cli, srv)
			if a.ID() != want {
				t.Fatalf("opened stream %d, want %d", a.ID(), want)
			}
			if err := roundTripOnce(a, b); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := cli.OpenStream(ctx(t)); !errors.Is(err, ErrStreamsExhausted) {
			t.Fatalf("open past the last id: %v, want ErrStreamsExhausted", err)
		}
	})
}

func TestMuxadoRefusesALazyOpenWithOneReset(t *testing.T) {
	checkLeaks(t)
	s, peer := newRawPeer(t, MuxadoV2, true, &Config{MaxIncomingStreams: 1})
	peer.send(wire.Frame{Type: wire.TypeData, Flags: wire.FlagSYN, Stream: 3, Length: 2}, []byte("hi"))
	if _, err := s.AcceptStream(ctx(t)); err != nil {
		t.Fatal(err)
	}
	// The second open carries data, as muxado's lazy open does: it is
	// refused with exactly one RST (refused), not a second for its data.
	peer.send(wire.Frame{Type: wire.TypeData, Flags: wire.FlagSYN, Stream: 5, Length: 2}, []byte("hi"))
	peer.send(wire.Frame{Type: wire.TypeData, Flags: wire.FlagSYN, Stream: 7, Length: 0}, nil)
	var resets []wire.Frame
	for len(resets) < 2 {
		resets = append(resets, peer.expect("RST", func(f wire.Frame) bool { return f.Flags&wire.FlagRST != 0 }))
	}
	if resets[0].Stream != 5 || wire.Code(resets[0].Value) != wire.CodeRefused || resets[1].Stream != 7 {
		t.Fatalf("resets %v, want one for stream 5 (refused) then one for 7", resets)
	}
}
