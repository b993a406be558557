package tunnel

import (
	"testing"
)

func TestLocalForwardEchoes(t *testing.T) {
	_, addr, fp, _ := newServer(t, ServerConfig{})
	echo := echoServer(t)
	cli, cliLog, _ := startClient(t, addr, fp, ClientConfig{Local: []Forward{{Bind: "127.0.0.1:0", Target: echo}}})
	cliLog.wait(t, 1, "session up")
	if err := echoThrough(t, cli.Addrs()[0].String(), 1<<20); err != nil {
		t.Fatal(err)
	}
}
