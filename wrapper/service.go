package wrapper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/hook"
)

// The edit service: a process that does nvbind-runtime-edit's work, so that a container
// that asks for GPUs does not pay a Go program's start (about 30 ms on the VMs nvbind is
// tested on, against 2 to 5 ms of the edit itself). nvbind-runtime (the C front)
// asks it over a root-only SOCK_SEQPACKET socket, and runs nvbind-runtime-edit as before
// when nothing listens there. systemd starts it on the first connection
// (nvbind-runtime.socket).
//
// One request is one packet: the fields below, each ending in a NUL byte, with the
// bundle folder as an O_PATH descriptor (SCM_RIGHTS), so that a relative --bundle means
// what it meant to the front:
//
//	"nvbind-edit/1", the program name (nvbind-guard guards), the configuration file,
//	"1" when $NVBIND_RUNTIME_CONFIG named it else "0", the --bundle value as given, then
//	the runtime's arguments.
//
// The answer is one packet: "ok"; "error" NUL and the message for the runtime's caller;
// or "fallback" when the front is to run nvbind-runtime-edit itself (a front in another
// mount namespace, another protocol version). A front that gets no answer (the service
// stopped or failed) runs nvbind-runtime-edit too: an edit made twice changes nothing
// the second time.
//
// A front that says "nvbind-edit/2" may also be answered "steps": config.json got the
// driver without its hook, and the service runs the hook's actions itself once the
// container is created (no hook process, as with the NRI plugin). The front then runs the
// runtime's create as its child, keeping the connection, and sends one packet: "created"
// NUL and the container's process ID from --pid-file, once create succeeded (else it
// closes the connection and exits as the runtime did). The service runs the steps on that
// process (hook.RunInContainer: its cgroup must name the container's ID) and answers "ok"
// or "error" NUL and the message; on an error, or no answer, the front deletes the
// container and fails the create, as runc fails a create whose hook fails.

// DefaultSocket is where the edit service listens, and where nvbind-runtime looks for it
// unless runtime.toml's socket key names another ("" for none).
const DefaultSocket = "/run/nvbind/runtime.sock"

const (
	serviceMagic = "nvbind-edit/1"
	// stagingMagic is a front that can be answered "steps".
	stagingMagic = "nvbind-edit/2"
	// maxRequest bounds a request packet; the front sends larger command lines to
	// nvbind-runtime-edit instead.
	maxRequest = 64 << 10
	// requestTimeout bounds reading a request and writing the answer.
	requestTimeout = 5 * time.Second
	// maxArgs bounds a request's runtime arguments.
	maxArgs = 4096
	// editTimeout bounds one edit (discovery's own bound is 20 s), under the front's
	// 30 s wait.
	editTimeout = 25 * time.Second
	// maxConns bounds the requests served at once, a create's included while the runtime
	// creates its container; more wait in the socket's backlog.
	maxConns = 256
	// createTimeout bounds the wait for the front's "created" (the runtime's create).
	createTimeout = 5 * time.Minute
	// stepsTimeout bounds the driver's steps on one container, under the front's 30 s.
	stepsTimeout = 10 * time.Second
)

// Service answers the C front's edit requests.
type Service struct {
	// Idle, when not zero, ends Serve once no request came for this long (systemd's socket
	// starts the service again on the next one).
	Idle time.Duration
	// Log reports each edit.
	Log *slog.Logger
	// extra are discovery options after the configuration's (tests read synthetic roots).
	extra []gpu.Option

	// caches keep the inventories of the configurations asked for
	caches inventoryCaches

	// stepsOnce checks once whether this process may run the driver's steps in created
	// containers (hook.InContainerSupported); stepsErr is why not.
	stepsOnce sync.Once
	stepsErr  error
}

// canRunSteps reports whether the service may run the driver's steps on containers the
// runtime rt creates: this process has what hook.RunInContainer needs, and rt is runc or
// crun, whose container process is the host's (a sandboxed runtime's is a virtual
// machine's).
func (s *Service) canRunSteps(rt string) bool {
	s.stepsOnce.Do(func() {
		s.stepsErr = hook.InContainerSupported()
		if s.stepsErr != nil {
			s.Log.Info("the driver's steps are left to the hook", "reason", s.stepsErr)
		}
	})
	return s.stepsErr == nil && slices.Contains([]string{"runc", "crun"}, filepath.Base(rt))
}

// Listen returns the service's listener: the one systemd passed (LISTEN_FDS), else a new
// socket at path, in a root-only folder, replacing a stale one.
func Listen(path string) (*net.UnixListener, error) {
	if pid, _ := strconv.Atoi(os.Getenv("LISTEN_PID")); pid == os.Getpid() && os.Getenv("LISTEN_FDS") == "1" {
		_ = os.Unsetenv("LISTEN_PID")
		_ = os.Unsetenv("LISTEN_FDS")
		_ = os.Unsetenv("LISTEN_FDNAMES")
		unix.CloseOnExec(3)
		f := os.NewFile(3, "systemd socket")
		ln, err := net.FileListener(f)
		_ = f.Close()
		if err != nil {
			return nil, fmt.Errorf("the socket systemd passed: %w", err)
		}
		ul, ok := ln.(*net.UnixListener)
		if !ok {
			_ = ln.Close()
			return nil, errors.New("the socket systemd passed is not a unix socket: set ListenSequentialPacket in nvbind-runtime.socket")
		}
		return ul, nil
	}
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("--socket %q is not an absolute path", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.Dial("unixpacket", path); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("%s: another edit service is listening there", path)
		}
		_ = os.Remove(path)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	// nobody but the owner may connect: the requests rewrite containers' configurations as
	// root (until this chmod the umask's mode holds, and the service answers its own user
	// only whatever the mode)
	if err := os.Chmod(path, 0o600); err != nil {
		_ = ln.Close()
		return nil, err
	}
	return ln, nil
}

// Serve answers requests on ln until ctx ends or the service has been idle for s.Idle,
// and closes ln.
func (s *Service) Serve(ctx context.Context, ln *net.UnixListener) error {
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	var (
		mu     sync.Mutex
		active int
		last   = time.Now()
		wg     sync.WaitGroup
		slots  = make(chan struct{}, maxConns)
	)
	stop := make(chan struct{})
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
			case <-tick.C:
				mu.Lock()
				idle := s.Idle > 0 && active == 0 && time.Since(last) >= s.Idle
				mu.Unlock()
				if !idle {
					continue
				}
			case <-stop:
				return
			}
			_ = ln.SetDeadline(time.Now()) // wakes Accept
			return
		}
	}()
	defer close(stop)
	defer s.caches.close()
	defer wg.Wait()
	// closed before the requests in flight end: a socket this service made goes (a front
	// that finds none runs nvbind-runtime-edit); systemd's stays, and starts it again
	defer func() { _ = ln.Close() }()
	for {
		slots <- struct{}{}
		conn, err := ln.AcceptUnix()
		if err != nil {
			<-slots
			if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
				return nil
			}
			return err
		}
		mu.Lock()
		active++
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer func() {
				mu.Lock()
				active--
				last = time.Now()
				mu.Unlock()
				<-slots
				wg.Done()
			}()
			s.serveConn(ctx, conn)
		}()
	}
}

// request is one decoded edit request.
type serviceRequest struct {
	name, config, bundle string
	explicit             bool
	// staging: the front may be answered "steps"
	staging bool
	args    []string
	dir     int // the bundle folder, an O_PATH descriptor
}

func (s *Service) serveConn(ctx context.Context, conn *net.UnixConn) {
	defer func() { _ = conn.Close() }()
	defer func() {
		// an edit that panics fails its own container, not every edit in flight
		if p := recover(); p != nil {
			s.Log.Error("edit panicked", "panic", p)
			_ = answer(conn, fmt.Errorf("edit service: internal error: %v", p))
		}
	}()
	_ = conn.SetDeadline(time.Now().Add(requestTimeout))
	req, err := readRequest(conn)
	switch {
	case errors.Is(err, errElsewhere):
		// not this service's to answer: the front runs nvbind-runtime-edit
		s.Log.Debug("edit left to nvbind-runtime-edit", "reason", err)
		_ = answerFallback(conn)
		return
	case err != nil:
		s.Log.Warn("edit request refused", "error", err)
		_ = answer(conn, fmt.Errorf("edit service: %w", err))
		return
	}
	defer func() { _ = unix.Close(req.dir) }()
	// the edit outlives a stop of the service (SIGTERM): it finishes, bounded by its own
	// deadline, under the front's
	ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), editTimeout)
	defer cancel()
	start := time.Now()
	steps, err := s.edit(ectx, req)
	s.Log.Debug("edit", "bundle", req.bundle, "took", time.Since(start), "steps", steps != nil, "error", err)
	_ = conn.SetDeadline(time.Now().Add(requestTimeout))
	if err != nil || steps == nil {
		_ = answer(conn, err)
		return
	}
	s.runSteps(ctx, conn, req, steps)
}

// runSteps answers "steps", waits for the front's "created" and runs the steps on the
// container's process.
func (s *Service) runSteps(ctx context.Context, conn *net.UnixConn, req serviceRequest, steps *Steps) {
	if _, err := conn.Write([]byte("steps")); err != nil {
		return
	}
	_ = conn.SetDeadline(time.Now().Add(createTimeout))
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	if err != nil {
		// the runtime's create failed, or the front went away: nothing to do
		s.Log.Debug("no container to run the steps on", "bundle", req.bundle, "error", err)
		return
	}
	pid, err := parseCreated(buf[:n])
	if err == nil {
		start := time.Now()
		var notes strings.Builder
		steps.Options.Log = &notes
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stepsTimeout)
		err = hook.RunInContainer(sctx, pid, steps.ID, steps.Options)
		cancel()
		s.Log.Debug("steps", "container", steps.ID, "pid", pid, "took", time.Since(start), "notes", strings.TrimSpace(notes.String()), "error", err)
		if err != nil {
			err = fmt.Errorf("the driver's steps (links, ld cache) for container %.12s: %w", steps.ID, err)
		}
	}
	if err != nil {
		s.Log.Warn("the driver's steps failed: the container is deleted", "container", steps.ID, "error", err)
	}
	_ = conn.SetDeadline(time.Now().Add(requestTimeout))
	_ = answer(conn, err)
}

// parseCreated reads the front's "created" packet: the container's process ID.
func parseCreated(p []byte) (int, error) {
	v, ok := bytes.CutPrefix(p, []byte("created\x00"))
	if !ok {
		return 0, fmt.Errorf("the front's packet after create %.40q is not \"created\" and a process ID", p)
	}
	pid, err := strconv.Atoi(string(v))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("the container's process ID %.40q from --pid-file is not a process ID", v)
	}
	return pid, nil
}

// edit does for a request what nvbind-runtime-edit does for its command line, on the
// bundle folder the front opened; messages name the bundle as the runtime's caller
// gave it. It returns the driver's steps where config.json got no hook and the service
// is to run them.
func (s *Service) edit(ctx context.Context, req serviceRequest) (*Steps, error) {
	cfg, err := configFrom(req.name, req.config, req.explicit)
	if err != nil {
		return nil, err
	}
	call := ParseCall(req.args)
	if call.Command != "create" && call.Command != "run" {
		return nil, fmt.Errorf("command %q: the edit service edits create and run only", call.Command)
	}
	stage := false
	if req.staging && cfg.Stage == StageAuto && cfg.Mode == ModeInject && call.Command == "create" {
		rt, err := cfg.RealRuntime()
		stage = err == nil && s.canRunSteps(rt)
	}
	fdDir := "/proc/self/fd/" + strconv.Itoa(req.dir)
	call.Bundle = fdDir
	lock, err := lockBundle(ctx, fdDir)
	var steps *Steps
	if err == nil {
		steps, err = prepare(ctx, call, cfg, stage, discovery{extra: s.extra, caches: &s.caches})
		_ = lock.Close()
	}
	if err != nil {
		shown := req.bundle
		if shown == "" {
			shown = "."
		}
		return nil, errors.New(strings.ReplaceAll(err.Error(), fdDir, shown))
	}
	return steps, nil
}

// readRequest reads one request packet and its descriptor.
func readRequest(conn *net.UnixConn) (serviceRequest, error) {
	req := serviceRequest{dir: -1}
	pid, err := peerIsOwner(conn)
	if err != nil {
		return req, err
	}
	buf := make([]byte, maxRequest+1)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return req, fmt.Errorf("read request: %w", err)
	}
	fds, ferr := receivedFDs(oob[:oobn])
	closeAll := func() {
		for _, fd := range fds {
			_ = unix.Close(fd)
		}
	}
	switch {
	case ferr != nil:
		closeAll()
		return req, ferr
	case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || n > maxRequest:
		closeAll()
		return req, fmt.Errorf("request larger than %d bytes", maxRequest)
	case len(fds) != 1:
		closeAll()
		return req, fmt.Errorf("request carries %d descriptors, want the bundle folder's", len(fds))
	}
	req.dir = fds[0]
	fail := func(err error) (serviceRequest, error) {
		_ = unix.Close(req.dir)
		req.dir = -1
		return req, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(req.dir, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fail(errors.New("the bundle descriptor is not a folder"))
	}
	// checked once the packet is read: a socket closed with a packet unread resets its
	// peer, which would lose the answer
	if err := sameMountNamespace(pid); err != nil {
		return fail(err)
	}
	if !bytes.HasPrefix(buf[:n], []byte(serviceMagic+"\x00")) && !bytes.HasPrefix(buf[:n], []byte(stagingMagic+"\x00")) {
		return fail(fmt.Errorf("%w: not an %s or %s request", errElsewhere, serviceMagic, stagingMagic))
	}
	parsed, err := parseRequest(buf[:n])
	if err != nil {
		return fail(err)
	}
	parsed.dir = req.dir
	return parsed, nil
}

// parseRequest reads a request packet's fields (see the protocol above). It is linear in
// the packet, which the socket bounds to maxRequest bytes.
func parseRequest(data []byte) (serviceRequest, error) {
	req := serviceRequest{dir: -1}
	if len(data) == 0 || data[len(data)-1] != 0 {
		return req, errors.New("request does not end in a NUL byte")
	}
	if len(data) > maxRequest {
		return req, fmt.Errorf("request larger than %d bytes", maxRequest)
	}
	fields := strings.SplitN(string(data[:len(data)-1]), "\x00", 5+maxArgs+1)
	if len(fields) > 5+maxArgs {
		return req, fmt.Errorf("request with more than %d runtime arguments", maxArgs)
	}
	if len(fields) < 6 || fields[0] != serviceMagic && fields[0] != stagingMagic {
		return req, fmt.Errorf("not an %s request with a runtime command", serviceMagic)
	}
	req.staging = fields[0] == stagingMagic
	req.name, req.config, req.bundle, req.args = fields[1], fields[2], fields[4], fields[5:]
	switch fields[3] {
	case "0":
	case "1":
		req.explicit = true
	default:
		return req, fmt.Errorf("request's explicit-configuration field %.40q: valid: 0, 1", fields[3])
	}
	if !filepath.IsAbs(req.config) {
		return req, fmt.Errorf("configuration %.200q is not an absolute path", req.config)
	}
	return req, nil
}

// errElsewhere marks a request this service leaves to nvbind-runtime-edit: a front of
// another mount namespace (the paths it means are not the service's), or another
// protocol version.
var errElsewhere = errors.New("left to nvbind-runtime-edit")

// peerIsOwner refuses a peer other than the service's own user (root): the socket's mode
// already keeps others out, this holds when a socket file is shared by mistake. It
// returns the peer's process ID.
func peerIsOwner(conn *net.UnixConn) (int, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, fmt.Errorf("peer credentials: %w", cerr)
	}
	if int(cred.Uid) != os.Geteuid() {
		return 0, fmt.Errorf("peer uid %d is not the service's (%d)", cred.Uid, os.Geteuid())
	}
	return int(cred.Pid), nil
}

// sameMountNamespace leaves a front of another mount namespace (a containerised or
// sandboxed runtime caller) to nvbind-runtime-edit: its configuration file, driver root
// and layouts are paths of its own namespace, not of the service's.
func sameMountNamespace(pid int) error {
	var peer, self unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(pid)+"/ns/mnt", &peer); err != nil {
		return fmt.Errorf("%w: the front's mount namespace: %w", errElsewhere, err)
	}
	if err := unix.Stat("/proc/self/ns/mnt", &self); err != nil {
		return fmt.Errorf("%w: the service's mount namespace: %w", errElsewhere, err)
	}
	if peer.Ino != self.Ino || peer.Dev != self.Dev {
		return fmt.Errorf("%w: the front runs in another mount namespace", errElsewhere)
	}
	return nil
}

// receivedFDs are the descriptors of SCM_RIGHTS messages.
func receivedFDs(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("request's control message: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// answerFallback tells the front to run nvbind-runtime-edit itself.
func answerFallback(conn *net.UnixConn) error {
	_, err := conn.Write([]byte("fallback"))
	return err
}

// answer writes the answer packet: "ok", or "error" and the message.
func answer(conn *net.UnixConn, err error) error {
	msg := []byte("ok")
	if err != nil {
		text := err.Error()
		if len(text) > 4000 {
			text = text[:4000] + "..."
		}
		msg = append([]byte("error\x00"), bytes.ReplaceAll([]byte(text), []byte{0}, nil)...)
	}
	_, werr := conn.Write(msg)
	return werr
}

// ServeMain runs the edit service on a command line (the flags after `serve`) until
// SIGTERM or SIGINT, or until it has been idle for --exit-idle.
func ServeMain(args []string, stderr io.Writer) int {
	fl := pflag.NewFlagSet("nvbind-runtime-edit serve", pflag.ContinueOnError)
	fl.SetOutput(stderr)
	socket := fl.String("socket", DefaultSocket, "where to listen when systemd passes no socket")
	idle := fl.Duration("exit-idle", 0, "exit once no request came for this long (0: never); systemd's socket starts it again")
	level := fl.String("log-level", "info", "log level: debug, info, warn, error")
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if fl.NArg() > 0 {
		fmt.Fprintf(stderr, "nvbind-runtime-edit serve: unexpected argument %q\n", fl.Arg(0))
		return 2
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil || !slices.Contains([]string{"debug", "info", "warn", "error"}, *level) {
		fmt.Fprintf(stderr, "nvbind-runtime-edit serve: --log-level %q: valid: debug, info, warn, error\n", *level)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv}))
	ln, err := Listen(*socket)
	if err != nil {
		log.Error("edit service", "error", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stop()
	log.Info("edit service listening", "socket", ln.Addr().String(), "exit-idle", *idle)
	s := &Service{Idle: *idle, Log: log}
	if err := s.Serve(ctx, ln); err != nil {
		log.Error("edit service", "error", err)
		return 1
	}
	return 0
}
