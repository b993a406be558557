package interop

import (
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/polymux/polymux"
	"github.com/polymux/polymux/internal/loopback"
	"github.com/polymux/polymux/interop/internal/muxes"
)

// TestAutoListener: one polymux Listener in Auto mode, on one port, serves
// a client of every peer library and a polymux client of every protocol,
// all at once. Each server session must detect its client's protocol and
// echo 4 streams.
func TestAutoListener(t *testing.T) {
	checkLeaks(t)
	ln, err := polymux.Listen("tcp", "127.0.0.1:0", &polymux.Config{Protocol: polymux.Auto})
	if err != nil {
		t.Fatal(err)
	}
	clients := muxes.Peers()
	for _, p := range muxes.Protocols() {
		clients = append(clients, muxes.Polymux(p))
	}

	e := &env{t: t}
	var mu sync.Mutex
	var sessions []muxes.Session // both sides
	var servers []*polymux.Session
	e.closeAll = func() {
		e.closeOnce.Do(func() {
			ln.Close()
			mu.Lock()
			defer mu.Unlock()
			for _, s := range sessions {
				s.Close()
			}
		})
	}
	e.watchdog(time.Minute)

	e.spawn(func() {
		for {
			s, err := ln.Accept()
			if err != nil {
				return
			}
			ms := muxes.WrapPolymux(s)
			mu.Lock()
			sessions = append(sessions, ms)
			mu.Unlock()
			e.serveEcho(ms)
			mu.Lock()
			servers = append(servers, s)
			mu.Unlock()
		}
	})

	var wg sync.WaitGroup
	for _, lib := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Errorf("%s: dial: %v", lib.Name, err)
				return
			}
			s, err := lib.Client(conn, muxes.Options{})
			if err != nil {
				t.Errorf("%s: %v", lib.Name, err)
				return
			}
			mu.Lock()
			sessions = append(sessions, s)
			mu.Unlock()
			sub := &env{t: t, ctx: e.ctx}
			t.Run(lib.Name, func(t *testing.T) {
				sub.t = t
				sub.runEchoClients(s, 4, 256<<10)
			})
		}()
	}
	wg.Wait()

	// Every client got its echoes, so every server session has been
	// accepted and knows its protocol.
	var got []polymux.Protocol
	mu.Lock()
	for _, s := range servers {
		got = append(got, s.Protocol())
	}
	mu.Unlock()
	var want []polymux.Protocol
	for _, lib := range clients {
		want = append(want, lib.Protocol)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("the Listener detected %v, want %v", names(got), names(want))
	}
}

func names(ps []polymux.Protocol) string {
	return fmt.Sprint(ps)
}

// TestAutoServer: polymux.Server itself (no Listener) in Auto mode detects
// each peer client's protocol from its first bytes.
func TestAutoServer(t *testing.T) {
	for _, lib := range muxes.Peers() {
		t.Run(lib.Name, func(t *testing.T) {
			checkLeaks(t)
			cc, sc := loopback.MustTCPPair(t)
			server, err := polymux.Server(sc, &polymux.Config{Protocol: polymux.Auto})
			if err != nil {
				cc.Close()
				t.Fatal(err)
			}
			client, err := lib.Client(cc, muxes.Options{})
			if err != nil {
				server.Close()
				t.Fatal(err)
			}
			e := &env{t: t, client: client, server: muxes.WrapPolymux(server)}
			e.closeAll = func() {
				e.closeOnce.Do(func() {
					client.Close()
					server.Close()
				})
			}
			e.watchdog(30 * time.Second)
			e.serveEcho(e.server)
			e.runEchoClients(client, 4, 64<<10)
			if got := server.Protocol(); got != lib.Protocol {
				t.Errorf("Server in Auto mode speaks %v to a %s client, want %v", got, lib.Name, lib.Protocol)
			}
		})
	}
}
