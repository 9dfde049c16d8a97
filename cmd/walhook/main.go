// Command walhook turns committed PostgreSQL row changes into signed
// webhooks. See README.md and `walhook help`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func walhookVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "0.1.0-dev"
}

// exitError carries an exit status: 1 runtime failure, 2 usage or config.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

const usage = `walhook turns committed PostgreSQL row changes into signed webhooks.

Usage: walhook [command] [flags]     (no command: run)

Commands:
  check       preflight: what to change before walhook can run (--json)
  run         capture + dispatch (--capture-only, --dispatch-only)
  migrate     apply the outbox schema migrations and exit
  status      per-webhook counts, last error, slot lag (--json)
  deliveries  list deliveries (--state, --webhook, --model, --limit, --json);
              deliveries show ID prints one with its body and last error
  retry       put failed deliveries back to pending
  backfill    send existing rows of a model (--model, --where, --webhook, --rate, --restart)
  verify      check a webhook signature over a body read on stdin
  demo        run everything against a throwaway PostgreSQL and receiver
  version     print the version

Commands that need configuration take -c/--config PATH
(default walhook.yaml, or $WALHOOK_CONFIG).
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := dispatchCommand(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		code := 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "walhook: "+strings.ReplaceAll(err.Error(), "\n", "\n  "))
		}
		os.Exit(code)
	}
}

func dispatchCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	// run is the default command: `walhook` alone, or `walhook -c FILE`
	// (a container whose CMD is replaced by flags), runs it. Flags may come
	// before the command too: `walhook -c FILE status`.
	if len(args) == 0 || (strings.HasPrefix(args[0], "-") && !slices.Contains(helpAndVersion, args[0])) {
		i := commandIndex(args)
		if i < 0 {
			return cmdRun(ctx, args, stderr)
		}
		args = append(append([]string{args[i]}, args[:i]...), args[i+1:]...)
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return cmdRun(ctx, rest, stderr)
	case "migrate":
		return cmdMigrate(ctx, rest, stdout, stderr)
	case "retry":
		return cmdRetry(ctx, rest, stdout, stderr)
	case "backfill":
		return cmdBackfill(ctx, rest, stdout, stderr)
	case "demo":
		return cmdDemo(ctx, rest, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "walhook", walhookVersion())
		return nil
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
		return nil
	case "check":
		return cmdCheck(ctx, rest, stdout, stderr)
	case "status":
		return cmdStatus(ctx, rest, stdout, stderr)
	case "deliveries":
		return cmdDeliveries(ctx, rest, stdout, stderr)
	case "verify":
		return cmdVerify(rest, os.Stdin, stdout, stderr)
	}
	fmt.Fprint(stderr, usage)
	return usageErr("unknown command %q", cmd)
}

// helpAndVersion are the flags that are commands of their own.
var helpAndVersion = []string{"-h", "--help", "-help", "--version", "-version"}

// commands are the command names dispatchCommand's switch knows (kept in
// step with it: TestEveryCommandIsKnown).
var commands = []string{"run", "migrate", "retry", "backfill", "demo", "version", "help", "check", "status", "deliveries", "verify"}

// commandIndex finds the command in args that start with flags: the first
// command name that is not the value of a flag (a flag without "=" may take
// the next argument as its value). -1 when there is none.
func commandIndex(args []string) int {
	for i, a := range args {
		if strings.HasPrefix(a, "-") {
			continue
		}
		if slices.Contains(commands, a) {
			return i
		}
		if i == 0 || !strings.HasPrefix(args[i-1], "-") || strings.Contains(args[i-1], "=") {
			return -1 // a positional argument before any command
		}
	}
	return -1
}

// flags returns a FlagSet for cmd with -c/--config.
func newFlags(cmd string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("walhook "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := os.Getenv("WALHOOK_CONFIG")
	if def == "" {
		def = "walhook.yaml"
	}
	path := new(string)
	fs.StringVar(path, "c", def, "configuration file")
	fs.StringVar(path, "config", def, "configuration file")
	return fs, path
}

// parseFlags parses a command's flags, which may come in any order; a
// positional argument is a usage error, printed with the command's usage.
func parseFlags(fs *flag.FlagSet, args []string) error {
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		fs.Usage()
		return usageErr("unexpected argument %q", pos[0])
	}
	return nil
}
