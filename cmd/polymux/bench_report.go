package main

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/polymux/polymux"
)

// benchOutput is the -json document.
type benchOutput struct {
	GOMAXPROCS      int           `json:"gomaxprocs"`
	DurationSeconds float64       `json:"duration_seconds"`
	Streams         int           `json:"streams"`
	WriteSize       int           `json:"write_size,omitempty"` // the -size, if only one
	WriteSizes      []int         `json:"write_sizes"`          // every -size, in the order of the workloads
	Runs            []protocolRun `json:"runs"`
}

// protocolRun is the suite's outcome for one protocol.
type protocolRun struct {
	Protocol  string           `json:"protocol"`
	Workloads []workloadReport `json:"workloads,omitempty"`
	Session   *sessionTotals   `json:"session,omitempty"`
}

// workloadReport pairs the polymux and raw TCP figures of a workload.
type workloadReport struct {
	Name      string          `json:"name"`
	WriteSize int             `json:"write_size,omitempty"` // bytes per Write, polymux and raw TCP alike; bulk workloads only
	Polymux   *workloadResult `json:"polymux,omitempty"`
	TCP       *workloadResult `json:"tcp,omitempty"`
	Ratio     float64         `json:"ratio,omitempty"` // polymux / raw TCP of MB/s or op/s
	Error     string          `json:"error,omitempty"`
}

// workloadResult is what one workload measured on one transport.
type workloadResult struct {
	Bytes     int64         `json:"bytes,omitempty"` // received by the readers
	Ops       int64         `json:"ops,omitempty"`   // completed rpcs
	Seconds   float64       `json:"seconds"`
	MBps      float64       `json:"mb_per_s,omitempty"`
	OpsPerSec float64       `json:"ops_per_s,omitempty"`
	P50       time.Duration `json:"p50_ns,omitempty"`
	P99       time.Duration `json:"p99_ns,omitempty"`
}

// figure is the number compared between polymux and raw TCP.
func (r *workloadResult) figure() float64 {
	if r.Ops > 0 {
		return r.OpsPerSec
	}
	return r.MBps
}

// sessionTotals sums the Stats of both ends of every polymux session of a
// run, taken once each workload has finished.
type sessionTotals struct {
	Sessions       int    `json:"sessions"`
	StreamsOpened  uint64 `json:"streams_opened"`
	StreamsRefused uint64 `json:"streams_refused"`
	BytesSent      uint64 `json:"bytes_sent"`
	FramesSent     uint64 `json:"frames_sent"`
	FramesReceived uint64 `json:"frames_received"`
	LeftOpen       int    `json:"streams_left_open"` // streams still in a session's table when the workload ended
}

// add adds one session's counters to the totals.
func (t *sessionTotals) add(st polymux.Stats) {
	t.StreamsOpened += st.StreamsOpened
	t.StreamsRefused += st.StreamsRefused
	t.BytesSent += st.BytesSent
	t.FramesSent += st.FramesSent
	t.FramesReceived += st.FramesReceived
	t.LeftOpen += st.ActiveStreams
}

// printTable prints one protocol's results: a row per workload with both
// figures and their ratio, then the session totals.
func (b *bencher) printTable(w io.Writer, rep protocolRun) {
	fmt.Fprintf(w, "polymux bench: protocol %s over TCP 127.0.0.1, %v per workload, bulk writes of %s (raw TCP alike), GOMAXPROCS=%d\n",
		rep.Protocol, b.duration, sizeNames(b.sizes), runtime.GOMAXPROCS(0))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "workload\tpolymux\traw TCP\tratio\n")
	for _, wr := range rep.Workloads {
		ratio := "-"
		if wr.Ratio > 0 {
			ratio = fmt.Sprintf("%.2f", wr.Ratio)
		}
		extra := ""
		if p, t := wr.Polymux, wr.TCP; (p != nil && p.Ops > 0) || (t != nil && t.Ops > 0) {
			extra = fmt.Sprintf("p50 %s p99 %s (raw p50 %s p99 %s)", latency(p, false), latency(p, true), latency(t, false), latency(t, true))
		}
		if wr.Error != "" {
			extra = strings.TrimSpace(extra + "  error: " + wr.Error)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s", wr.Name, figure(wr.Polymux), figure(wr.TCP), ratio)
		if extra != "" {
			fmt.Fprintf(tw, "\t%s", extra)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	if s := rep.Session; s != nil {
		fmt.Fprintf(w, "session (both ends, all workloads): %d streams opened, %s payload, %d frames sent (%s/frame), %d refused, %d left open\n",
			s.StreamsOpened, bytesString(s.BytesSent), s.FramesSent, bytesString(s.BytesSent/max(s.FramesSent, 1)), s.StreamsRefused, s.LeftOpen)
	}
}

// figure formats a result's headline number, or "error" for none.
func figure(r *workloadResult) string {
	switch {
	case r == nil:
		return "error"
	case r.Ops > 0:
		return fmt.Sprintf("%.0f op/s", r.OpsPerSec)
	default:
		return fmt.Sprintf("%.0f MB/s", r.MBps)
	}
}

// latency formats a result's p50 (or p99) in a unit that suits it, or "-"
// where there is none.
func latency(r *workloadResult, p99 bool) string {
	if r == nil || r.Ops == 0 {
		return "-"
	}
	d := r.P50
	if p99 {
		d = r.P99
	}
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	default:
		return d.Round(time.Millisecond).String()
	}
}

// bytesString formats n bytes in decimal units.
func bytesString(n uint64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.1f GB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	}
	return fmt.Sprintf("%d B", n)
}
