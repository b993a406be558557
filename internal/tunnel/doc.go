// Package tunnel is polymux's tunnel: ssh-style local (-L), reverse (-R)
// and SOCKS5 (-D) forwarding over one polymux session, always inside TLS,
// authenticated by a shared token. cmd/polymux parses flags and wires a
// Server or a Client; everything else lives here.
//
// # Streams
//
// The client opens the first stream of every session: the control
// stream. On it the two sides authenticate (auth.go), the client registers
// its reverse forwards, and both send heartbeats, so that a dead path or a
// hung peer ends the session within HeartbeatTimeout on every protocol
// (muxado has no ping of its own). Until authentication succeeds the
// server serves nothing else.
//
// Every forwarded connection is one more stream. Its first message names
// what it is for (a target to dial, or the reverse forward a connection
// arrived on) and the other side answers with one reply; after that the
// stream carries the connection's bytes, with half-close passed on both
// ways (relay.go). A failure ends that stream alone, never the session.
//
// # Messages
//
// Every message, on the control stream and at the head of a data stream,
// is a two-byte big-endian length followed by that many bytes of JSON
// (wire.go). Reading exactly one message never consumes the bytes after
// it, so a data stream's payload can follow its header at once.
package tunnel
