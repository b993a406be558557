// Command muxbench measures polymux beside the reference multiplexers and
// raw TCP, side by side, in one process over TCP on 127.0.0.1.
//
//	cd interop && go run ./cmd/muxbench            # full run, Markdown table
//	cd interop && go run ./cmd/muxbench -quick     # a few seconds, for testing
//	cd interop && go run ./cmd/muxbench -json      # JSON instead
//
// Each contender is raw TCP, polymux speaking one protocol, or a reference
// library (hashicorp/yamux, libp2p/go-yamux, xtaci/smux v1 and v2, ngrok
// muxado), with both ends the same library. The bulk workloads write 32 KiB
// writes (bulk1, bulk16, bulk256) or 1 MiB writes (bulk1_1m, bulk16_1m),
// raw TCP the same size as every multiplexer; slowreader writes 64 KiB. Every workload runs on every
// contender in turn, round-robin, once per repetition, so drift of the
// machine hits all alike; each figure is the median of the repetitions.
// A cell that stops making progress, or outlives -timeout, fails: its
// connections are closed and the run goes on.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/polymux/polymux/interop/internal/muxes"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// bench holds the settings of one run.
type bench struct {
	reps         int
	duration     time.Duration
	timeout      time.Duration
	stall        time.Duration
	idleStreams  int
	rawIdleLimit int
	streams      int    // held on one session in streams100k
	sessions     int    // session pairs in sessions10k
	fdPairs      int    // connection pairs the file descriptor limit leaves room for
	nofile       string // what became of RLIMIT_NOFILE, for the report
	slowSize     int
	opts         muxes.Options
	progress     io.Writer
	stacks       bool
	loadBefore   string
	loadAfter    string
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("muxbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	reps := fs.Int("reps", 3, "repetitions of every cell; figures are medians")
	duration := fs.Duration("duration", time.Second, "how long each timed workload (bulk, rpc) runs per cell")
	timeout := fs.Duration("timeout", 30*time.Second, "a cell still running after this fails")
	stall := fs.Duration("stall", 5*time.Second, "a cell making no progress for this long fails")
	workloadsFlag := fs.String("workloads", "all", "comma-separated workloads: bulk1, bulk1_1m, bulk16, bulk16_1m, bulk256, rpc, rpc64, idle, slowreader (together: all), and the opt-in streams100k, sessions10k (all,streams100k,sessions10k runs every one); the bulk workloads write 32 KiB writes, 1 MiB in the _1m ones, raw TCP the same; slowreader writes 64 KiB")
	libsFlag := fs.String("libs", "all", "comma-separated contenders: library names (polymux-yamux, hashicorp/yamux, ...) or protocols (yamux, smux1, smux2, muxado2) for all of that protocol; raw TCP always runs")
	idle := fs.Int("idle", 10000, "streams held open in the idle workload")
	streams := fs.Int("streams", 100000, "streams held on one session in the streams100k workload")
	sessions := fs.Int("sessions", 10000, "session pairs in the sessions10k workload")
	slow := fs.Int("slowsize", 64<<20, "bytes the second stream moves in the slowreader workload")
	window := fs.Int("window", muxes.DefaultWindow, "per-stream receive window of every library, auto-tuning off; -1 keeps each library's defaults")
	jsonOut := fs.Bool("json", false, "print JSON instead of a Markdown table")
	stacks := fs.Bool("stacks", false, "print every goroutine's stack to stderr when a cell fails (debugging)")
	quick := fs.Bool("quick", false, "a short run for testing: -reps 1 -duration 100ms -idle 500 -streams 1000 -sessions 100 -slowsize 8MiB -timeout 15s")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: muxbench [flags]\n\nSide-by-side benchmark of polymux, the reference multiplexers and raw TCP.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "muxbench: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *quick {
		*reps, *duration, *idle, *slow, *timeout = 1, 100*time.Millisecond, 500, 8<<20, 15*time.Second
		*streams, *sessions = 1000, 100
	}
	if *reps < 1 || *duration <= 0 || *timeout <= 0 || *stall <= 0 || *idle < 1 || *streams < 1 || *sessions < 1 || *slow < 1 {
		fmt.Fprintln(stderr, "muxbench: -reps, -duration, -timeout, -stall, -idle, -streams, -sessions and -slowsize must be positive")
		return 2
	}
	b := &bench{
		reps:        *reps,
		duration:    *duration,
		timeout:     *timeout,
		stall:       *stall,
		idleStreams: *idle,
		streams:     *streams,
		sessions:    *sessions,
		slowSize:    *slow,
		// Streams raises only the limits that would refuse the idle
		// workload's opens; accept backlogs stay at their defaults (see
		// muxes.Options.Streams).
		opts:     muxes.Options{Window: *window, Streams: max(16384, *idle+1024)},
		progress: stderr,
		stacks:   *stacks,
	}
	if *window == 0 || *window < -1 {
		fmt.Fprintln(stderr, "muxbench: -window must be a size in bytes, or -1")
		return 2
	}
	workloads, err := selectWorkloads(b.workloads(), *workloadsFlag)
	if err != nil {
		fmt.Fprintf(stderr, "muxbench: -workloads: %v\n", err)
		return 2
	}
	contenders, err := selectContenders(*libsFlag)
	if err != nil {
		fmt.Fprintf(stderr, "muxbench: -libs: %v\n", err)
		return 2
	}
	// Every raw TCP stream of idle and streams100k, and every pair of
	// sessions10k, takes two file descriptors in this process.
	var pairs int
	for _, w := range workloads {
		switch w.name {
		case "idle":
			pairs = max(pairs, b.idleStreams)
		case "streams100k":
			pairs = max(pairs, min(b.streams, rawStreamsCap))
		case "sessions10k":
			pairs = max(pairs, b.sessions)
		}
	}
	b.nofile = raiseNofile(uint64(2*pairs + fdSlack))
	b.fdPairs = fdPairs()
	b.rawIdleLimit = max(100, b.fdPairs)

	b.loadBefore = loadAvg()
	res := b.runAll(workloads, contenders)
	rep := b.report(workloads, contenders, res)
	if *jsonOut {
		if err := writeJSON(stdout, rep); err != nil {
			fmt.Fprintf(stderr, "muxbench: %v\n", err)
			return 1
		}
	} else {
		writeMarkdown(stdout, rep)
	}
	return 0
}

// selectWorkloads picks the workloads spec names, in its order; "all" (or
// "") names every one that is not opt-in, in table order.
func selectWorkloads(all []workload, spec string) ([]workload, error) {
	if spec == "" {
		spec = "all"
	}
	var out []workload
	add := func(w workload) {
		if !slices.ContainsFunc(out, func(o workload) bool { return o.name == w.name }) {
			out = append(out, w)
		}
	}
	for _, name := range strings.Split(spec, ",") {
		name = strings.TrimSpace(name)
		if strings.EqualFold(name, "all") {
			for _, w := range all {
				if !w.optIn {
					add(w)
				}
			}
			continue
		}
		i := slices.IndexFunc(all, func(w workload) bool { return strings.EqualFold(w.name, name) })
		if i < 0 {
			return nil, fmt.Errorf("unknown workload %q", name)
		}
		add(all[i])
	}
	return out, nil
}

// allContenders is every contender in table order: raw TCP, then each
// protocol's polymux and its peers.
func allContenders() []contender {
	cs := []contender{{name: rawTCP}}
	add := func(l muxes.Lib) { cs = append(cs, contender{name: l.Name, lib: &l}) }
	for _, p := range muxes.Protocols() {
		add(muxes.Polymux(p))
		for _, peer := range muxes.Peers() {
			if peer.Protocol == p {
				add(peer)
			}
		}
	}
	return cs
}

func selectContenders(spec string) ([]contender, error) {
	all := allContenders()
	if spec == "all" || spec == "" {
		return all, nil
	}
	keep := map[string]bool{rawTCP: true}
	for _, name := range strings.Split(spec, ",") {
		name = strings.TrimSpace(name)
		found := false
		for _, c := range all {
			if strings.EqualFold(c.name, name) || (c.lib != nil && strings.EqualFold(c.lib.Protocol.String(), name)) || (c.isRaw() && strings.EqualFold(name, "tcp")) {
				keep[c.name] = true
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown library or protocol %q", name)
		}
	}
	var out []contender
	for _, c := range all {
		if keep[c.name] {
			out = append(out, c)
		}
	}
	return out, nil
}

// outcome is one repetition of one cell.
type outcome struct {
	values  map[string]float64
	err     error
	note    string
	elapsed time.Duration // the whole cell, setting up and closing included
}

// results[workload][contender] are the outcomes of every repetition.
type results map[string]map[string][]outcome

// runAll runs every cell reps times: for each repetition, each workload,
// every contender in turn (starting one further along each repetition).
func (b *bench) runAll(workloads []workload, contenders []contender) results {
	res := results{}
	for _, w := range workloads {
		res[w.name] = map[string][]outcome{}
	}
	for rep := range b.reps {
		for _, w := range workloads {
			for i := range contenders {
				c := contenders[(i+rep)%len(contenders)]
				o := b.runCell(w, c)
				res[w.name][c.name] = append(res[w.name][c.name], o)
				b.logCell(rep, w, c, o)
			}
		}
	}
	return res
}

func (b *bench) logCell(rep int, w workload, c contender, o outcome) {
	var sb strings.Builder
	fmt.Fprintf(&sb, "rep %d/%d  %-11s %-16s %5.1fs ", rep+1, b.reps, w.name, c.name, o.elapsed.Seconds())
	if o.err != nil {
		fmt.Fprintf(&sb, "FAIL: %v", o.err)
	} else {
		for _, m := range w.metrics {
			if v, ok := o.values[m.key]; ok {
				fmt.Fprintf(&sb, " %s %s", m.header, format(v, m.digits))
			}
		}
	}
	if o.note != "" {
		fmt.Fprintf(&sb, "  (%s)", o.note)
	}
	fmt.Fprintln(b.progress, sb.String())
}

// runCell runs one workload on one contender under a watchdog: past
// b.timeout, or b.stall without progress, the cell's connections are
// closed (so its goroutines end) and it fails.
func (b *bench) runCell(w workload, c contender) outcome {
	start := time.Now()
	o := b.runCellOnce(w, c)
	o.elapsed = time.Since(start)
	return o
}

func (b *bench) runCellOnce(w workload, c contender) outcome {
	runtime.GC()
	opts := b.opts
	if w.opts != nil {
		opts = *w.opts
	}
	var p *pair
	if !w.noPair {
		var err error
		if p, err = newPair(c, opts); err != nil {
			return outcome{err: fmt.Errorf("setup: %w", err)}
		}
		defer closeWithin(p, 5*time.Second)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := &cellRun{ctx: ctx, pair: p, c: c}
	type ret struct {
		v   map[string]float64
		err error
	}
	done := make(chan ret, 1)
	go func() {
		v, err := w.run(r)
		done <- ret{v, err}
	}()
	deadline := time.NewTimer(b.timeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last, lastMove := r.progress.Load(), time.Now()
	var failure error
	for failure == nil {
		select {
		case d := <-done:
			return outcome{values: d.v, err: d.err, note: r.note}
		case <-deadline.C:
			failure = fmt.Errorf("timeout after %v", b.timeout)
		case now := <-tick.C:
			if cur := r.progress.Load(); cur != last {
				last, lastMove = cur, now
			} else if now.Sub(lastMove) >= b.stall {
				failure = fmt.Errorf("%w: no progress for %v", errStalled, b.stall)
			}
		}
	}
	// Stuck: close everything so the workload's goroutines end.
	if b.stacks {
		buf := make([]byte, 8<<20)
		fmt.Fprintf(b.progress, "%s %s: %v; goroutines:\n%s\n", w.name, c.name, failure, buf[:runtime.Stack(buf, true)])
	}
	cancel()
	if p != nil && !closeWithin(p, 5*time.Second) {
		failure = fmt.Errorf("%w; closing its sessions hung", failure)
	}
	wait := 5 * time.Second
	if w.noPair {
		wait = 30 * time.Second // the workload closes its own connections: thousands of them
	}
	select {
	case <-done:
	case <-time.After(wait):
		failure = fmt.Errorf("%w; the workload did not return after its connections were closed", failure)
	}
	return outcome{err: failure, note: r.note}
}

// closeWithin closes p, giving up (and leaving a goroutine behind) if a
// library's Close hangs longer than d. It reports whether p closed.
func closeWithin(p *pair, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		p.close()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// cpuModel is the CPU's model name from /proc/cpuinfo.
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
