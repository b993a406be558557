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
