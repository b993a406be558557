// Package muxes puts polymux and the reference multiplexers behind one small
// interface, so the interop tests and the muxbench runner can drive every
// library the same way.
//
// Every library is configured comparably unless Options says otherwise:
// 256 KiB per-stream windows without auto-tuning, logging off. What each
// constructor changes from the library's defaults is listed on it.
package muxes

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"time"

	hashicorp "github.com/hashicorp/yamux"
	goyamux "github.com/libp2p/go-yamux/v5"
	"github.com/polymux/polymux"
	"github.com/polymux/polymux/internal/loopback"
	"github.com/xtaci/smux"
	"golang.ngrok.com/muxado/v2"
)

// Stream is a stream of any library: a net.Conn that can half-close. It is
// the connection the shared loopback workloads run on.
type Stream = loopback.Conn

// Session is a session of any library.
type Session interface {
	// Open opens a stream. Only polymux and go-yamux honour ctx; the others
	// are bounded by closing the session.
	Open(ctx context.Context) (Stream, error)
	// Accept waits for a stream the peer opened. It returns once the
	// session is closed.
	Accept(ctx context.Context) (Stream, error)
	// Close closes the session and its connection.
	Close() error
	// Native returns the library's own session: *polymux.Session,
	// *hashicorp.Session, *goyamux.Session, *smux.Session or
	// muxado.Session.
	Native() any
}

// DefaultWindow is the per-stream receive window every library gets by
// default: the one all four protocols assume when a stream opens.
const DefaultWindow = 256 << 10

// Options tune a session. The zero value is the comparable default.
type Options struct {
	// Window is the per-stream receive window. 0 means DefaultWindow for
	// every library, with auto-tuning off (polymux MaxStreamWindow =
	// InitialStreamWindow, go-yamux MaxStreamWindowSize = Window). -1 means
	// each library's own defaults, untouched (polymux and go-yamux then
	// auto-tune up to 16 MiB; smux v2 advertises 64 KiB).
	Window int
	// Streams, if > 0, is how many peer-opened streams may be open at
	// once, counting those waiting for Accept. It raises the limits that
	// would refuse an open below it: polymux's and go-yamux's
	// MaxIncomingStreams (default 1000 each), and muxado's AcceptBacklog
	// (default 128), which is muxado's only bound: its opener does not
	// wait, so an open that finds the queue full is refused (RST
	// AcceptQueueFull). Every other accept backlog stays at its default,
	// because none of them loses an open: polymux's (256) refuses with
	// RST only past what a yamux opener waits for, pauses an smux
	// session and does not bound muxado; hashicorp's and go-yamux's (256)
	// are also the opener's cap on streams awaiting an ACK, which the
	// acceptor sends at Accept; smux's (1024) is fixed and stops its
	// reader while it is full.
	Streams int
	// SessionBuffer, if > 0, bounds received-but-unread bytes per session
	// where the library has such a bound (polymux MaxSessionBuffer, smux
	// MaxReceiveBuffer). 0 means 64 MiB for both.
	SessionBuffer int
}

func (o Options) window() (w uint32, libDefaults bool) {
	switch {
	case o.Window < 0:
		return 0, true
	case o.Window == 0:
		return DefaultWindow, false
	}
	return uint32(o.Window), false
}

func (o Options) sessionBuffer() int {
	if o.SessionBuffer > 0 {
		return o.SessionBuffer
	}
	return 64 << 20
}

// Lib is one multiplexer implementation: polymux speaking one protocol,
// or a reference library.
type Lib struct {
	// Name identifies the library in test names and tables, such as
	// "polymux-yamux" or "hashicorp/yamux".
	Name string
	// Protocol is the wire protocol it speaks.
	Protocol polymux.Protocol
	// Polymux is true for polymux itself.
	Polymux bool
	// Client and Server start a session on conn, which they own.
	Client func(conn net.Conn, o Options) (Session, error)
	Server func(conn net.Conn, o Options) (Session, error)
}

// Polymux returns polymux speaking p, named "polymux-<p>". It sets
// InitialStreamWindow and MaxStreamWindow to the window (auto-tuning off),
// MaxSessionBuffer to 64 MiB (its default), and with Options.Streams
// MaxIncomingStreams; AcceptBacklog stays at its default.
func Polymux(p polymux.Protocol) Lib {
	return Lib{
		Name:     "polymux-" + p.String(),
		Protocol: p,
		Polymux:  true,
		Client: func(conn net.Conn, o Options) (Session, error) {
			return newPolymux(conn, o, p, true)
		},
		Server: func(conn net.Conn, o Options) (Session, error) {
			return newPolymux(conn, o, p, false)
		},
	}
}

// PolymuxConfig is the polymux Config Polymux uses for p and o.
func PolymuxConfig(p polymux.Protocol, o Options) *polymux.Config {
	cfg := &polymux.Config{Protocol: p}
	if w, libDefaults := o.window(); !libDefaults {
		cfg.InitialStreamWindow = w
		cfg.MaxStreamWindow = w
		cfg.MaxSessionBuffer = int64(max(o.sessionBuffer(), int(w)))
	}
	if o.Streams > 0 {
		cfg.MaxIncomingStreams = o.Streams
	}
	return cfg
}

func newPolymux(conn net.Conn, o Options, p polymux.Protocol, client bool) (Session, error) {
	cfg := PolymuxConfig(p, o)
	var s *polymux.Session
	var err error
	if client {
		s, err = polymux.Client(conn, cfg)
	} else {
		s, err = polymux.Server(conn, cfg)
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return polymuxSession{s}, nil
}

type polymuxSession struct{ s *polymux.Session }

func (p polymuxSession) Open(ctx context.Context) (Stream, error) {
	st, err := p.s.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (p polymuxSession) Accept(ctx context.Context) (Stream, error) {
	st, err := p.s.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (p polymuxSession) Close() error { return p.s.Close() }
func (p polymuxSession) Native() any  { return p.s }

// Hashicorp is github.com/hashicorp/yamux. Config changed from
// DefaultConfig: LogOutput io.Discard; with Options.Window,
// MaxStreamWindowSize. It has no incoming-stream limit, so
// Options.Streams changes nothing: its AcceptBacklog (256) also caps the
// opener's streams awaiting an ACK, which the acceptor sends at Accept, so
// a yamux opener that waits for ACKs never overflows it.
var Hashicorp = Lib{
	Name:     "hashicorp/yamux",
	Protocol: polymux.Yamux,
	Client: func(conn net.Conn, o Options) (Session, error) {
		return newHashicorp(conn, o, hashicorp.Client)
	},
	Server: func(conn net.Conn, o Options) (Session, error) {
		return newHashicorp(conn, o, hashicorp.Server)
	},
}

// HashicorpConfig is the config Hashicorp uses for o.
func HashicorpConfig(o Options) *hashicorp.Config {
	cfg := hashicorp.DefaultConfig()
	cfg.LogOutput = io.Discard
	if w, libDefaults := o.window(); !libDefaults {
		cfg.MaxStreamWindowSize = w
	}
	return cfg
}

func newHashicorp(conn net.Conn, o Options, start func(io.ReadWriteCloser, *hashicorp.Config) (*hashicorp.Session, error)) (Session, error) {
	s, err := start(conn, HashicorpConfig(o))
	if err != nil {
		conn.Close()
		return nil, err
	}
	return hashicorpSession{s}, nil
}

type hashicorpSession struct{ s *hashicorp.Session }

func (h hashicorpSession) Open(context.Context) (Stream, error) {
	st, err := h.s.OpenStream()
	if err != nil {
		return nil, err
	}
	return HashicorpStream{st}, nil
}

func (h hashicorpSession) Accept(ctx context.Context) (Stream, error) {
	st, err := h.s.AcceptStreamWithContext(ctx)
	if err != nil {
		return nil, err
	}
	return HashicorpStream{st}, nil
}

func (h hashicorpSession) Close() error { return h.s.Close() }
func (h hashicorpSession) Native() any  { return h.s }

// HashicorpStream adds CloseWrite to a hashicorp/yamux stream. In v0.1.2
// Close is itself a half-close (it sends FIN and reading goes on until
// the peer's FIN), so CloseWrite is Close.
type HashicorpStream struct{ *hashicorp.Stream }

// CloseWrite sends FIN; reading goes on.
func (s HashicorpStream) CloseWrite() error { return s.Stream.Close() }

// GoYamux is github.com/libp2p/go-yamux/v5. Config changed from
// DefaultConfig: LogOutput io.Discard; with Options.Window,
// InitialStreamWindowSize and MaxStreamWindowSize (auto-tuning off); with
// Options.Streams, MaxIncomingStreams (AcceptBacklog stays 256: like
// hashicorp's, it also caps the opener's streams awaiting an ACK). No
// memory manager.
var GoYamux = Lib{
	Name:     "libp2p/go-yamux",
	Protocol: polymux.Yamux,
	Client: func(conn net.Conn, o Options) (Session, error) {
		return newGoYamux(conn, o, goyamux.Client)
	},
	Server: func(conn net.Conn, o Options) (Session, error) {
		return newGoYamux(conn, o, goyamux.Server)
	},
}

// GoYamuxConfig is the config GoYamux uses for o.
func GoYamuxConfig(o Options) *goyamux.Config {
	cfg := goyamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	if w, libDefaults := o.window(); !libDefaults {
		cfg.InitialStreamWindowSize = w
		cfg.MaxStreamWindowSize = w
	}
	if o.Streams > 0 {
		cfg.MaxIncomingStreams = uint32(o.Streams)
	}
	return cfg
}

func newGoYamux(conn net.Conn, o Options, start func(net.Conn, *goyamux.Config, func() (goyamux.MemoryManager, error)) (*goyamux.Session, error)) (Session, error) {
	s, err := start(conn, GoYamuxConfig(o), nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return goYamuxSession{s}, nil
}

type goYamuxSession struct{ s *goyamux.Session }

func (g goYamuxSession) Open(ctx context.Context) (Stream, error) {
	st, err := g.s.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (g goYamuxSession) Accept(context.Context) (Stream, error) {
	st, err := g.s.AcceptStream()
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (g goYamuxSession) Close() error { return g.s.Close() }
func (g goYamuxSession) Native() any  { return g.s }

// Smux is github.com/xtaci/smux speaking protocol version 1 or 2. Config
// changed from DefaultConfig: Version; MaxFrameSize 65535 (polymux's frame
// size on smux; default 32768); MaxReceiveBuffer = Options.SessionBuffer
// (64 MiB, like polymux's MaxSessionBuffer; default 4 MiB); with
// Options.Window, MaxStreamBuffer (v2's advertised window; default 64
// KiB). Its accept backlog (1024) is fixed; when full it stops reading
// the connection until Accept.
func Smux(version int) Lib {
	p := polymux.SmuxV1
	if version == 2 {
		p = polymux.SmuxV2
	}
	return Lib{
		Name:     fmt.Sprintf("xtaci/smux-v%d", version),
		Protocol: p,
		Client: func(conn net.Conn, o Options) (Session, error) {
			return newSmux(conn, o, version, smux.Client)
		},
		Server: func(conn net.Conn, o Options) (Session, error) {
			return newSmux(conn, o, version, smux.Server)
		},
	}
}

// SmuxConfig is the config Smux uses for version and o.
func SmuxConfig(version int, o Options) *smux.Config {
	cfg := smux.DefaultConfig()
	cfg.Version = version
	if w, libDefaults := o.window(); !libDefaults {
		cfg.MaxFrameSize = 65535
		cfg.MaxReceiveBuffer = max(o.sessionBuffer(), int(w))
		cfg.MaxStreamBuffer = int(w)
	}
	return cfg
}

func newSmux(conn net.Conn, o Options, version int, start func(io.ReadWriteCloser, *smux.Config) (*smux.Session, error)) (Session, error) {
	s, err := start(conn, SmuxConfig(version, o))
	if err != nil {
		conn.Close()
		return nil, err
	}
	return smuxSession{s}, nil
}

type smuxSession struct{ s *smux.Session }

func (x smuxSession) Open(context.Context) (Stream, error) {
	st, err := x.s.OpenStream()
	if err != nil {
		return nil, err
	}
	return SmuxStream{st}, nil
}

func (x smuxSession) Accept(context.Context) (Stream, error) {
	st, err := x.s.AcceptStream()
	if err != nil {
		return nil, err
	}
	return SmuxStream{st}, nil
}

func (x smuxSession) Close() error { return x.s.Close() }
func (x smuxSession) Native() any  { return x.s }

// SmuxStream works around two bugs of xtaci/smux v1.5.56 streams:
//
//   - Once FIN went both ways (CloseWrite, then the peer's FIN),
//     tryHalfCloseCleanup closes the stream's die channel and deletes it
//     from the session, dropping whatever it received and the application
//     has not read yet (TestHalfClose asserts that loss, which no wrapper
//     can undo). A Read waiting at that moment picks at random between
//     "FIN arrived" (io.EOF) and "died" (io.ErrClosedPipe), the class of
//     race of xtaci/smux#23. Read retries once after io.ErrClosedPipe,
//     which then returns io.EOF: the end of the stream, as it is.
//   - WriteTo returns io.EOF at the end of the stream instead of nil, so
//     io.Copy from a smux stream reports the end as an error
//     (TestSmuxWriteToReturnsEOF). SmuxStream hides WriteTo: io.Copy uses
//     Read.
type SmuxStream struct{ S *smux.Stream }

// Read reads, retrying once after smux's spurious io.ErrClosedPipe.
func (s SmuxStream) Read(p []byte) (int, error) {
	n, err := s.S.Read(p)
	if n == 0 && err == io.ErrClosedPipe {
		return s.S.Read(p)
	}
	return n, err
}

func (s SmuxStream) Write(p []byte) (int, error)        { return s.S.Write(p) }
func (s SmuxStream) Close() error                       { return s.S.Close() }
func (s SmuxStream) CloseWrite() error                  { return s.S.CloseWrite() }
func (s SmuxStream) LocalAddr() net.Addr                { return s.S.LocalAddr() }
func (s SmuxStream) RemoteAddr() net.Addr               { return s.S.RemoteAddr() }
func (s SmuxStream) SetDeadline(t time.Time) error      { return s.S.SetDeadline(t) }
func (s SmuxStream) SetReadDeadline(t time.Time) error  { return s.S.SetReadDeadline(t) }
func (s SmuxStream) SetWriteDeadline(t time.Time) error { return s.S.SetWriteDeadline(t) }

// Muxado is golang.ngrok.com/muxado/v2. Config changed from its defaults:
// with Options.Window, MaxWindowSize (default 256 KiB: both ends assume
// their own, so both must agree); with Options.Streams, AcceptBacklog
// (default 128; past it an open is refused, see Options.Streams). Its
// OpenStream is lazy: the peer's Accept returns only after the first
// Write.
var Muxado = Lib{
	Name:     "ngrok/muxado",
	Protocol: polymux.MuxadoV2,
	Client: func(conn net.Conn, o Options) (Session, error) {
		return muxadoSession{muxado.Client(conn, MuxadoConfig(o))}, nil
	},
	Server: func(conn net.Conn, o Options) (Session, error) {
		return muxadoSession{muxado.Server(conn, MuxadoConfig(o))}, nil
	},
}

// MuxadoConfig is the config Muxado uses for o: a new one every time,
// since muxado fills in the caller's Config.
func MuxadoConfig(o Options) *muxado.Config {
	cfg := &muxado.Config{}
	if w, libDefaults := o.window(); !libDefaults {
		cfg.MaxWindowSize = w
	}
	if o.Streams > 0 {
		cfg.AcceptBacklog = uint32(o.Streams)
	}
	return cfg
}

type muxadoSession struct{ s muxado.Session }

func (m muxadoSession) Open(context.Context) (Stream, error) { return wrapMuxado(m.s.OpenStream()) }

func (m muxadoSession) Accept(context.Context) (Stream, error) {
	return wrapMuxado(m.s.AcceptStream())
}

func wrapMuxado(s muxado.Stream, err error) (Stream, error) {
	if err != nil {
		return nil, err
	}
	return &muxadoStream{Stream: s}, nil
}

// muxadoStream steps around a data race in muxado v2.0.2, which the race
// detector reports at the end of tests: a write whose session dies while
// the session's writer holds its frame returns at once (writeFrame
// selects on the session's end), and the stream's next write, such as
// the FIN that Close sends, packs the stream's one reused frame header
// again while the writer may still be putting it on the connection. Once
// a write failed because the session ended, CloseWrite and Close write
// nothing more: the dead session has ended every stream already.
type muxadoStream struct {
	muxado.Stream
	dead atomic.Bool // a write failed with muxado.SessionClosed
}

func (s *muxadoStream) failed(err error) error {
	if code, _ := muxado.GetError(err); err != nil && code == muxado.SessionClosed {
		s.dead.Store(true)
	}
	return err
}

func (s *muxadoStream) Write(p []byte) (int, error) {
	n, err := s.Stream.Write(p)
	return n, s.failed(err)
}

func (s *muxadoStream) CloseWrite() error {
	if s.dead.Load() {
		return nil
	}
	return s.failed(s.Stream.CloseWrite())
}

func (s *muxadoStream) Close() error {
	if s.dead.Load() {
		return nil
	}
	return s.Stream.Close()
}

func (m muxadoSession) Close() error { return m.s.Close() }
func (m muxadoSession) Native() any  { return m.s }

// Peers are the reference libraries, in a fixed order.
func Peers() []Lib {
	return []Lib{Hashicorp, GoYamux, Smux(1), Smux(2), Muxado}
}

// Protocols are the protocols polymux speaks on the wire, in a fixed order.
func Protocols() []polymux.Protocol {
	return []polymux.Protocol{polymux.Yamux, polymux.SmuxV1, polymux.SmuxV2, polymux.MuxadoV2}
}

// All is every library: polymux in each protocol, then the peers.
func All() []Lib {
	var libs []Lib
	for _, p := range Protocols() {
		libs = append(libs, Polymux(p))
	}
	return append(libs, Peers()...)
}

// Lookup finds a library by Name, ignoring case.
func Lookup(name string) (Lib, bool) {
	for _, l := range All() {
		if strings.EqualFold(l.Name, name) {
			return l, true
		}
	}
	return Lib{}, false
}

// WrapPolymux returns s as a Session, such as one from a polymux Listener.
func WrapPolymux(s *polymux.Session) Session { return polymuxSession{s} }
