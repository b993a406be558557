package interop

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/polymux/polymux/interop/internal/muxes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
)

// Issue 15: a server's graceful shutdown over Session.Listener(), whose
// Close only stops accepting, with each peer library as the client of a
// polymux server session. go-yamux above all: it drops its whole session
// on any GoAway, so the view's Close must send none on yamux.

// peerClients are the cells with each peer library as the client of a
// polymux server.
func peerClients() []cell {
	var cs []cell
	for _, p := range muxes.Peers() {
		cs = append(cs, cell{p, false})
	}
	return cs
}

// TestHTTPShutdownOverTheListenerView: an http.Server serves the polymux
// session's listener view; a handler blocks until the test releases it.
// Once it has started, hs.Shutdown is called: Serve returns at once, a
// request made now fails within the bound, never hangs, and the request
// in flight, released, gets its full reply; Shutdown then returns nil, and
// so does the session's own Shutdown.
//
// How the late request fails is each protocol's refusal: yamux RST before
// ACK (no GoAway, which would end go-yamux's session and the request in
// flight with it), muxado GOAWAY then RST, smux FIN, so io.EOF. One
// exception: xtaci/smux's open race (see TestGoAway) may drop polymux's
// FIN, which arrives before smux has registered the stream; its request
// then waits for the bound, and polymux's count of refusals shows the FIN
// was sent.
func TestHTTPShutdownOverTheListenerView(t *testing.T) {
	for _, c := range peerClients() {
		t.Run(c.name(), func(t *testing.T) {
			e := newEnv(t, c, muxes.Options{}, 30*time.Second)
			pm := e.pm()
			started, release := make(chan struct{}), make(chan struct{})
			body := randomBytes(300_000, 15) // more than one window
			hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/slow" {
					close(started)
					select {
					case <-release:
					case <-e.ctx.Done():
					}
				}
				w.Write(body)
			})}
			served := make(chan error, 1)
			e.spawn(func() { served <- hs.Serve(pm.Listener()) })
			tr := &http.Transport{
				DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return e.client.Open(ctx) },
				DisableKeepAlives: true,
			}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr}
			type reply struct {
				body []byte
				err  error
			}
			slow := make(chan reply, 1)
			e.spawn(func() {
				req, _ := http.NewRequestWithContext(e.ctx, "GET", "http://polymux/slow", nil)
				resp, err := client.Do(req)
				if err != nil {
					slow <- reply{err: err}
					return
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				slow <- reply{b, err}
			})
			select {
			case <-started:
			case r := <-slow:
				t.Fatalf("the slow request ended before its handler started: %v", r.err)
			case <-e.ctx.Done():
				t.Fatal("the slow handler never started")
			}
			shut := make(chan error, 1)
			e.spawn(func() { shut <- hs.Shutdown(e.ctx) })
			select {
			case err := <-served:
				if !errors.Is(err, http.ErrServerClosed) {
					t.Fatalf("Serve = %v, want http.ErrServerClosed", err)
				}
			case <-e.ctx.Done():
				t.Fatal("Serve did not return after Shutdown")
			}

			refusedBefore := pm.Stats().StreamsRefused
			const bound = 5 * time.Second
			ctx, cancel := context.WithTimeout(e.ctx, bound)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://polymux/late", nil)
			start := time.Now()
			resp, err := client.Do(req)
			took := time.Since(start)
			switch {
			case err == nil:
				resp.Body.Close()
				t.Fatalf("a request after Shutdown got %v", resp.Status)
			case ctx.Err() != nil && isSmux(e.client) && pm.Stats().StreamsRefused > refusedBefore:
				t.Logf("xtaci/smux open race: polymux refused the late stream with FIN (StreamsRefused %d → %d), and smux dropped it; its request waited for the %v bound", refusedBefore, pm.Stats().StreamsRefused, bound)
			case ctx.Err() != nil:
				t.Fatalf("a request after Shutdown hung for %v: %v", took.Round(time.Millisecond), err)
			case isSmux(e.client) && !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "server closed idle connection"):
				// (net/http says "server closed idle connection" for an
				// EOF its read loop sees before the request is written.)
				t.Fatalf("a request after Shutdown over smux: %v, want io.EOF (polymux refuses with FIN)", err)
			default:
				t.Logf("a request after Shutdown failed in %v: %v", took.Round(time.Millisecond), err)
			}

			close(release)
			var r reply
			select {
			case r = <-slow:
			case <-e.ctx.Done():
				t.Fatal("the request in flight never finished")
			}
			if r.err != nil || !bytes.Equal(r.body, body) {
				t.Fatalf("the request in flight got %d bytes of %d (%s), then %v", len(r.body), len(body), prefixNote(r.body, body), errOrEOF(r.err))
			}
			select {
			case err := <-shut:
				if err != nil {
					t.Fatalf("http.Server.Shutdown: %v", err)
				}
			case <-e.ctx.Done():
				t.Fatal("http.Server.Shutdown never returned")
			}
			if err := pm.Shutdown(e.ctx); err != nil {
				t.Fatalf("polymux Session.Shutdown: %v", err)
			}
		})
	}
}

// rawCodec passes gRPC messages through as they are (*[]byte), so the
// test's service needs no protobuf code.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }

func (rawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}

func (rawCodec) Name() string { return "polymux-raw" }

func init() { encoding.RegisterCodec(rawCodec{}) }

// slowService is a hand-written gRPC service: Unary and Stream (server
// streaming) each tell started, wait for release, and answer with reply:
// Unary as one message, Stream as replyParts messages, half of them
// before waiting.
type slowService struct {
	started chan string
	release chan struct{}
	reply   []byte
}

const replyParts = 8

var slowServiceDesc = grpc.ServiceDesc{
	ServiceName: "polymux.interop.Slow",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Unary",
		Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			s := srv.(*slowService)
			var req []byte
			if err := dec(&req); err != nil {
				return nil, err
			}
			s.started <- "unary"
			select {
			case <-s.release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return &s.reply, nil
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Stream",
		ServerStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			s := srv.(*slowService)
			var req []byte
			if err := stream.RecvMsg(&req); err != nil {
				return err
			}
			part := len(s.reply) / replyParts
			for i := range replyParts {
				if i == replyParts/2 {
					s.started <- "stream"
					select {
					case <-s.release:
					case <-stream.Context().Done():
						return stream.Context().Err()
					}
				}
				msg := s.reply[i*part : (i+1)*part]
				if err := stream.SendMsg(&msg); err != nil {
					return err
				}
			}
			return nil
		},
	}},
}

// TestGRPCGracefulStopOverTheListenerView: a grpc.Server serves the
// polymux session's listener view; a slow unary RPC and a slow
// server-streaming RPC are in flight when GracefulStop is called. It
// closes the listener, which only stops accepting, tells the client to go
// away (HTTP/2 GOAWAY, inside the stream) and waits: both RPCs, released,
// complete with their full replies, and GracefulStop returns.
func TestGRPCGracefulStopOverTheListenerView(t *testing.T) {
	for _, c := range peerClients() {
		t.Run(c.name(), func(t *testing.T) {
			e := newEnv(t, c, muxes.Options{}, 30*time.Second)
			pm := e.pm()
			svc := &slowService{started: make(chan string, 2), release: make(chan struct{}), reply: randomBytes(400_000, 15)}
			gs := grpc.NewServer()
			gs.RegisterService(&slowServiceDesc, svc)
			ln := &closeSignal{Listener: pm.Listener(), closed: make(chan struct{})}
			served := make(chan error, 1)
			e.spawn(func() { served <- gs.Serve(ln) })
			defer gs.Stop()

			cc, err := grpc.NewClient("passthrough:///polymux",
				grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return e.client.Open(ctx) }),
				grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithDefaultCallOptions(grpc.CallContentSubtype(rawCodec{}.Name())))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()

			type rpc struct {
				name  string
				reply []byte
				err   error
			}
			done := make(chan rpc, 2)
			e.spawn(func() {
				req, reply := []byte("unary"), []byte(nil)
				err := cc.Invoke(e.ctx, "/polymux.interop.Slow/Unary", &req, &reply)
				done <- rpc{"unary", reply, err}
			})
			e.spawn(func() {
				r := rpc{name: "stream"}
				defer func() { done <- r }()
				st, err := cc.NewStream(e.ctx, &slowServiceDesc.Streams[0], "/polymux.interop.Slow/Stream")
				if err != nil {
					r.err = err
					return
				}
				req := []byte("stream")
				if r.err = st.SendMsg(&req); r.err != nil {
					return
				}
				if r.err = st.CloseSend(); r.err != nil {
					return
				}
				for {
					var msg []byte
					if err := st.RecvMsg(&msg); err != nil {
						if err != io.EOF {
							r.err = err
						}
						return
					}
					r.reply = append(r.reply, msg...)
				}
			})
			for range 2 {
				select {
				case <-svc.started:
				case r := <-done:
					t.Fatalf("the %s RPC ended before its handler started: %v", r.name, r.err)
				case <-e.ctx.Done():
					t.Fatal("the slow handlers never started")
				}
			}

			stopped := make(chan struct{})
			e.spawn(func() {
				gs.GracefulStop()
				close(stopped)
			})
			select {
			case <-ln.closed:
			case <-e.ctx.Done():
				t.Fatal("GracefulStop never closed the listener")
			}
			select {
			case <-stopped:
				t.Fatal("GracefulStop returned with two RPCs in flight")
			case r := <-done:
				t.Fatalf("the %s RPC ended as GracefulStop closed the listener: %v", r.name, r.err)
			default:
			}
			close(svc.release)
			for range 2 {
				var r rpc
				select {
				case r = <-done:
				case <-e.ctx.Done():
					t.Fatal("an RPC in flight never finished")
				}
				if r.err != nil || !bytes.Equal(r.reply, svc.reply) {
					t.Errorf("the %s RPC in flight got %d bytes of %d (%s), then %v", r.name, len(r.reply), len(svc.reply), prefixNote(r.reply, svc.reply), r.err)
				}
			}
			select {
			case <-stopped:
			case <-e.ctx.Done():
				t.Fatal("GracefulStop never returned")
			}
			// grpc's Serve returns only once GracefulStop is done.
			if err := <-served; err != nil {
				t.Fatalf("grpc Serve after GracefulStop = %v, want nil", err)
			}
			cc.Close()
			if err := pm.Shutdown(e.ctx); err != nil {
				t.Fatalf("polymux Session.Shutdown: %v", err)
			}
			if st := pm.Stats(); st.ActiveStreams != 0 {
				t.Errorf("%d streams still open after Shutdown", st.ActiveStreams)
			}
		})
	}
}

// closeSignal is a listener that closes closed once its Close has
// returned.
type closeSignal struct {
	net.Listener
	closed chan struct{}
	once   sync.Once
}

func (l *closeSignal) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { close(l.closed) })
	return err
}
