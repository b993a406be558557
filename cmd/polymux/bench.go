package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"

	"github.com/polymux/polymux"
)

// allProtocols is what -protocol all runs, in order.
var allProtocols = []polymux.Protocol{polymux.Yamux, polymux.SmuxV1, polymux.SmuxV2, polymux.MuxadoV2}

// benchMain is the bench command: it parses the flags, runs the suite for
// every protocol asked for and prints a table (or JSON) per protocol. It
// exits 2 on bad flags, 1 if any workload failed, and 0 otherwise.
func benchMain(args []string, stdout, stderr io.Writer) int {
	b, protos, jsonOut, code := parseBenchFlags(args, stderr)
	if b == nil {
		return code
	}
	out := benchOutput{
		GOMAXPROCS:      runtime.GOMAXPROCS(0),
		DurationSeconds: b.duration.Seconds(),
		Streams:         b.streams,
		WriteSize:       b.size,
	}
	failed := false
	for i, p := range protos {
		rep := b.runProtocol(p)
		out.Runs = append(out.Runs, rep)
		for _, w := range rep.Workloads {
			if w.Error != "" {
				failed = true
				fmt.Fprintf(stderr, "polymux bench: %v: %s: %s\n", p, w.Name, w.Error)
			}
		}
		if !jsonOut {
			if i > 0 {
				fmt.Fprintln(stdout)
			}
			b.printTable(stdout, rep)
		}
	}
	if jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			fmt.Fprintf(stderr, "polymux bench: %v\n", err)
			return 1
		}
	}
	if failed {
		return 1
	}
	return 0
}

// parseBenchFlags turns the bench command's arguments into a bencher, the
// protocols to run and whether to print JSON. On -h it returns a nil
// bencher and exit status 0; on a bad flag, a nil bencher and 2, having
// said why on stderr.
func parseBenchFlags(args []string, stderr io.Writer) (b *bencher, protos []polymux.Protocol, jsonOut bool, code int) {
	fs := flag.NewFlagSet("polymux bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	protoFlag := fs.String("protocol", "yamux", "wire protocol: auto, yamux, smux1, smux2, muxado2, or all (each in turn)")
	streams := fs.Int("streams", 64, "concurrent streams (and raw TCP connections) of the bulk-N workload")
	size := fs.Int("size", 65536, "bytes per Write in the bulk workloads")
	duration := fs.Duration("duration", 2500*time.Millisecond, "how long each workload runs")
	fs.BoolVar(&jsonOut, "json", false, "print the results as JSON instead of a table")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: polymux bench [flags]

Runs one polymux session over TCP on 127.0.0.1 in this process and measures
  bulk 1 stream    one stream writing as fast as it can (MB/s, 1 MB = 1e6 bytes)
  bulk N streams   N streams writing concurrently (aggregate MB/s)
  rpc open+echo    open a stream, send %d bytes, read the echo, close
                   (sequential: op/s and p50/p99 latency)
beside the same workloads on raw TCP (one connection per stream, one dial
per rpc), with the ratio polymux / raw TCP.

flags:
`, rpcSize)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, nil, false, 0
		}
		return nil, nil, false, 2
	}
	bad := func(format string, args ...any) (*bencher, []polymux.Protocol, bool, int) {
		fmt.Fprintf(stderr, "polymux bench: "+format+"\n", args...)
		return nil, nil, false, 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "polymux bench: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return nil, nil, false, 2
	}
	if strings.EqualFold(*protoFlag, "all") {
		protos = allProtocols
	} else {
		p, err := polymux.ParseProtocol(*protoFlag)
		if err != nil {
			return bad("-protocol: %v (or all)", err)
		}
		protos = []polymux.Protocol{p}
	}
	switch {
	case *streams < 1:
		return bad("-streams must be at least 1, got %d", *streams)
	case *size < 1:
		return bad("-size must be at least 1, got %d", *size)
	case *duration <= 0:
		return bad("-duration must be positive, got %v", *duration)
	}
	b = &bencher{
		streams:  *streams,
		size:     *size,
		duration: *duration,
		drain:    drainTimeout,
		progress: stderr,
		tty:      isTerminal(stderr),
		baseline: make(map[string]workloadResult),
	}
	return b, protos, jsonOut, 0
}
