// Command polymux is the polymux demo and measurement tool.
//
// Usage:
//
//	polymux <command> [flags]
//
// The commands are:
//
//	bench   measure a polymux session against raw TCP over 127.0.0.1
//	tunnel  forward TCP (ssh-style -L, -R and -D) over one TLS polymux session
//
// Run "polymux <command> -h" for the flags of a command.
package main

import (
	"fmt"
	"io"
	"os"
)

// command is one subcommand: run gets the arguments after its name and
// returns the exit status.
type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

var commands = []command{
	{"bench", "measure a polymux session against raw TCP over 127.0.0.1", benchMain},
	{"tunnel", "forward TCP (ssh-style -L, -R and -D) over one TLS polymux session", tunnelMain},
}

// main runs the command line and exits with its status.
func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches to a subcommand and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help":
		usage(stdout)
		return 0
	case "help":
		if len(args) == 1 {
			usage(stdout)
			return 0
		}
		name, args = args[1], []string{args[1], "-h"}
	}
	for _, c := range commands {
		if c.name == name {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "polymux: unknown command %q\n\n", name)
	usage(stderr)
	return 2
}

// usage lists the commands on w.
func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: polymux <command> [flags]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun \"polymux <command> -h\" for the flags of a command.\n")
}
