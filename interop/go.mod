module github.com/polymux/polymux/interop

go 1.26.0

require (
	github.com/hashicorp/yamux v0.1.2
	github.com/libp2p/go-yamux/v5 v5.1.0
	github.com/polymux/polymux v0.0.0-00010101000000-000000000000
	github.com/xtaci/smux v1.5.56
	golang.ngrok.com/muxado/v2 v2.0.2
	golang.org/x/net v0.62.0
	google.golang.org/grpc v1.85.0
)

require (
	github.com/libp2p/go-buffer-pool v0.0.2 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)

replace github.com/polymux/polymux => ../
