package polymuxp2p

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

func TestCloseReadInterruptsReadWithAnErrorThatIsNotEOF(t *testing.T) {
	srv, cli := muxPair(t, DefaultTransport, DefaultTransport, nil, nil, 0)
	a, _ := opened(t, cli, srv)
	a.SetReadDeadline(time.Now().Add(testTimeout))
	blocked := make(chan error, 1)
	go func() {
		_, err := a.Read(make([]byte, 1))
		blocked <- err
	}()
	// The Read may start before or after CloseRead: either way it fails.
	if err := a.CloseRead(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-blocked:
		if err == nil || err == io.EOF || !errors.Is(err, network.ErrReset) {
			t.Fatalf("the Read CloseRead interrupted: %v, want an error matching network.ErrReset", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("CloseRead did not interrupt the Read")
	}
	if _, err := a.Read(make([]byte, 1)); err == nil || err == io.EOF {
		t.Fatalf("Read after CloseRead: %v, want an error that is not io.EOF", err)
	}
	// Writing goes on.
	if _, err := a.Write([]byte("x")); err != nil {
		t.Fatalf("Write after CloseRead: %v", err)
	}
}

func TestADeadlineFailsWithATimeout(t *testing.T) {
	srv, cli := muxPair(t, DefaultTransport, DefaultTransport, nil, nil, 0)
	a, _ := opened(t, cli, srv)
	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := a.Read(make([]byte, 1))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past its deadline: %v, want os.ErrDeadlineExceeded and a net.Error timeout", err)
	}
	if errors.Is(err, network.ErrReset) {
		t.Fatalf("Read past its deadline: %v reads as a reset", err)
	}
	// The stream is still usable once the deadline moves.
	a.SetReadDeadline(time.Time{})
	if _, err := a.Write([]byte("x")); err != nil {
		t.Fatalf("Write after a read timeout: %v", err)
	}
}

func TestAStreamOfAnEndedSessionReadsAsReset(t *testing.T) {
	srv, cli := muxPair(t, DefaultTransport, DefaultTransport, nil, nil, 0)
	a, b := opened(t, cli, srv)
	closeAll(t, cli)
	waitEnded(t, cli)
	b.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := b.Read(make([]byte, 1)); !errors.Is(err, network.ErrReset) {
		t.Fatalf("the peer's Read after Close: %v, want network.ErrReset", err)
	}
	if _, err := a.Write([]byte("x")); !errors.Is(err, network.ErrReset) || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write on a closed session: %v, want network.ErrReset and net.ErrClosed", err)
	}
}
