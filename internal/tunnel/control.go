package tunnel

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/polymux/polymux"
)

// Timeouts bound every wait of a tunnel session. A zero field means its
// default.
type Timeouts struct {
	// Auth bounds the TLS handshake and the authentication together.
	// Default 10 s.
	Auth time.Duration
	// Heartbeat is how often each side pings the other on the control
	// stream. Default 5 s.
	Heartbeat time.Duration
	// HeartbeatTimeout: a side that hears nothing on the control stream
	// for this long closes the session. It must exceed Heartbeat. Default
	// 15 s.
	HeartbeatTimeout time.Duration
	// Dial bounds the dial of a forward's target, and the wait for the
	// other side's answer to a new forwarded connection. Default 10 s.
	Dial time.Duration
	// Write bounds one message written on the control stream. Default 10 s.
	Write time.Duration
}

// Defaults of Timeouts.
const (
	defaultAuthTimeout      = 10 * time.Second
	defaultHeartbeat        = 5 * time.Second
	defaultHeartbeatTimeout = 15 * time.Second
	defaultDialTimeout      = 10 * time.Second
	defaultWriteTimeout     = 10 * time.Second
)

// withDefaults fills the zero fields.
func (t Timeouts) withDefaults() Timeouts {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Auth, defaultAuthTimeout)
	def(&t.Heartbeat, defaultHeartbeat)
	def(&t.HeartbeatTimeout, max(defaultHeartbeatTimeout, 3*t.Heartbeat))
	def(&t.Dial, defaultDialTimeout)
	def(&t.Write, defaultWriteTimeout)
	return t
}

// Validate reports a combination that cannot work.
func (t Timeouts) Validate() error {
	t = t.withDefaults()
	if t.HeartbeatTimeout <= t.Heartbeat {
		return fmt.Errorf("heartbeat timeout %v must exceed the heartbeat interval %v", t.HeartbeatTimeout, t.Heartbeat)
	}
	return nil
}

// ErrHeartbeatTimeout ends a session whose peer stopped answering on the
// control stream.
var ErrHeartbeatTimeout = errors.New("tunnel: heartbeat timeout: the peer stopped answering")

// control is the control stream of an authenticated session: messages
// out from any goroutine, one at a time, and a read loop that answers
// pings and hands everything else on.
type control struct {
	st *polymux.Stream
	to Timeouts

	wmu sync.Mutex // serialises writes, so messages never interleave
}

// send writes m, bounded by the write timeout: a peer that stops reading
// cannot block the caller for longer.
func (c *control) send(m *message) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.st.SetWriteDeadline(time.Now().Add(c.to.Write))
	return writeMessage(c.st, m)
}

// run pings every Heartbeat and reads messages until the stream fails or
// nothing has arrived for HeartbeatTimeout. Pings are answered here; every
// other message goes to handle, in order, on this goroutine. run returns
// why it stopped: ErrHeartbeatTimeout, the stream's error, or io.EOF once
// the peer closed the control stream.
func (c *control) run(handle func(*message)) error {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(c.to.Heartbeat)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if c.send(&message{Type: msgPing}) != nil {
					return // the read side notices the same failure, or the silence
				}
			}
		}
	}()
	for {
		c.st.SetReadDeadline(time.Now().Add(c.to.HeartbeatTimeout))
		m, err := readMessage(c.st)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return ErrHeartbeatTimeout
			}
			return err
		}
		switch m.Type {
		case msgPing:
			go c.send(&message{Type: msgPong}) // off the read loop: a slow write must not stall reading
		case msgPong:
		default:
			handle(m)
		}
	}
}
