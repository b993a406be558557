package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// gatedServer is a target that reads a request line and answers it only
// once release is closed, with n bytes.
func gatedServer(t *testing.T, n int) (addr string, accepted <-chan struct{}, release chan<- struct{}) {
	t.Helper()
	acc := make(chan struct{}, 16)
	rel := make(chan struct{})
	ended := make(chan struct{}) // the test is over: stop waiting for rel
	t.Cleanup(func() { close(ended) })
	addr = serveTCP(t, "127.0.0.1:0", func(c net.Conn) {
		acc <- struct{}{}
		c.Read(make([]byte, 1))
		select {
		case <-rel:
			io.WriteString(c, strings.Repeat("z", n))
		case <-ended:
		}
	})
	return addr, acc, rel
}

// request sends a byte on addr and returns a channel with the length of
// the whole reply (or the error).
func request(t *testing.T, addr string) <-chan error {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan error, 1)
	go func() {
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		c.Write([]byte("?"))
		b, err := io.ReadAll(c)
		if err == nil && len(b) != 3<<20 {
			err = errors.New("short reply: " + itoa(len(b)))
		}
		out <- err
	}()
	return out
}

func TestServerDrainLetsRunningConnectionsFinish(t *testing.T) {
	target, accepted, release := gatedServer(t, 3<<20)
	srv, addr, fp, srvLog := newServer(t, ServerConfig{})
	cli, cliLog, _ := startClient(t, addr, fp, ClientConfig{Local: []Forward{{Bind: "127.0.0.1:0", Target: target}}})
	cliLog.wait(t, 1, "session up")
	reply := request(t, cli.Addrs()[0].String())
	within(t, accepted, "connection at the target")
	drained := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		drained <- srv.Drain(ctx)
	}()
	cliLog.wait(t, 1, "server is shutting down")
	if err := echoThrough(t, cli.Addrs()[0].String(), 10); err == nil {
		t.Error("a new connection went through a draining server")
	}
	select {
	case err := <-drained:
		t.Fatalf("Drain returned while a connection was running: %v", err)
	default:
	}
	close(release)
	if err := <-reply; err != nil {
		t.Errorf("the running connection: %v", err)
	}
	if err := <-drained; err != nil {
		t.Errorf("Drain: %v", err)
	}
	srvLog.wait(t, 1, "session down")
}

func TestClientDrainLetsRunningConnectionsFinish(t *testing.T) {
	target, accepted, release := gatedServer(t, 3<<20)
	_, addr, fp, _ := newServer(t, ServerConfig{})
	cli, cliLog, run := startClient(t, addr, fp, ClientConfig{Local: []Forward{{Bind: "127.0.0.1:0", Target: target}}, DrainTimeout: 10 * time.Second})
	cliLog.wait(t, 1, "session up")
	reply := request(t, cli.Addrs()[0].String())
	within(t, accepted, "connection at the target")
	stopped := make(chan error, 1)
	go func() { stopped <- run.stop() }()
	// The listener is closed before the drain begins: new connections
	// are refused.
	cliLog.wait(t, 1, "draining", "running=1")
	if c, err := net.Dial("tcp", cli.Addrs()[0].String()); err == nil {
		c.Close()
		t.Error("the -L listener stayed open while draining")
	}
	close(release)
	if err := <-reply; err != nil {
		t.Errorf("the running connection: %v", err)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Run: %v", err)
	}
}

func TestIdleDrainIsImmediate(t *testing.T) {
	srv, addr, fp, _ := newServer(t, ServerConfig{})
	_, cliLog, run := startClient(t, addr, fp, ClientConfig{})
	cliLog.wait(t, 1, "session up")
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Drain(ctx); err != nil {
		t.Errorf("Drain: %v", err)
	}
	run.stop()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("an idle drain took %v", d)
	}
}

func TestDrainTimeoutEndsStuckConnections(t *testing.T) {
	target, accepted, _ := gatedServer(t, 1) // never released
	srv, addr, fp, _ := newServer(t, ServerConfig{})
	cli, cliLog, _ := startClient(t, addr, fp, ClientConfig{Local: []Forward{{Bind: "127.0.0.1:0", Target: target}}})
	cliLog.wait(t, 1, "session up")
	reply := request(t, cli.Addrs()[0].String())
	within(t, accepted, "connection at the target")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := srv.Drain(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Drain: %v, want the deadline", err)
	}
	if err := <-reply; err == nil {
		t.Error("a connection cut by the drain timeout looked complete")
	}
}
