// Package polymux carries many independent, bidirectional byte streams
// over one reliable connection (TCP, TLS, a Unix socket, KCP, net.Pipe).
//
// One engine speaks four wire protocols byte for byte, so a polymux
// program talks to existing peers: yamux (hashicorp/yamux and libp2p's
// go-yamux), smux v1 and v2 (xtaci/smux) and muxado v2 (ngrok). A server
// in Auto mode, or a Listener, detects each client's protocol from its
// first bytes and serves all four on one port.
//
// A Stream is a net.Conn; a Session is a net.Listener. A session runs two
// goroutines, a read loop and a writer, and none per stream. Control
// frames (window updates, pings, resets, GoAway) go ahead of data, and
// data from different streams is interleaved round robin, so a slow stream
// never holds up the others, and liveness never waits behind bulk data.
//
// # Memory and flow control
//
// Every stream has a receive window (256 KiB at first, as every protocol
// assumes) that grows by auto-tuning up to Config.MaxStreamWindow when it,
// and not the reader, limits throughput. All streams of a session share
// Config.MaxSessionBuffer: received-but-unread data and window growth are
// charged to it, growth is granted only while it has room, and data that
// would exceed it resets the stream (or, on smux, waits for the
// application to read). A Write copies at most the peer's window into the
// stream and never more than 256 KiB, so a peer that stops reading costs a
// bounded amount of memory; a Write of 256 KiB or more copies nothing and
// goes to the connection straight from the caller's slice (except on smux
// v1, which has no windows), returning once the connection has taken it.
// A Read waiting with room for the next payload gets it placed straight
// in its buffer once it has all been received.
//
// # What each protocol lacks
//
// The engine is the same for every protocol; where a protocol cannot
// express something, polymux does the documented next best thing:
//
//   - smux v1 has no per-stream window: only MaxSessionBuffer bounds what
//     the peer may send, so one stream nobody reads can stall the whole
//     session once it holds MaxSessionBuffer. That is the protocol's limit.
//   - smux (v1 and v2) has no reset, no refusal, no ping reply and no
//     GoAway: Reset sends FIN and drops further data, Ping returns
//     errors.ErrUnsupported, GoAway refuses new streams locally and returns
//     an error wrapping errors.ErrUnsupported. Liveness comes from inbound
//     traffic, and NOPs go out often enough that smux peers never time
//     polymux out.
//   - smux cannot refuse an open, so a full accept queue is never a reason
//     to drop one: while Config.AcceptBacklog peer-opened streams wait for
//     Accept, the session stops reading until the application accepts
//     one, as xtaci/smux does (keepalive and WriteTimeout do not count
//     that pause against the peer). An application that stops accepting
//     while its peer keeps opening therefore stalls its own smux session,
//     and so can a loop that accepts a stream and serves it to the end
//     before accepting the next: serve each stream in its own goroutine.
//     MaxIncomingStreams never pauses the session, since the FINs that
//     would free a place sit behind the waiting open: an open past it, or
//     after GoAway, Shutdown or the listener view's Close, is answered at
//     once with FIN, its data discarded, and counted in
//     Stats.StreamsRefused. The opener cannot tell that from a stream
//     that was served and closed: that is the protocol's limit.
//   - muxado has no ping and no keepalive frame: Ping returns
//     errors.ErrUnsupported, and a silent peer cannot be told from an idle
//     one, so keepalive does not close muxado sessions.
//   - yamux peers from libp2p (go-yamux) close their whole session when
//     they receive GoAway, even with code 0.
//
// # Ending streams and sessions
//
// A byte a Write reported is delivered, or the writer learns otherwise:
//
//   - Stream.Close and CloseWrite never block; what was written goes out
//     before the FIN, as long as the session lives.
//   - Session.Close wakes every blocked call at once, then delivers, within
//     Config.CloseLinger (5 s), every byte any Write reported and the FINs
//     of the streams the application closed, then resets the streams it
//     never closed, then sends GoAway, and keeps the connection open,
//     still reading, until the peer has it all or the linger ends. Bytes
//     the peer has not received by then are lost: a peer that does not
//     read cannot hold Close longer.
//   - Session.Shutdown, like http.Server.Shutdown, first stops accepting
//     (the streams waiting for Accept and every later open are refused in
//     a way the opener sees: yamux RST, muxado GOAWAY then RST, smux FIN),
//     lets the open streams finish until its context is done, then closes
//     as Close does.
//   - Stream.Reset drops what the stream had not yet sent, and what it
//     received and was not read, on both sides.
//
// A Session is a net.Listener whose Close ends everything. For a server's
// graceful shutdown, serve the listener view instead, whose Close only
// stops accepting:
//
//	hs := &http.Server{Handler: h}
//	go hs.Serve(sess.Listener())
//	...
//	hs.Shutdown(ctx)   // requests in flight finish
//	sess.Shutdown(ctx) // then the session ends, delivering what was written
//
// A server in Auto mode learns the protocol from the client's first frame,
// so a client that never opens a stream is closed after
// Config.DetectTimeout; servers whose clients only accept streams must set
// the Protocol explicitly.
//
// # Listener
//
// A Listener serves a session on every connection it accepts. In Auto
// mode it needs the client's first bytes to know the protocol, so a client
// that only accepts streams the server opens, and sends nothing first,
// needs a Listener with an explicit Protocol. The TLS handshake (ListenTLS)
// and the wait for those bytes run in the Listener before any session
// exists, bounded by Config.DetectTimeout and, in number, by
// Config.MaxDetecting, past which the oldest such connection is closed:
// silent or slow clients cost a socket and a goroutine each and never stop
// the Listener from accepting. Only sessions waiting for Accept pause it,
// when an application stops calling Accept (see Listener).
package polymux
