// Package cli is mimictl: a command-line MIMI client for operators and
// scripts, on package mimicore/client. cmd/mimictl runs it; the
// integration tests run it in-process.
//
// Usage:
//
//	mimictl [global flags] <command> [flags] [arguments]
//
// Every command prints its results on stdout, one item a line, and its
// errors on stderr; the exit status is 0 on success, 1 on failure (a
// write to stdout that fails included), 2 for a usage error, 3 when
// the state directory is in use by another mimictl (or another client of
// mimicore/client) and stayed so for -lock-wait, 4 when a message's
// answer was lost (this send's, or a kept one's that the command resent
// first): the message is kept and resent, as it was, before anything new
// is sent to the group; and 5 when a kept message's resend was refused
// for good, so that whether it was delivered is not known (it is
// dropped; the command sent nothing new). A refusal that asked for a
// wait (Retry-After) adds a line saying how long, such as "mimictl: rate
// limited: retry after 12s", and keeps its status (1, or 4 for a kept
// message); the requests that are safe to repeat were already sent again
// after waits of up to 5 minutes within -timeout. When the replacement of
// the KeyPackages after a renewal of the binding was refused so, the
// commands hold off trying it again until the wait is over (at most 24
// hours from a command's start), and each says how long is left:
// "mimictl: replacing the KeyPackages of the previous binding is held:
// retry after 4m12s".
package cli

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment"
	"github.com/caddy-mimi/caddy-mimi/mimicore/client"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
	// exitInUse says the command did nothing because another process
	// held the state directory: a script may run it again.
	exitInUse = 3
	// exitPending says a message's answer was lost (the command's own,
	// or that of a kept message it resent first): it is kept, and the
	// next send (the same text: its retry, no second copy) or group
	// command on the group resends it first. Nothing new was sent after
	// it.
	exitPending = 4
	// exitUnknown says a kept message's resend was refused for good:
	// whether its first attempt was delivered is not known, but for a
	// 409 stale_epoch from a hub that remembers the messages it
	// delivered (this implementation, for 7 days), which says it was
	// delivered to no one; stderr says which. It is dropped, and the
	// command sent nothing new.
	exitUnknown = 5
)

const usage = `usage: mimictl [global flags] <command> [flags] [arguments]

commands:
  client init [-key-packages n] <client-uri>
                                   create the client: keys, binding, n single-use KeyPackages
                                   (default 10; 0: none) and a last-resort one
  client publish [-key-packages n] publish n more single-use KeyPackages (default 10) and a
                                   new last-resort one
  client show                      print the client's URI, suite, binding expiry and number
                                   of groups
  client renew                     get a new client binding now; prints its expiry (the
                                   client renews by itself when a third of it is left)
  group create                     create a group; prints its id
  group list                       print the ids of the client's groups
  group info <group>               print a group's epoch and members
  group add <group> <uri>...       add users (mimi://p/u/name) or clients (mimi://p/d/name/device);
                                   a user already in the group: its new clients by client URI
  group remove <group> <uri>...    remove users or clients
  group update <group>             give the client's leaf fresh keys (and commit pending proposals)
  group leave <group>              propose the client's own removal; the next member's commit removes it
  group export <group> <file>      write what an external joiner needs ("-": stdout)
  group join <file>                join externally with what group export wrote ("-": stdin)
  send <group> [text...]           send a message (the arguments, or stdin); when the answer
                                   is lost (exit 4) the message is kept and resent first by the
                                   next send or group command on the group (send the same text
                                   again: it is resent, not sent twice)
  recv [-wait d]                   receive, process and print queued messages; -wait: how long
                                   to wait for a first one when none is queued
  attach put <group> <file>        encrypt and upload a file ("-": stdin); prints the sender's
                                   leaf index, a tab, and the reference to send in a message
                                   of the same epoch (send refused with stale_epoch: recv, then
                                   attach put again)
  attach get <group> <leaf> <reference> <file>
                                   download, decrypt and check an attachment sent by the member
                                   at <leaf> in the epoch of the message recv got it in (else the
                                   current epoch); write it to <file> ("-": stdout)
  attach copy <group> <leaf> <reference> <target-group>
                                   copy an attachment sent by the member at <leaf> of <group>
                                   to <target-group> (the client a member of both); prints the
                                   copy's reference, which carries the attachment's key, to
                                   send in <target-group>; attach get opens it with any <leaf>

Run mimictl <command> -h for a command's flags.

global flags:
`

// Env is the environment mimictl runs in.
type Env struct {
	// Stdin, Stdout and Stderr are the standard streams.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Getenv reads environment variables; nil means os.Getenv.
	Getenv func(string) string
	// HTTPClient sends the requests; nil means a client that speaks only
	// TLS 1.3 and verifies with the -ca roots (or the system roots).
	HTTPClient *http.Client
}

// env is what a command runs with.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	state          string
	cfg            client.Config
	// lockWait is how long to wait for a state directory in use.
	lockWait time.Duration
}

// Main runs mimictl with args (without the program name) in e until it
// ends or an interrupt arrives, and returns the exit status.
func Main(args []string, e Env) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	return Run(ctx, args, e)
}

// usageError is a mistake in the command line.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// Run is Main with a context.
func Run(ctx context.Context, args []string, ev Env) int {
	getenv := ev.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	stdout, stderr := ev.Stdout, ev.Stderr
	fs := flag.NewFlagSet("mimictl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	gateway := fs.String("gateway", getenv("MIMI_GATEWAY"), "base URL of the gateway's MIMI endpoints (env MIMI_GATEWAY)")
	local := fs.String("local", getenv("MIMI_LOCAL"), "base URL of the local client API (env MIMI_LOCAL; default <gateway>/local)")
	user := fs.String("user", getenv("MIMI_USER"), "user name for the local API's basic auth (env MIMI_USER)")
	passwordFile := fs.String("password-file", "", "file holding the basic auth password (else env MIMI_PASSWORD)")
	state := fs.String("state", getenv("MIMI_STATE"), "the client's state directory (env MIMI_STATE)")
	caFile := fs.String("ca", getenv("MIMI_CA"), "PEM file of the roots that verify the gateway's certificate (env MIMI_CA; default the system roots)")
	timeout := fs.Duration("timeout", 30*time.Second, "bound on the whole command, all its requests together (recv adds its -wait)")
	lockWait := fs.Duration("lock-wait", 0, "how long to wait for the state directory when another mimictl holds it (a recv -wait, say); after that, exit status 3")
	connect := fs.String("connect", getenv("MIMI_CONNECT"), "host:port to connect to instead of the gateway's resolved address, TLS still checked against its name (env MIMI_CONNECT; for gateways on one machine under names that do not resolve)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	out := &checkedWriter{w: stdout}
	e := &env{stdin: ev.Stdin, stdout: out, stderr: stderr, state: *state, lockWait: *lockWait}
	err := func() error {
		if fs.NArg() == 0 {
			return usagef("no command")
		}
		c, err := parseCommand(fs.Args(), stderr)
		if err != nil {
			return err
		}
		if *gateway == "" || *state == "" {
			return usagef("-gateway and -state are required")
		}
		if *lockWait < 0 {
			return usagef("-lock-wait %v is negative", *lockWait)
		}
		if *local == "" {
			*local = strings.TrimSuffix(*gateway, "/") + "/local"
		}
		e.cfg = client.Config{Gateway: *gateway, Local: *local, LockWait: *lockWait}
		var roots *x509.CertPool
		if *caFile != "" {
			pem, err := os.ReadFile(*caFile)
			if err != nil {
				return fmt.Errorf("reading the CA file: %w", err)
			}
			roots = x509.NewCertPool()
			if !roots.AppendCertsFromPEM(pem) {
				return fmt.Errorf("the CA file %s holds no PEM certificate", *caFile)
			}
		}
		e.cfg.HTTPClient = ev.HTTPClient
		if e.cfg.HTTPClient == nil {
			e.cfg.HTTPClient = client.NewHTTPClient(roots)
			if *connect != "" {
				if _, _, err := net.SplitHostPort(*connect); err != nil {
					return usagef("-connect %q is not host:port", *connect)
				}
				tr := e.cfg.HTTPClient.Transport.(*http.Transport).Clone()
				dialer := &net.Dialer{Timeout: 10 * time.Second}
				addr := *connect
				tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
					return dialer.DialContext(ctx, network, addr)
				}
				e.cfg.HTTPClient = &http.Client{Transport: tr}
			}
		}
		if *user == "" && (*passwordFile != "" || getenv("MIMI_PASSWORD") != "") {
			// A password would be silently unused: the requests would go
			// without authentication.
			return usagef("-password-file and MIMI_PASSWORD need -user (or MIMI_USER)")
		}
		if *user != "" {
			pw := getenv("MIMI_PASSWORD")
			if *passwordFile != "" {
				b, err := os.ReadFile(*passwordFile)
				if err != nil {
					return fmt.Errorf("reading the password file: %w", err)
				}
				pw = strings.TrimRight(string(b), "\r\n")
			}
			e.cfg.Authorize = client.BasicAuth(*user, pw)
		}
		if err := e.run(ctx, *timeout, c); err != nil {
			return err
		}
		if out.err != nil {
			// The command did what it was asked, but its result did
			// not reach stdout (a full disk, a closed pipe).
			return fmt.Errorf("writing the result to stdout: %w", out.err)
		}
		return nil
	}()
	var ue *usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "mimictl: %s\n", ue.msg)
		fmt.Fprintln(stderr, "run mimictl -h for usage")
		return exitUsage
	case errors.Is(err, client.ErrInUse):
		fmt.Fprintf(stderr, "mimictl: %v\n", err)
		fmt.Fprintln(stderr, "mimictl: another mimictl holds the state directory: try again when it is done, or wait for it with -lock-wait")
		return exitInUse
	case errors.Is(err, client.ErrMessagePending):
		fmt.Fprintf(stderr, "mimictl: %v\n", err)
		retryHint(stderr, err)
		fmt.Fprintln(stderr, "mimictl: the message is kept: run the same send again to resend it (it is not sent twice); any send or group command on the group resends it first")
		return exitPending
	case errors.Is(err, client.ErrMessageUnknown):
		fmt.Fprintf(stderr, "mimictl: %v\n", err)
		if code, _ := client.CodeOf(err); code == moh.CodeStaleEpoch {
			// A hub that remembers the messages it delivered answers the
			// resend of one ok even after a commit (docs/protocol.md
			// §5.4.1): its stale_epoch says it delivered it to no one.
			fmt.Fprintln(stderr, "mimictl: the kept message was dropped: its resend was refused with stale_epoch, so it was not delivered by a hub that remembers the messages it delivered "+
				"(this implementation, for 7 days after the first attempt): run recv, then send it again; nothing new was sent")
		} else {
			fmt.Fprintln(stderr, "mimictl: the kept message was dropped: check with the recipients before sending it again; nothing new was sent")
		}
		return exitUnknown
	default:
		fmt.Fprintf(stderr, "mimictl: %v\n", err)
		retryHint(stderr, err)
		if code, _ := client.CodeOf(err); code == moh.CodeStaleEpoch || code == moh.CodeCommitConflict {
			fmt.Fprintln(stderr, "mimictl: the group moved on: run recv, then try again")
		}
		return exitFailure
	}
}

// retryHint says on w when to run the command again, for a refusal that
// asked for a wait (Retry-After): "rate limited: retry after 12s".
func retryHint(w io.Writer, err error) {
	d, ok := client.RetryAfterOf(err)
	if !ok {
		return
	}
	what := "refused for now"
	var e *client.Error
	if errors.As(err, &e) {
		switch e.Status {
		case http.StatusTooManyRequests:
			what = "rate limited"
		case http.StatusServiceUnavailable:
			what = "the gateway is unavailable"
		}
	}
	fmt.Fprintf(w, "mimictl: %s: retry after %v\n", what, wholeSeconds(d))
}

// heldHint says on w how long the client still holds off replacing its
// KeyPackages after a renewal of its binding, when the gateway refused
// that with a Retry-After, in this command or an earlier one (the hold is
// kept in the state directory): "replacing the KeyPackages of the
// previous binding is held: retry after 4m12s". A command whose error
// asked for a wait says only that (retryHint).
func heldHint(w io.Writer, c *client.Client, err error) {
	if _, ok := client.RetryAfterOf(err); ok {
		return
	}
	if d := c.RepublishHeld(); d > 0 {
		fmt.Fprintf(w, "mimictl: replacing the KeyPackages of the previous binding is held: retry after %v\n", wholeSeconds(d))
	}
}

// wholeSeconds rounds d up to whole seconds.
func wholeSeconds(d time.Duration) time.Duration {
	return (d + time.Second - 1) / time.Second * time.Second
}

// checkedWriter is stdout that remembers its first write error: a
// command whose output was lost fails (exitFailure) even when it did not
// look at the error itself. After a failure it writes nothing more.
type checkedWriter struct {
	w   io.Writer
	err error
}

// Write implements io.Writer.
func (c *checkedWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	c.err = err
	return n, err
}

// command is a command line after the global flags: the command (with
// its subcommand, "group add"), its flags and its arguments.
type command struct {
	name        string
	args        []string
	keyPackages int
	wait        time.Duration
}

// parseCommand splits args into a command and parses its flags, printing
// their usage to stderr for -h (flag.ErrHelp).
func parseCommand(args []string, stderr io.Writer) (*command, error) {
	c := &command{name: args[0]}
	args = args[1:]
	if c.name == "client" || c.name == "group" || c.name == "attach" {
		if len(args) == 0 {
			return nil, usagef("%s needs a subcommand", c.name)
		}
		c.name, args = c.name+" "+args[0], args[1:]
	}
	fs := flag.NewFlagSet("mimictl "+c.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	switch c.name {
	case "client init", "client publish":
		fs.IntVar(&c.keyPackages, "key-packages", client.DefaultKeyPackages, "single-use KeyPackages to publish, besides a last-resort one (0: the last-resort one alone)")
	case "recv":
		fs.DurationVar(&c.wait, "wait", 0, "how long to wait for a first message when none is queued (rounded up to whole seconds; the gateway caps it at its max_wait, 60s by default)")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usagef("%s: %v", c.name, err)
	}
	c.args = fs.Args()
	return c, nil
}

// run runs a command.
func (e *env) run(ctx context.Context, timeout time.Duration, line *command) (err error) {
	cmd, args := line.name, line.args
	keyPackages, wait := &line.keyPackages, &line.wait
	ctx, cancel := context.WithTimeout(ctx, timeout+*wait+e.lockWait)
	defer cancel()

	if cmd == "client init" {
		if len(args) != 1 {
			return usagef("client init needs one client URI")
		}
		n := *keyPackages
		if n < 0 {
			return usagef("client init: -key-packages %d is negative", n)
		}
		// Init publishes none: they are published below, so that a
		// failed publish says the client exists (client init again is
		// refused) and how to publish them.
		c, err := client.Init(ctx, e.state, e.cfg, client.InitOptions{ClientURI: args[0], KeyPackages: -1})
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Publish(ctx, n, true); err != nil {
			return fmt.Errorf("client %s created, but: %w (client publish -key-packages %d publishes them)", c.URI(), err, n)
		}
		fmt.Fprintln(e.stdout, c.URI())
		return nil
	}
	want := map[string]int{"client publish": 0, "client show": 0, "client renew": 0, "group create": 0, "group list": 0, "group info": 1,
		"group update": 1, "group leave": 1, "group export": 2, "group join": 1, "recv": 0, "attach put": 2, "attach get": 4,
		"attach copy": 4}
	n, fixed := want[cmd]
	switch {
	case fixed && len(args) != n:
		return usagef("%s takes %d argument(s)", cmd, n)
	case cmd == "group add" || cmd == "group remove":
		if len(args) < 2 {
			return usagef("%s needs a group and at least one URI", cmd)
		}
	case cmd == "send":
		if len(args) < 1 {
			return usagef("send needs a group")
		}
	case !fixed:
		return usagef("unknown command %q", cmd)
	}
	c, err := client.OpenContext(ctx, e.state, e.cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	defer func() { heldHint(e.stderr, c, err) }()
	groupArg := func() ([]byte, error) {
		gid, err := hex.DecodeString(args[0])
		if err != nil || len(gid) == 0 {
			return nil, usagef("%q is not a group id (hex)", args[0])
		}
		return gid, nil
	}
	switch cmd {
	case "client publish":
		return c.Publish(ctx, *keyPackages, true)
	case "client show":
		fmt.Fprintf(e.stdout, "%s\nsuite %d\nbinding valid until %s\ngroups %d\n", c.URI(), uint16(c.CipherSuite()),
			c.BindingNotAfter().Format(time.RFC3339), len(c.Groups()))
		return nil
	case "client renew":
		if err := c.RenewBinding(ctx); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "binding valid until %s\n", c.BindingNotAfter().Format(time.RFC3339))
		return nil
	case "group create":
		gid, err := c.CreateGroup(ctx)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintln(e.stdout, hex.EncodeToString(gid)); err != nil {
			return fmt.Errorf("group %x created, but printing its id: %w", gid, err)
		}
		return nil
	case "group list":
		for _, gid := range c.Groups() {
			fmt.Fprintln(e.stdout, hex.EncodeToString(gid))
		}
		return nil
	case "group join":
		data, err := e.readFile(args[0])
		if err != nil {
			return err
		}
		var info client.JoinInfo
		if err := info.UnmarshalBinary(data); err != nil {
			return err
		}
		gid, err := c.JoinExternal(ctx, &info)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintln(e.stdout, hex.EncodeToString(gid)); err != nil {
			return fmt.Errorf("group %x joined, but printing its id: %w", gid, err)
		}
		return nil
	case "recv":
		return e.recv(ctx, c, *wait)
	}
	gid, err := groupArg()
	if err != nil {
		return err
	}
	switch cmd {
	case "group info":
		g, err := c.Group(gid)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "group %x\nepoch %d\nsuite %d\n", g.GroupID, g.Epoch, uint16(g.CipherSuite))
		for _, m := range g.Members {
			self := ""
			if m.Leaf == g.Self {
				self = " (self)"
			}
			fmt.Fprintf(e.stdout, "member %d %s%s\n", m.Leaf, printableURI(m.ClientURI), self)
		}
		return nil
	case "group add":
		return c.Add(ctx, gid, args[1:]...)
	case "group remove":
		return c.Remove(ctx, gid, args[1:]...)
	case "group update":
		return c.Update(ctx, gid)
	case "group leave":
		return c.Leave(ctx, gid)
	case "attach put":
		data, err := e.readFile(args[1])
		if err != nil {
			return err
		}
		ref, leaf, err := c.PutAttachment(ctx, gid, data)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "%d\t%s\n", leaf, ref)
		return nil
	case "attach get":
		leaf, err := strconv.ParseUint(args[1], 10, 32)
		if err != nil {
			return usagef("%q is not a leaf index", args[1])
		}
		ref, err := attachment.ParseReference(args[2])
		if err != nil {
			return usagef("%v", err)
		}
		data, err := c.GetAttachment(ctx, gid, uint32(leaf), ref)
		if err != nil {
			return err
		}
		if args[3] == "-" {
			_, err = e.stdout.Write(data)
			return err
		}
		return os.WriteFile(args[3], data, 0o600)
	case "attach copy":
		leaf, err := strconv.ParseUint(args[1], 10, 32)
		if err != nil {
			return usagef("%q is not a leaf index", args[1])
		}
		ref, err := attachment.ParseReference(args[2])
		if err != nil {
			return usagef("%v", err)
		}
		target, err := hex.DecodeString(args[3])
		if err != nil || len(target) == 0 {
			return usagef("%q is not a group id (hex)", args[3])
		}
		copied, err := c.CopyAttachment(ctx, gid, uint32(leaf), ref, target)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintln(e.stdout, copied); err != nil {
			return fmt.Errorf("attachment copied, but printing its reference: %w", err)
		}
		return nil
	case "group export":
		info, err := c.ExternalCommitInfo(ctx, gid)
		if err != nil {
			return err
		}
		data, err := info.MarshalBinary()
		if err != nil {
			return err
		}
		if args[1] == "-" {
			_, err = e.stdout.Write(data)
			return err
		}
		return os.WriteFile(args[1], data, 0o600)
	default: // send
		text := []byte(strings.Join(args[1:], " "))
		if len(args) == 1 {
			if text, err = io.ReadAll(io.LimitReader(e.stdin, 1<<20+1)); err != nil {
				return fmt.Errorf("reading the message: %w", err)
			}
			if len(text) > 1<<20 {
				return errors.New("the message is larger than 1 MiB")
			}
		}
		pending := c.PendingMessage(gid)
		if pending {
			fmt.Fprintf(e.stderr, "mimictl: group %x has a message whose answer was lost: resending it first\n", gid)
		}
		if err := c.Send(ctx, gid, text); err != nil {
			return err
		}
		if pending {
			fmt.Fprintln(e.stderr, "mimictl: the kept message was resent and taken (this text, when the same, was not sent again)")
		}
		return nil
	}
}

// readFile reads a file, or stdin for "-".
func (e *env) readFile(name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(e.stdin)
	}
	return os.ReadFile(name)
}

// recv receives until the queue is empty, waiting up to wait for a first
// message, and prints one line per event:
//
//	message <group> <sender> <text>
//	joined  <group> <sender>
//	commit  <group> <sender> <epoch>
//	removed <group> <sender>
//	proposal <group> <sender>
//
// separated by tabs. A text with control characters or invalid UTF-8, or
// a sender with those, white space or a leading double quote, is printed
// as a Go-quoted string: a sender is the identity a member's provider (or
// the group's hub) put in its leaf, which must not print as lines or
// fields of its own (printableURI). Skipped messages are
// reported on stderr.
//
// Receive hands the events out once they are acknowledged (and a
// message's key erased): a write to stdout that fails (a full disk, a
// closed pipe) stops recv with an error, exitFailure, naming the events
// that were not printed, rather than receiving more.
func (e *env) recv(ctx context.Context, c *client.Client, wait time.Duration) error {
	for {
		events, err := c.Receive(ctx, wait)
		if perr := printEvents(e.stdout, e.stderr, events); perr != nil {
			return perr
		}
		if err != nil || len(events) == 0 {
			return err
		}
		wait = 0 // drain what is queued, then stop
	}
}

// printEvents prints events as recv does, the skipped ones on stderr. A
// write to stdout that fails is an error that says which events were
// lost.
func printEvents(stdout, stderr io.Writer, events []client.Event) error {
	for _, ev := range events {
		gid, sender := hex.EncodeToString(ev.GroupID), printableURI(ev.Sender)
		var err error
		switch ev.Kind {
		case client.EventMessage:
			_, err = fmt.Fprintf(stdout, "message\t%s\t%s\t%s\n", gid, sender, printable(ev.Data))
		case client.EventCommit:
			_, err = fmt.Fprintf(stdout, "commit\t%s\t%s\t%d\n", gid, sender, ev.Epoch)
		case client.EventJoined, client.EventRemoved, client.EventProposal:
			_, err = fmt.Fprintf(stdout, "%s\t%s\t%s\n", ev.Kind, gid, sender)
		default:
			fmt.Fprintf(stderr, "mimictl: skipped queued message %d of group %s: %v\n", ev.Seq, gid, ev.Err)
		}
		if err != nil {
			return fmt.Errorf("printing received events: %w: queued messages %d to %d were processed and acknowledged but not printed",
				err, ev.Seq, events[len(events)-1].Seq)
		}
	}
	return nil
}

// printable returns text as it is when it is valid UTF-8 without control
// characters, else Go-quoted.
func printable(text []byte) string {
	if utf8.Valid(text) && strings.IndexFunc(string(text), unicode.IsControl) < 0 {
		return string(text)
	}
	return strconv.Quote(string(text))
}

// printableURI returns a sender's or member's URI as it is when it is
// valid UTF-8 without control characters or white space and does not
// start with a double quote, else Go-quoted. A URI is whatever a member's
// provider (or a remote group's hub) put in its leaf: one with a space
// would print as fields of its own in the space-separated group info (a
// second "(self)"), and one that starts with a quote as the Go-quoted form
// of another URI. A valid client URI has neither, and prints as it is.
func printableURI(uri string) string {
	if utf8.ValidString(uri) && !strings.HasPrefix(uri, `"`) &&
		strings.IndexFunc(uri, func(r rune) bool { return unicode.IsControl(r) || unicode.IsSpace(r) }) < 0 {
		return uri
	}
	return strconv.Quote(uri)
}
