package polymux

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/polymux/polymux/internal/wire"
)

func TestResetWithErrorCarriesItsCodeToThePeer(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		a, b := openAccept(t, cli, srv)
		if err := a.ResetWithError(42); err != nil {
			t.Fatal(err)
		}
		b.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := b.Read(make([]byte, 1))
		if !e.caps().Reset {
			// smux: no codes, and a reset is a FIN.
			if err != io.EOF {
				t.Fatalf("the peer's Read: %v, want io.EOF", err)
			}
			return
		}
		var se *StreamError
		if !errors.As(err, &se) || se.Code != 42 || !se.Remote || !errors.Is(err, ErrStreamReset) {
			t.Fatalf("the peer's Read: %v, want a remote StreamError with code 42", err)
		}
		_, err = a.Write([]byte("x"))
		if !errors.As(err, &se) || se.Code != 42 || se.Remote {
			t.Fatalf("this side's Write: %v, want a local StreamError with code 42", err)
		}
	})
}

func TestCloseWithErrorCarriesItsCodeToThePeer(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		_, b := openAccept(t, cli, srv)
		if err := cli.CloseWithError(7); err != nil {
			t.Fatal(err)
		}
		b.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := b.Read(make([]byte, 1))
		if !errors.Is(err, ErrSessionClosed) {
			t.Fatalf("the peer's Read: %v, want ErrSessionClosed", err)
		}
		var se *SessionError
		if !e.caps().GoAway {
			if errors.As(err, &se) {
				t.Fatalf("smux carried a code: %v", err)
			}
			return
		}
		if !errors.As(err, &se) || se.Code != 7 || !se.Remote || !errors.Is(err, ErrGoAway) {
			t.Fatalf("the peer's Read: %v, want a remote SessionError with code 7", err)
		}
		if err := cli.Err(); !errors.As(err, &se) || se.Code != 7 || se.Remote || errors.Is(err, ErrGoAway) {
			t.Fatalf("this side's Err: %v, want a local SessionError with code 7", err)
		}
	})
}

func TestAStreamRefusalMatchesBothRefusedAndReset(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		if !e.caps().Reset {
			t.Skip("smux cannot refuse a stream")
		}
		cli, srv := e.pair(t, nil, e.cfg(func(c *Config) { c.MaxIncomingStreams = 1 }))
		openAccept(t, cli, srv)
		st, err := cli.OpenStream(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		st.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = st.Read(make([]byte, 1))
		var se *StreamError
		if !errors.Is(err, ErrStreamRefused) || !errors.Is(err, ErrStreamReset) || !errors.As(err, &se) || !se.Remote {
			t.Fatalf("Read of a refused stream: %v", err)
		}
		// yamux codes belong to the application: a refusal polymux makes
		// carries 0; muxado's own codes say why.
		want := uint32(0)
		if e.caps().ReasonCodes {
			want = uint32(wire.CodeRefused)
		}
		if se.Code != want {
			t.Fatalf("refusal code %d, want %d", se.Code, want)
		}
	})
}

func TestYamuxCodesOnTheWireAreWhereGoYamuxPutsThem(t *testing.T) {
	// go-yamux v5: a stream's code in the length field of a window update
	// with RST, a session's in the GoAway's; a received code is the
	// application's, even where it equals one of muxado's refusal codes.
	checkLeaks(t)
	s, p := newRawPeer(t, Yamux, true, nil)
	id, st := openFirstStream(t, p, s)
	if err := st.ResetWithError(0x2A); err != nil {
		t.Fatal(err)
	}
	f := p.expect("RST", func(f wire.Frame) bool { return f.Flags&wire.FlagRST != 0 })
	got, _ := p.codec.AppendFrame(nil, f)
	want := binary.BigEndian.AppendUint32([]byte{0, 1, 0, 8}, id)
	want = binary.BigEndian.AppendUint32(want, 0x2A)
	if !bytes.Equal(got, want) {
		t.Fatalf("RST on the wire % x, want % x", got, want)
	}
	// The peer resets its second stream with code 5: a reset, not a
	// refusal (the stream was acknowledged).
	id2 := p.clientID(1)
	if err := p.send(synFrame(id2), nil); err != nil {
		t.Fatal(err)
	}
	st2, err := s.AcceptStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.send(wire.Frame{Type: wire.TypeWindow, Flags: wire.FlagRST, Stream: id2, Value: 5}, nil); err != nil {
		t.Fatal(err)
	}
	st2.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = st2.Read(make([]byte, 1))
	var se *StreamError
	if !errors.As(err, &se) || se.Code != 5 || errors.Is(err, ErrStreamRefused) {
		t.Fatalf("a reset with code 5: %v, want a StreamError with code 5 that is no refusal", err)
	}
	closed := make(chan error, 1)
	go func() { closed <- s.CloseWithError(0x1234) }()
	f = p.expect("GoAway", func(f wire.Frame) bool { return f.Type == wire.TypeGoAway })
	got, _ = p.codec.AppendFrame(nil, f)
	if want := []byte{0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34}; !bytes.Equal(got, want) {
		t.Fatalf("GoAway on the wire % x, want % x", got, want)
	}
	go p.drain()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

// resetWrites is a connection whose writes, once armed, fail as a write
// to a peer that closed with our bytes unread does: with ECONNRESET.
type resetWrites struct {
	net.Conn
	armed  atomic.Bool
	failed chan struct{} // closed at the first failed write
	once   sync.Once
}

func (c *resetWrites) Write(p []byte) (int, error) {
	if c.armed.Load() {
		c.once.Do(func() { close(c.failed) })
		return 0, &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.ECONNRESET)}
	}
	return c.Conn.Write(p)
}

// A peer that sends GoAway with a code and closes its connection with our
// bytes unread resets it, and a write of ours can fail on that reset before
// the read loop reads the GoAway (the interop suite met this with
// go-yamux's CloseWithError). The GoAway, read after the failed write,
// still gives the session and its streams their error: the peer's code,
// not the reset.
func TestAGoAwayReadAfterAResetWriteGivesTheSessionItsCode(t *testing.T) {
	for _, proto := range []Protocol{Yamux, MuxadoV2} {
		t.Run(proto.String(), func(t *testing.T) {
			checkLeaks(t)
			const code = 0xdead_beef
			c1, c2 := net.Pipe()
			conn := &resetWrites{Conn: c1, failed: make(chan struct{})}
			s, err := Server(conn, &Config{Protocol: proto})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			defer c2.Close()
			codec, err := codecFor(proto)
			if err != nil {
				t.Fatal(err)
			}
			p := &rawPeer{t: t, conn: c2, codec: codec, br: bufio.NewReader(c2)}
			id := p.clientID(0)
			syn := synFrame(id)
			syn.Type, syn.Length = wire.TypeData, 2
			if err := p.send(syn, []byte("hi")); err != nil {
				t.Fatal(err)
			}
			st, err := s.AcceptStream(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			st.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(st, make([]byte, 2)); err != nil {
				t.Fatal(err)
			}
			// The session's replies so far (yamux's ACK) reach the peer;
			// after that the peer reads nothing, as one that closed.
			if proto == Yamux {
				p.expect("ACK", func(f wire.Frame) bool { return f.Flags&wire.FlagACK != 0 })
			}
			conn.armed.Store(true)
			if _, err := st.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			within(t, 5*time.Second, "the write to fail", func() { <-conn.failed })
			eventually(t, 5*time.Second, "the session to end on the failed write", func() bool {
				return errors.Is(s.Err(), syscall.ECONNRESET)
			})
			if err := p.send(wire.Frame{Type: wire.TypeGoAway, Value: code}, nil); err != nil {
				t.Fatal(err)
			}
			c2.Close()
			_, err = st.Read(make([]byte, 1))
			var se *SessionError
			if !errors.As(err, &se) || se.Code != code || !se.Remote || !errors.Is(err, ErrGoAway) || !errors.Is(err, ErrSessionClosed) {
				t.Fatalf("Read after the peer's GoAway: %v, want a remote SessionError with code %#x", err, code)
			}
			within(t, 5*time.Second, "the session to end", func() { <-s.Done() })
			if err := s.Err(); !errors.As(err, &se) || se.Code != code || !se.Remote {
				t.Fatalf("Session.Err: %v, want a remote SessionError with code %#x", err, code)
			}
		})
	}
}
