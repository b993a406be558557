package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/polymux/polymux"
)

// protocols are the wire protocols a tunnel can run on.
var protocols = []polymux.Protocol{polymux.Yamux, polymux.SmuxV1, polymux.SmuxV2, polymux.MuxadoV2}

func TestForwardsWorkOnEveryProtocol(t *testing.T) {
	echo := echoServer(t)
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) {
			_, addr, fp, _ := newServer(t, ServerConfig{})
			cli, cliLog, _ := startClient(t, addr, fp, ClientConfig{
				Mux:    &polymux.Config{Protocol: p},
				Local:  []Forward{{Bind: "127.0.0.1:0", Target: echo}},
				Remote: []Forward{{Bind: "127.0.0.1:0", Target: echo}},
				Socks:  []string{"127.0.0.1:0"},
			})
			cliLog.wait(t, 1, "session up", "protocol="+p.String())
			if err := echoThrough(t, cli.Addrs()[0].String(), 1<<20); err != nil {
				t.Errorf("-L: %v", err)
			}
			rev := cliLog.value(t, "bind", "reverse forward listening")
			if err := echoThrough(t, rev, 1<<20); err != nil {
				t.Errorf("-R: %v", err)
			}
			c, code, err := socksDial(cli.Addrs()[1].String(), echo)
			if err != nil || code != 0 {
				t.Fatalf("-D: code %d, %v", code, err)
			}
			defer c.Close()
			c.Write([]byte("socks"))
			buf := make([]byte, 5)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "socks" {
				t.Errorf("-D echo %q, %v", buf, err)
			}
		})
	}
}

func TestSocksRepliesWithTheFailure(t *testing.T) {
	_, addr, fp, srvLog := newServer(t, ServerConfig{AllowForward: LoopbackOnly})
	cli, cliLog, _ := startClient(t, addr, fp, ClientConfig{Socks: []string{"127.0.0.1:0"}})
	cliLog.wait(t, 1, "session up")
	socks := cli.Addrs()[0].String()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close() // nothing listens there now: the dial is refused
	for _, tc := range []struct {
		target string
		code   byte
	}{
		{closedAddr, socksRefused},
		{"192.0.2.1:80", socksNotAllowed},
		{"no-such-host.invalid:80", socksHostUnreachable},
	} {
		c, code, err := socksDial(socks, tc.target)
		if c != nil {
			c.Close()
		}
		if err != nil || code != tc.code {
			t.Errorf("%s: code %#x, %v; want %#x", tc.target, code, err, tc.code)
		}
	}
	srvLog.wait(t, 1, "forward refused by policy", "target=192.0.2.1:80")
	cliLog.wait(t, 1, "socks connect refused by the server", "target=192.0.2.1:80")
}

func TestHalfCloseGetsTheWholeReply(t *testing.T) {
	// The target reads everything, then replies: only a half-close that
	// crosses the tunnel lets it know the request is over.
	target := serveTCP(t, "127.0.0.1:0", func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		io.WriteString(c, strings.Repeat("r", int(n%1000)+100000))
	})
	_, addr, fp, _ := newServer(t, ServerConfig{})
	cli, cliLog, _ := startClient(t, addr, fp, ClientConfig{Local: []Forward{{Bind: "127.0.0.1:0", Target: target}}})
	cliLog.wait(t, 1, "session up")
	c, err := net.Dial("tcp", cli.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write(make([]byte, 12345))
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || len(got) != 100345 {
		t.Errorf("reply of %d bytes, %v; want 100345", len(got), err)
	}
}

func TestRefusedRequestsAreLoggedOnBothSidesAndReachNothing(t *testing.T) {
	var dials atomic.Int32
	_, addr, fp, srvLog := newServer(t, ServerConfig{
		AllowForward: MustParsePolicy("127.0.0.1:1-1000"),
		Dial: func(ctx context.Context, network, a string) (net.Conn, error) {
			dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, a)
		},
	})
	echo := echoServer(t) // on a port above 1000: outside the forward policy
	cli, cliLog, _ := startClient(t, addr, fp, ClientConfig{
		Local:  []Forward{{Bind: "127.0.0.1:0", Target: echo}},
		Remote: []Forward{{Bind: "0.0.0.0:0", Target: echo}, {Bind: "127.0.0.1:0", Target: echo}},
	})
	cliLog.wait(t, 1, "session up")
	// -R on every interface is outside the default loopback-only policy;
	// the client carries on with its other reverse forward.
	srvLog.wait(t, 1, "reverse forward refused", "bind=0.0.0.0:0", "code=not-allowed")
	cliLog.wait(t, 1, "reverse forward refused by the server", "bind=0.0.0.0:0")
	if err := echoThrough(t, cliLog.value(t, "bind", "reverse forward listening"), 1000); err != nil {
		t.Errorf("the allowed -R: %v", err)
	}
	// The refusal may even beat the dial's return: a reset connect is as
	// refused as a reset read.
	if c, err := net.Dial("tcp", cli.Addrs()[0].String()); err == nil {
		c.Write([]byte("must not arrive"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil {
			t.Errorf("a refused -L read %d bytes", n)
		}
		c.Close()
	}
	srvLog.wait(t, 1, "forward refused by policy", "target="+echo)
	cliLog.wait(t, 1, "forward refused by the server", "target="+echo, "code=not-allowed")
	if n := dials.Load(); n != 0 {
		t.Errorf("the server dialled %d times for a refused target", n)
	}
}

func TestClientReconnectsAndRegistersAgain(t *testing.T) {
	_, addr, fp, _ := newServer(t, ServerConfig{})
	echo := echoServer(t)
	px := newProxy(t, addr)
	cli, cliLog, _ := startClient(t, px.addr(), fp, ClientConfig{
		Local:  []Forward{{Bind: "127.0.0.1:0", Target: echo}},
		Remote: []Forward{{Bind: "127.0.0.1:0", Target: echo}},
	})
	for round := 1; round <= 3; round++ {
		cliLog.wait(t, round, "session up")
		cliLog.wait(t, round, "reverse forward listening")
		if err := echoThrough(t, cli.Addrs()[0].String(), 64<<10); err != nil {
			t.Fatalf("round %d: -L: %v", round, err)
		}
		lines := strings.Split(cliLog.String(), "\n")
		var rev string
		for _, l := range lines {
			if strings.Contains(l, "reverse forward listening") {
				rev = l
			}
		}
		bind := strings.Fields(rev[strings.Index(rev, "bind="):])[0][len("bind="):]
		if err := echoThrough(t, bind, 64<<10); err != nil {
			t.Fatalf("round %d: -R: %v", round, err)
		}
		px.cut()
		cliLog.wait(t, round, "session down")
	}
}

func TestReRegistrationReplacesAStaleListener(t *testing.T) {
	// The server is slow to notice a dead path; the client is quick, and
	// reconnects over a new one while the server still holds its old
	// session and that session's -R listener on the same port.
	slow := fastTimeouts
	slow.HeartbeatTimeout = time.Minute
	_, addr, fp, srvLog := newServer(t, ServerConfig{Timeouts: slow})
	echo := echoServer(t)
	port := freePort(t)
	px := newProxy(t, addr)
	_, cliLog, _ := startClient(t, px.addr(), fp, ClientConfig{Remote: []Forward{{Bind: "127.0.0.1:" + port, Target: echo}}})
	cliLog.wait(t, 1, "reverse forward listening")
	px.blackhole()
	cliLog.wait(t, 1, "session down", "heartbeat timeout")
	px.heal() // the old connection stays dead; the new one goes through
	cliLog.wait(t, 2, "reverse forward listening", "bind=127.0.0.1:"+port)
	srvLog.wait(t, 1, "session replaced by a new one of the same client")
	if err := echoThrough(t, "127.0.0.1:"+port, 1000); err != nil {
		t.Errorf("the re-registered -R: %v", err)
	}
}

// freePort is a port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

func TestDeadPathIsNoticedOnEveryProtocol(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.String(), func(t *testing.T) {
			_, addr, fp, srvLog := newServer(t, ServerConfig{})
			px := newProxy(t, addr)
			_, cliLog, _ := startClient(t, px.addr(), fp, ClientConfig{Mux: &polymux.Config{Protocol: p, KeepAliveInterval: -1}})
			cliLog.wait(t, 1, "session up")
			start := time.Now()
			px.blackhole()
			cliLog.wait(t, 1, "session down", "heartbeat timeout")
			srvLog.wait(t, 1, "session down", "heartbeat timeout")
			if d := time.Since(start); d > 5*fastTimeouts.HeartbeatTimeout {
				t.Errorf("noticed after %v, heartbeat timeout %v", d, fastTimeouts.HeartbeatTimeout)
			}
		})
	}
}

func TestConnectionsInFlightFailWhenTheSessionDies(t *testing.T) {
	_, addr, fp, _ := newServer(t, ServerConfig{})
	echo := echoServer(t)
	px := newProxy(t, addr)
	cli, cliLog, _ := startClient(t, px.addr(), fp, ClientConfig{Local: []Forward{{Bind: "127.0.0.1:0", Target: echo}}})
	cliLog.wait(t, 1, "session up")
	c, err := net.Dial("tcp", cli.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	px.blackhole()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the connection hung after its session died")
	}
	if err == nil {
		t.Fatal("read data after the session died")
	}
}

func TestConnectionWhileDownIsClosedAtOnce(t *testing.T) {
	_, addr, fp, _ := newServer(t, ServerConfig{})
	px := newProxy(t, addr)
	px.blackhole()
	cli, cliLog, _ := startClient(t, px.addr(), fp, ClientConfig{Local: []Forward{{Bind: "127.0.0.1:0", Target: "127.0.0.1:9"}}})
	cliLog.wait(t, 1, "connecting")
	c, err := net.Dial("tcp", cli.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	_, err = c.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); err == nil || (ok && ne.Timeout()) {
		t.Fatalf("read: %v; want the connection closed", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("closed after %v", d)
	}
}

func TestWrongTokenIsFatalAndRepeatedFailuresAreSlowed(t *testing.T) {
	_, addr, fp, srvLog := newServer(t, ServerConfig{Throttle: &Throttle{Base: 300 * time.Millisecond}})
	_, _, run := startClient(t, addr, fp, ClientConfig{Token: []byte("wrong")})
	srvLog.wait(t, 1, "authentication failed", "remote=127.0.0.1:")
	var fe *FatalError
	if err := run.wait(); !errors.As(err, &fe) || !errors.Is(err, ErrAuthFailed) {
		t.Errorf("Run: %v, want a FatalError for the token", err)
	}
	// Straight away again: throttled first, then evaluated, and refused.
	_, cliLog2, run2 := startClient(t, addr, fp, ClientConfig{Token: []byte("wrong again")})
	cliLog2.wait(t, 1, "connect failed", "slowing down")
	srvLog.wait(t, 1, "authentication throttled")
	srvLog.wait(t, 2, "authentication failed")
	if err := run2.wait(); !errors.Is(err, ErrAuthFailed) {
		t.Errorf("second client: %v", err)
	}
	if n := countLines(srvLog.String(), []string{"session up"}); n != 0 {
		t.Errorf("%d sessions came up with a wrong token", n)
	}
}

func TestFingerprintMismatchIsFatalFirstAndRetriedLater(t *testing.T) {
	_, addrA, fpA, _ := newServer(t, ServerConfig{})
	_, addrB, _, _ := newServer(t, ServerConfig{})
	// First connection to the wrong server: fatal.
	_, _, run := startClient(t, addrB, fpA, ClientConfig{})
	var mm *MismatchError
	if err := run.wait(); !errors.As(err, &mm) {
		t.Errorf("first connection to another key: %v, want a MismatchError", err)
	}
	// Connected to the right one, then redirected to the wrong one:
	// logged and retried, until the right one is back.
	echo := echoServer(t)
	px := newProxy(t, addrA)
	cli, cliLog, _ := startClient(t, px.addr(), fpA, ClientConfig{Local: []Forward{{Bind: "127.0.0.1:0", Target: echo}}})
	cliLog.wait(t, 1, "session up")
	px.redirect(addrB)
	px.cut()
	cliLog.wait(t, 2, "server not trusted; will retry")
	if err := echoThrough(t, cli.Addrs()[0].String(), 10); err == nil {
		t.Error("a forward worked while the server was not trusted")
	}
	px.redirect(addrA)
	cliLog.wait(t, 2, "session up")
	if err := echoThrough(t, cli.Addrs()[0].String(), 10); err != nil {
		t.Errorf("after the right server came back: %v", err)
	}
}

func TestUnauthenticatedConnectionsAreBounded(t *testing.T) {
	to := fastTimeouts
	to.Auth = 300 * time.Millisecond
	_, addr, _, srvLog := newServer(t, ServerConfig{Timeouts: to, MaxPending: 2})
	silent := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b := silent(), silent()
	srvLog.wait(t, 0)
	c := silent() // past MaxPending: closed at once
	srvLog.wait(t, 1, "too many unauthenticated connections")
	for _, conn := range []net.Conn{a, b, c} {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err == nil {
			t.Error("a silent connection read data")
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Error("a silent connection was not closed within the auth timeout")
		}
	}
}

func TestDataStreamsBeforeAuthenticationAreNotServed(t *testing.T) {
	var dials atomic.Int32
	_, addr, fp, srvLog := newServer(t, ServerConfig{Dial: func(ctx context.Context, n, a string) (net.Conn, error) {
		dials.Add(1)
		return nil, errors.New("no")
	}})
	conn, err := tlsDial(addr, fp)
	if err != nil {
		t.Fatal(err)
	}
	mux, err := polymux.Client(conn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer mux.Close()
	st, err := mux.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	writeMessage(st, &message{Type: msgConnect, Target: "127.0.0.1:80"})
	select {
	case <-mux.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the server kept a session that skipped authentication")
	}
	srvLog.wait(t, 1, "authentication aborted")
	if dials.Load() != 0 {
		t.Error("the server dialled for an unauthenticated client")
	}
}

// tlsDial is a TLS connection to a tunnel server with key fp.
func tlsDial(addr, fp string) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return pinnedTLS(c, fp), nil
}

func TestBusyReversePortIsReportedAndTheRestCarriesOn(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, addr, fp, srvLog := newServer(t, ServerConfig{})
	echo := echoServer(t)
	free := "127.0.0.1:" + freePort(t)
	_, cliLog, _ := startClient(t, addr, fp, ClientConfig{Remote: []Forward{
		{Bind: busy.Addr().String(), Target: echo},
		{Bind: free, Target: echo},
		{Bind: free, Target: echo}, // twice on one session: the second is refused
	}})
	srvLog.wait(t, 1, "reverse forward refused", "bind="+busy.Addr().String(), "code=address-in-use")
	cliLog.wait(t, 1, "reverse forward refused by the server", "bind="+busy.Addr().String(), "code=address-in-use")
	cliLog.wait(t, 1, "reverse forward refused by the server", "bind="+free, "code=address-in-use")
	cliLog.wait(t, 1, "reverse forward listening", "bind="+free)
	if err := echoThrough(t, free, 1000); err != nil {
		t.Errorf("the free -R: %v", err)
	}
}
