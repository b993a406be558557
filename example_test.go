package polymux_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"

	"github.com/polymux/polymux"
)

// A server that echoes every stream, and a client that opens a stream,
// writes, half-closes and reads the echo to EOF. This is the README example.
func Example() {
	cfg := &polymux.Config{Protocol: polymux.Yamux}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	served := make(chan struct{})
	go func() { // server: echo every stream until the client closes the session
		defer close(served)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		sess, err := polymux.Server(conn, cfg)
		if err != nil {
			return
		}
		defer sess.Close()
		for {
			st, err := sess.AcceptStream(context.Background())
			if err != nil {
				return
			}
			go func() { io.Copy(st, st); st.Close() }()
		}
	}()

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	sess, err := polymux.Client(conn, cfg)
	if err != nil {
		log.Fatal(err)
	}
	st, err := sess.OpenStream(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	st.Write([]byte("hello, polymux"))
	st.CloseWrite() // the server reads EOF after these bytes
	reply, err := io.ReadAll(st)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(reply))
	sess.Close()
	<-served
	// Output: hello, polymux
}

// One Listener serves yamux, smux and muxado clients on the same port: it
// detects each client's protocol from its first bytes.
func ExampleListen() {
	ln, err := polymux.Listen("tcp", "127.0.0.1:0", nil) // Protocol Auto
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			sess, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer sess.Close()
				for {
					st, err := sess.AcceptStream(context.Background())
					if err != nil {
						return
					}
					go func() { io.Copy(st, st); st.Close() }()
				}
			}()
		}
	}()

	for _, p := range []polymux.Protocol{polymux.Yamux, polymux.SmuxV2, polymux.MuxadoV2} {
		sess, err := polymux.Dial("tcp", ln.Addr().String(), &polymux.Config{Protocol: p})
		if err != nil {
			log.Fatal(err)
		}
		st, err := sess.OpenStream(context.Background())
		if err != nil {
			log.Fatal(err)
		}
		fmt.Fprintf(st, "hello over %v", p)
		st.CloseWrite()
		reply, err := io.ReadAll(st)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(string(reply))
		sess.Close()
	}
	// Output:
	// hello over yamux
	// hello over smux2
	// hello over muxado2
}
