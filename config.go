package polymux

import (
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Protocol selects the wire protocol of a session.
type Protocol uint8

const (
	// Auto: a client speaks Yamux; a server detects the peer's protocol
	// from its first frame.
	Auto Protocol = iota
	// Yamux is hashicorp/yamux's spec.md, also spoken by libp2p, Consul,
	// Nomad, go-plugin and frp.
	Yamux
	// SmuxV1 is xtaci/smux protocol version 1 (kcptun and friends).
	SmuxV1
	// SmuxV2 is xtaci/smux protocol version 2 (per-stream windows).
	SmuxV2
	// MuxadoV2 is golang.ngrok.com/muxado/v2.
	MuxadoV2
)

var protocolNames = [...]string{"auto", "yamux", "smux1", "smux2", "muxado2"}

// String returns "auto", "yamux", "smux1", "smux2" or "muxado2".
func (p Protocol) String() string {
	if int(p) < len(protocolNames) {
		return protocolNames[p]
	}
	return fmt.Sprintf("Protocol(%d)", uint8(p))
}

// ParseProtocol is the inverse of String, ignoring case.
func ParseProtocol(s string) (Protocol, error) {
	for i, name := range protocolNames {
		if strings.EqualFold(s, name) {
			return Protocol(i), nil
		}
	}
	return 0, fmt.Errorf("polymux: unknown protocol %q (want one of %s)", s, strings.Join(protocolNames[:], ", "))
}

// Config tunes a session. A nil *Config means DefaultConfig(), and a zero
// field means that field's default, so &Config{Protocol: SmuxV2} is valid.
// A Config is read once by Client or Server and may be reused.
type Config struct {
	// Protocol is the wire protocol. Default Auto.
	Protocol Protocol

	// AcceptBacklog is how many peer-opened streams may wait for Accept.
	// What happens past it depends on what the protocol can say:
	//   - yamux: this side's opens wait while AcceptBacklog of them await
	//     the peer's acknowledgement, and a peer's open past it is refused
	//     with RST, which its opener sees;
	//   - muxado: nothing; a waiting stream counts toward
	//     MaxIncomingStreams, and its data toward MaxSessionBuffer;
	//   - smux, which cannot refuse an open: the session stops reading
	//     until the application accepts one, as xtaci/smux does. An
	//     application that stops accepting while its peer keeps opening
	//     stalls its own smux session, and so can a serial loop that
	//     accepts a stream and serves it before accepting the next.
	// Default 256.
	AcceptBacklog int
	// MaxIncomingStreams is how many peer-opened streams may be open at
	// once, counting those waiting for Accept; past it new ones are
	// refused: with RST (yamux, muxado), or on smux, which has no
	// refusal, with an immediate FIN, their data discarded. Default 1000.
	MaxIncomingStreams int

	// InitialStreamWindow is the receive window a stream starts with. Every
	// protocol assumes 256 KiB at open, so it may not be smaller; a larger
	// one is granted to the peer at open. Default 256 KiB.
	InitialStreamWindow uint32
	// MaxStreamWindow is the ceiling for receive-window auto-tuning; equal
	// to InitialStreamWindow it disables tuning. Default 16 MiB.
	MaxStreamWindow uint32
	// MaxSessionBuffer bounds the received-but-unread bytes held across all
	// streams of a session. A stream whose data would exceed it is reset.
	// Default 64 MiB.
	MaxSessionBuffer int64
	// MaxFrameSize is the largest DATA payload this side sends (further
	// capped by what the protocol can carry). Default 64 KiB.
	MaxFrameSize int

	// KeepAliveInterval is how long the connection may be silent before
	// liveness is probed; < 0 disables probing. Default 30 s.
	KeepAliveInterval time.Duration
	// KeepAliveTimeout: no sign of life for this long after a probe closes
	// the session with ErrKeepAliveTimeout. Default 30 s.
	KeepAliveTimeout time.Duration
	// WriteTimeout bounds one write to the underlying connection; a write
	// that takes longer closes the session. Default 10 s.
	WriteTimeout time.Duration
	// StreamOpenTimeout is how long an opened stream may wait for the
	// peer's acknowledgement (yamux) before it alone is reset; < 0
	// disables. Default 75 s.
	StreamOpenTimeout time.Duration
	// StreamCloseTimeout is how long a stream closed by this side waits
	// for the peer's close before it is reset; < 0 disables. Default 5 min.
	StreamCloseTimeout time.Duration

	// CloseLinger bounds how long Session.Close (and the end of Shutdown)
	// spends delivering what was written: the data every Write reported
	// and the FINs, then resets for the streams the application never
	// closed, then GoAway. Close never blocks longer, even against a peer
	// that does not read. Negative closes the connection at once, losing
	// whatever is still queued. Default 5 s.
	CloseLinger time.Duration

	// DetectTimeout bounds how long a server in Auto mode waits for the
	// client's first bytes to tell its protocol; the connection is closed
	// if none arrive in time. A Listener also bounds the TLS handshake by
	// it, in every mode: handshake and first bytes together get this long
	// from the moment the connection is accepted. Default 10 s.
	DetectTimeout time.Duration
	// MaxDetecting bounds the connections a Listener holds that are still
	// in the TLS handshake or still detecting their protocol (see
	// Listener). A connection accepted past it closes the oldest such
	// connection, so clients that stay silent or send slowly never stop
	// the Listener from accepting. Default 1024.
	MaxDetecting int

	// MemoryManager, if set, is called once for every stream, opened by
	// either side, for the stream's own MemoryManager, in go-yamux's shape
	// (a go-libp2p resource scope's BeginSpan fits). The stream's initial
	// window is reserved at once, at priority 255: if that is denied, a
	// local OpenStream fails and a peer's open is refused. Window growth is
	// reserved at priority 128, and a denial leaves the window as it is.
	// Everything is released, and Done called, when the stream ends.
	// MaxSessionBuffer applies as well. Default nil: MaxSessionBuffer alone.
	MemoryManager func() (MemoryManager, error)

	// Logger receives session events; nil discards them.
	Logger *slog.Logger
}

// MemoryManager accounts one stream's memory against an outside budget,
// in go-yamux's shape. Its methods are called from the session's
// goroutines and from stream calls, one at a time per stream.
type MemoryManager interface {
	// ReserveMemory takes size bytes at priority prio (255 for a stream's
	// initial window, 128 for window growth) or says why not.
	ReserveMemory(size int, prio uint8) error
	// ReleaseMemory gives back size bytes taken by ReserveMemory.
	ReleaseMemory(size int)
	// Done ends the stream's accounting; nothing is reserved after it.
	Done()
}

// The defaults of DefaultConfig.
const (
	defaultAcceptBacklog      = 256
	defaultMaxIncomingStreams = 1000
	defaultInitialWindow      = 256 << 10
	defaultMaxStreamWindow    = 16 << 20
	defaultMaxSessionBuffer   = 64 << 20
	defaultMaxFrameSize       = 64 << 10
	defaultKeepAliveInterval  = 30 * time.Second
	defaultKeepAliveTimeout   = 30 * time.Second
	defaultWriteTimeout       = 10 * time.Second
	defaultStreamOpenTimeout  = 75 * time.Second
	defaultStreamCloseTimeout = 5 * time.Minute
	defaultDetectTimeout      = 10 * time.Second
	defaultCloseLinger        = 5 * time.Second
	defaultMaxDetecting       = 1024
	// maxFrameSizeLimit is the largest MaxFrameSize accepted: bigger frames
	// only hurt the latency of other streams.
	maxFrameSizeLimit = 16<<20 - 1
	// protocolWindow is the window every protocol assumes at open.
	protocolWindow = 256 << 10
)

// DefaultConfig returns a Config with every field set to its default.
func DefaultConfig() *Config {
	c := &Config{}
	c.fill()
	return c
}

// fill replaces zero fields with their defaults.
func (c *Config) fill() {
	setDefault(&c.AcceptBacklog, defaultAcceptBacklog)
	setDefault(&c.MaxIncomingStreams, defaultMaxIncomingStreams)
	setDefault(&c.InitialStreamWindow, defaultInitialWindow)
	setDefault(&c.MaxStreamWindow, max(defaultMaxStreamWindow, c.InitialStreamWindow))
	setDefault(&c.MaxSessionBuffer, defaultMaxSessionBuffer)
	setDefault(&c.MaxFrameSize, defaultMaxFrameSize)
	setDefault(&c.KeepAliveInterval, defaultKeepAliveInterval)
	setDefault(&c.KeepAliveTimeout, defaultKeepAliveTimeout)
	setDefault(&c.WriteTimeout, defaultWriteTimeout)
	setDefault(&c.StreamOpenTimeout, defaultStreamOpenTimeout)
	setDefault(&c.StreamCloseTimeout, defaultStreamCloseTimeout)
	setDefault(&c.DetectTimeout, defaultDetectTimeout)
	setDefault(&c.CloseLinger, defaultCloseLinger)
	setDefault(&c.MaxDetecting, defaultMaxDetecting)
}

func setDefault[T comparable](field *T, def T) {
	var zero T
	if *field == zero {
		*field = def
	}
}

// Validate reports the first field whose value cannot work, naming it.
// Zero fields are valid: they mean the default.
func (c *Config) Validate() error {
	if c == nil {
		return nil
	}
	d := *c
	d.fill()
	switch {
	case d.Protocol > MuxadoV2:
		return fmt.Errorf("polymux: Config.Protocol: unknown protocol %d", d.Protocol)
	case d.AcceptBacklog < 0:
		return fmt.Errorf("polymux: Config.AcceptBacklog must not be negative, got %d", d.AcceptBacklog)
	case d.MaxIncomingStreams < 0:
		return fmt.Errorf("polymux: Config.MaxIncomingStreams must not be negative, got %d", d.MaxIncomingStreams)
	case d.InitialStreamWindow < protocolWindow:
		return fmt.Errorf("polymux: Config.InitialStreamWindow must be at least %d (the window every protocol assumes), got %d", protocolWindow, d.InitialStreamWindow)
	case d.MaxStreamWindow < d.InitialStreamWindow:
		return fmt.Errorf("polymux: Config.MaxStreamWindow (%d) must not be below InitialStreamWindow (%d)", d.MaxStreamWindow, d.InitialStreamWindow)
	case d.MaxSessionBuffer < int64(d.InitialStreamWindow):
		return fmt.Errorf("polymux: Config.MaxSessionBuffer (%d) must hold at least one InitialStreamWindow (%d)", d.MaxSessionBuffer, d.InitialStreamWindow)
	case d.MaxFrameSize < 1024 || d.MaxFrameSize > maxFrameSizeLimit:
		return fmt.Errorf("polymux: Config.MaxFrameSize must be within [1024, %d], got %d", maxFrameSizeLimit, d.MaxFrameSize)
	case d.KeepAliveTimeout < 0:
		return fmt.Errorf("polymux: Config.KeepAliveTimeout must not be negative, got %v", d.KeepAliveTimeout)
	case d.DetectTimeout < 0:
		return fmt.Errorf("polymux: Config.DetectTimeout must not be negative, got %v", d.DetectTimeout)
	case d.MaxDetecting < 0:
		return fmt.Errorf("polymux: Config.MaxDetecting must not be negative, got %d", d.MaxDetecting)
	case d.WriteTimeout < 0:
		return fmt.Errorf("polymux: Config.WriteTimeout must not be negative, got %v", d.WriteTimeout)
	}
	return nil
}
