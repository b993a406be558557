// Package interop holds polymux's interoperability tests against the
// reference implementations of each protocol it speaks: hashicorp/yamux
// v0.1.2, libp2p/go-yamux v5.1.0, xtaci/smux v1.5.56 (protocol versions 1
// and 2) and ngrok muxado v2.0.2; nettest.TestConn on polymux streams; and
// the side-by-side benchmark runner cmd/muxbench.
//
// It is a separate module so that the polymux module itself depends on
// nothing outside the standard library. Run it with
//
//	cd interop && go test -race ./...
//	cd interop && go run ./cmd/muxbench
package interop
