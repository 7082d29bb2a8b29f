// Command yikatong runs a city node of the resident-service one-card platform
// and its tools. See README.md and docs/ for the commands; CONTRACT.md names
// the ones other systems rely on.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
)

type command struct {
	summary string
	run     func(args []string, stdin io.Reader, stdout, stderr io.Writer) int
}

var commands = map[string]command{}

func register(name, summary string, run func(args []string, stdin io.Reader, stdout, stderr io.Writer) int) {
	commands[name] = command{summary, run}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	if isHelp(args[0]) {
		usage(stdout)
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "yikatong: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	return c.run(args[1:], stdin, stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "yikatong — resident-service one-card city node (居民服务一卡通)")
	fmt.Fprintln(w, "\nUsage: yikatong COMMAND [flags]\n\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'yikatong COMMAND -h' for a command's flags.")
}

// isHelp reports whether arg asks for a command's usage.
func isHelp(arg string) bool {
	return arg == "-h" || arg == "--help" || arg == "-help" || arg == "help"
}

// parseFlags parses a command's flags. -h or --help prints the command's
// usage (synopsis, then its flags) on stdout: exit 0, as every command's
// help does. A bad flag prints the error and the usage on stderr: exit 2.
// ok true: carry on.
func parseFlags(fs *flag.FlagSet, synopsis string, args []string, stdout, stderr io.Writer) (exit int, ok bool) {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	if err == nil {
		fs.SetOutput(stderr)
		return 0, true
	}
	w, exit := stderr, 2
	if errors.Is(err, flag.ErrHelp) {
		w, exit = stdout, 0
	} else {
		fmt.Fprintf(stderr, "yikatong %s: %v\n", fs.Name(), err)
	}
	fmt.Fprintf(w, "usage: %s\n\nflags:\n", synopsis)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(stderr)
	return exit, false
}

func init() {
	register("id", "check an ID number: yikatong id check NUMBER", func(args []string, _ io.Reader, stdout, stderr io.Writer) int {
		return cmdID(args, stdout, stderr)
	})
}
