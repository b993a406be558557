package polymux

import (
	"sync"
	"time"

	"github.com/polymux/polymux/internal/wire"
)

// nopInterval is how often a NOP goes out on a connection this side has
// left silent, for protocols whose peers time out silent sessions (smux
// closes after 30 s without a frame).
const nopInterval = 10 * time.Second

// keepalive is the session's liveness, on one timer: it sends a NOP where
// the peer needs one to keep us alive (smux) when this side has been
// silent, probes a peer that has been silent for KeepAliveInterval (a ping
// where the protocol answers pings, a NOP otherwise), and ends the session
// with ErrKeepAliveTimeout if KeepAliveTimeout more passes with nothing
// received. Any frame received proves the peer alive, so heavy load never
// looks like death, and probes go out only on a quiet connection.
type keepalive struct {
	s *Session

	mu      sync.Mutex // guards the fields below
	timer   *time.Timer
	probing bool  // a probe is unanswered
	probeAt int64 // s.now() when it went out
	stopped bool
}

// start arms the keepalive once the protocol is known; muxado, which can
// neither probe nor needs NOPs, has none.
func (k *keepalive) start(s *Session) {
	k.s = s
	if !s.caps.KeepAliveNop && !k.probes() {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.stopped {
		k.timer = time.AfterFunc(min(k.nopEvery(), time.Duration(max(s.cfg.KeepAliveInterval, 0))), k.tick)
	}
}

// stop ends the keepalive.
func (k *keepalive) stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.stopped = true
	if k.timer != nil {
		k.timer.Stop()
	}
}

// probes reports whether this session checks its peer's liveness.
func (k *keepalive) probes() bool {
	s := k.s
	return s.cfg.KeepAliveInterval >= 0 && (s.caps.PingReply || s.caps.KeepAliveNop)
}

// nopEvery is how often NOPs go out on a silent connection.
func (k *keepalive) nopEvery() time.Duration {
	if i := k.s.cfg.KeepAliveInterval; i > 0 && i < nopInterval {
		return i
	}
	return nopInterval
}

// tick runs when the timer fires: it sends a NOP if due, checks the peer's
// liveness, and re-arms for the next of those two moments.
func (k *keepalive) tick() {
	s := k.s
	k.mu.Lock()
	if k.stopped {
		k.mu.Unlock()
		return
	}
	now := s.now()
	next := int64(1<<63 - 1)
	if s.caps.KeepAliveNop {
		every := int64(k.nopEvery())
		sent := s.w.enc.lastSend.Load()
		if now-sent >= every {
			s.w.sched.nopNow()
			sent = now
		}
		next = sent + every
	}
	alive := true
	if k.probes() {
		var at int64
		at, alive = k.liveness(now)
		next = min(next, at)
	}
	if alive {
		k.timer.Reset(time.Duration(max(next-now, 0)))
	}
	k.mu.Unlock()
	if !alive {
		s.shutdown(ErrKeepAliveTimeout, wire.CodeNone)
	}
}

// liveness treats any frame received as proof of life: a probe goes out
// only after KeepAliveInterval of silence, and the peer is dead if
// KeepAliveTimeout more passes with nothing received. It returns when to
// check next, and false if the peer is dead. k.mu must be held.
func (k *keepalive) liveness(now int64) (int64, bool) {
	s := k.s
	last := s.lastRecv.Load()
	interval, timeout := int64(s.cfg.KeepAliveInterval), int64(s.cfg.KeepAliveTimeout)
	if s.paused.Load() {
		// Not reading, by this side's choice: the peer's silence proves
		// nothing. The pause's end counts as a sign of life.
		k.probing = false
		return now + interval, true
	}
	if k.probing {
		if last < k.probeAt {
			if now-k.probeAt >= timeout {
				return 0, false
			}
			return k.probeAt + timeout, true
		}
		k.probing = false
	}
	if now-last < interval {
		return last + interval, true
	}
	k.probing, k.probeAt = true, now
	if s.caps.PingReply {
		s.startPing()
	} else {
		s.w.sched.nopNow()
	}
	return now + timeout, true
}
