package polymux

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// refusedErr is what an opener sees of a stream the peer refused: a
// refusal, or on smux, which cannot refuse, an immediate EOF.
func (e env) refusedErr() error {
	if !e.caps().Reset {
		return io.EOF
	}
	return ErrStreamRefused
}

// expectRefused fails the test unless st, opened on a session whose peer
// stopped accepting, is refused in a way its opener sees.
func expectRefused(t *testing.T, e env, st *Stream) {
	t.Helper()
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := st.Read(make([]byte, 1)); !errors.Is(err, e.refusedErr()) {
		t.Fatalf("stream %d: Read = %v, want %v", st.ID(), err, e.refusedErr())
	}
}

func TestTheListenerViewsCloseOnlyStopsAccepting(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		ln := srv.Listener()
		if srv.Listener() != ln {
			t.Fatal("Listener returned a different view on the second call")
		}
		if ln.Addr() != srv.Addr() {
			t.Fatalf("the view's Addr %v is not the session's %v", ln.Addr(), srv.Addr())
		}
		open, openPeer := openAccept(t, cli, srv)
		waiting, err := cli.OpenStream(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := waiting.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "the second stream waiting for Accept", func() bool {
			srv.mu.Lock()
			defer srv.mu.Unlock()
			return srv.backlogLen == 1
		})
		if err := ln.Close(); err != nil {
			t.Fatal(err)
		}
		if err := ln.Close(); err != nil {
			t.Fatalf("a second Close: %v", err)
		}
		if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v", err)
		}
		expectRefused(t, e, waiting)
		// A later open is refused too: the opener may see the GoAway
		// (muxado) or the refusal.
		if late, err := cli.OpenStream(ctx(t)); err == nil {
			expectRefused(t, e, late)
		} else if !errors.Is(err, ErrGoAway) {
			t.Fatalf("OpenStream after the view closed: %v", err)
		}
		if got := srv.Stats().StreamsRefused; got != 2 && !(got == 1 && e.caps().GoAwayKeepsStreams) {
			t.Fatalf("StreamsRefused = %d", got)
		}
		// The open stream carries on, and the session stays up.
		if err := roundTripOnce(open, openPeer); err != nil {
			t.Fatalf("the open stream after the view closed: %v", err)
		}
		if srv.IsClosed() || cli.IsClosed() {
			t.Fatal("closing the view ended the session")
		}
		if e.proto == Yamux {
			// A go-yamux peer would drop its open streams on GoAway.
			cli.mu.Lock()
			goAway := cli.remoteGoAway
			cli.mu.Unlock()
			if goAway {
				t.Fatal("closing the yamux view sent GoAway")
			}
		}
	})
}

func TestClosingTheListenerViewWakesABlockedAccept(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		_, srv := e.pair(t, nil, nil)
		blocked := make(chan error, 1)
		go func() {
			_, err := srv.Listener().Accept()
			blocked <- err
		}()
		for range 100 {
			runtime.Gosched() // most likely blocked by now; if not, it fails the same way
		}
		srv.Listener().Close()
		select {
		case err := <-blocked:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("a blocked Accept woke with %v, want net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("closing the view did not wake a blocked Accept")
		}
		if srv.IsClosed() {
			t.Fatal("closing the view ended the session")
		}
	})
}

func TestShutdownLetsOpenStreamsFinishThenCloses(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		a, b := openAccept(t, cli, srv)
		done := make(chan error, 1)
		go func() { done <- srv.Shutdown(ctx(t)) }()
		eventually(t, 5*time.Second, "Shutdown to stop accepting", func() bool {
			srv.mu.Lock()
			defer srv.mu.Unlock()
			return srv.shutting
		})
		if _, err := srv.OpenStream(ctx(t)); !errors.Is(err, ErrSessionClosed) {
			t.Fatalf("OpenStream during Shutdown: %v", err)
		}
		if late, err := cli.OpenStream(ctx(t)); err == nil {
			expectRefused(t, e, late)
		} else if !errors.Is(err, ErrGoAway) {
			t.Fatalf("the peer's OpenStream during Shutdown: %v", err)
		}
		// The open stream works both ways until both sides close it.
		if err := roundTripOnce(a, b); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			t.Fatalf("Shutdown returned %v with a stream open", err)
		default:
		}
		reply := randomBytes(300_000)
		go func() {
			io.Copy(io.Discard, b)
			b.Write(reply)
			b.Close()
		}()
		a.CloseWrite()
		got, err := io.ReadAll(a)
		if err != nil || string(got) != string(reply) {
			t.Fatalf("the reply: %d bytes of %d, %v", len(got), len(reply), err)
		}
		a.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Shutdown did not return once the streams were closed")
		}
		if !srv.IsClosed() {
			t.Fatal("the session is still open after Shutdown")
		}
	})
}

func TestShutdownClosesWhenItsContextEnds(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		openAccept(t, cli, srv)
		c, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := srv.Shutdown(c); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v, want the context's error", err)
		}
		select {
		case <-srv.Done():
		default:
			t.Fatal("the session did not end with Shutdown")
		}
	})
}

func TestHTTPShutdownOverTheListenerViewFinishesRequestsInFlight(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cli, srv := e.pair(t, nil, nil)
		started, release := make(chan struct{}), make(chan struct{})
		body := strings.Repeat("reply ", 50_000)
		hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				close(started)
				<-release
			}
			io.WriteString(w, body)
		})}
		served := make(chan error, 1)
		go func() { served <- hs.Serve(srv.Listener()) }()
		client := &http.Client{Transport: &http.Transport{
			DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return cli.OpenStream(ctx) },
			DisableKeepAlives: true,
		}}
		defer client.CloseIdleConnections()
		type result struct {
			body string
			err  error
		}
		slow := make(chan result, 1)
		go func() {
			resp, err := client.Get("http://polymux/slow")
			if err != nil {
				slow <- result{err: err}
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			slow <- result{string(b), err}
		}()
		<-started
		shut := make(chan error, 1)
		go func() { shut <- hs.Shutdown(ctx(t)) }()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Fatalf("Serve = %v", err)
		}
		// A request after Shutdown fails, soon.
		c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(c, "GET", "http://polymux/late", nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("a request after Shutdown got %v", resp.Status)
		} else if c.Err() != nil {
			t.Fatalf("a request after Shutdown hung: %v", err)
		}
		close(release)
		r := <-slow
		if r.err != nil || r.body != body {
			t.Fatalf("the request in flight: %d bytes of %d, %v", len(r.body), len(body), r.err)
		}
		if err := <-shut; err != nil {
			t.Fatalf("http Shutdown: %v", err)
		}
		if err := srv.Shutdown(ctx(t)); err != nil {
			t.Fatalf("session Shutdown: %v", err)
		}
	})
}
