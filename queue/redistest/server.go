package redistest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// readyTimeout bounds the wait for a started server to answer PING.
	readyTimeout = 10 * time.Second
	// stopTimeout is how long a server gets to exit after SIGTERM before it
	// is killed.
	stopTimeout = 5 * time.Second
	// startAttempts is how many ports Start tries when the picked port turns
	// out to be taken by the time redis-server binds it.
	startAttempts = 5
	// logTailLines is how many lines of the server log a failure shows.
	logTailLines = 30

	logFile    = "redis.log"
	outputFile = "redis.out"

	missingServer = `redis-server not found on PATH: install it (Debian: apt-get install redis-server) or run "make test", which installs it`
)

// errPortInUse marks a start that failed because another process holds the
// picked port; Start retries those with a new port.
var errPortInUse = errors.New("port already in use")

// Option changes how Start runs redis-server.
type Option func(*config)

type config struct {
	args    []string
	cluster bool
}

// WithArgs appends arguments to the redis-server command line. They come
// after the defaults, so an option given here overrides the default of the
// same name, e.g. WithArgs("--appendonly", "no").
func WithArgs(args ...string) Option {
	return func(c *config) {
		c.args = append(c.args, args...)
	}
}

// withCluster runs the server as a Redis Cluster node. The cluster bus gets
// its own free port so it never depends on port+10000 being free or valid.
func withCluster() Option {
	return func(c *config) {
		c.cluster = true
	}
}

// Server is a redis-server process owned by one test.
type Server struct {
	bin  string
	dir  string
	port int
	args []string

	mu   sync.Mutex
	proc *process // nil while the server is not running
}

// process is one run of redis-server.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once cmd.Wait has returned
	err  error         // result of cmd.Wait, read only after done is closed
}

// Start starts a redis-server from PATH for the test and stops it when the
// test ends. The server listens on 127.0.0.1 on a free port, keeps its files
// in a fresh t.TempDir, has AOF on with appendfsync everysec, RDB snapshots
// off and maxmemory-policy noeviction. Start fails the test if redis-server
// is missing or does not answer PING within 10 seconds.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	bin := lookPath(t, "redis-server", missingServer)
	s := &Server{bin: bin, dir: t.TempDir()}
	t.Cleanup(func() { s.stop(t) })

	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		if err = s.startFresh(cfg); !errors.Is(err, errPortInUse) {
			break
		}
	}
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	return s
}

// Addr returns the server address, "127.0.0.1:port".
func (s *Server) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// Dir returns the server's data directory.
func (s *Server) Dir() string {
	return s.dir
}

// Client returns a client connected to the server. It is closed when the
// test ends.
func (s *Server) Client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	t.Cleanup(func() {
		// The test may have closed the client itself already.
		_ = c.Close()
	})
	return c
}

// Kill kills the server with SIGKILL and waits for it to exit, like a crash.
// It does nothing if the server is not running.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	if p := s.take(); p != nil {
		p.kill()
	}
}

// Pause stops the server with SIGSTOP, sent to its PID: it keeps its
// connections open but answers nothing, like a hung Redis. The server is
// resumed (SIGCONT) when the test ends, before it is stopped, unless
// Resume was called first.
func (s *Server) Pause(t testing.TB) {
	t.Helper()
	s.signal(t, syscall.SIGSTOP)
	t.Cleanup(func() { s.signal(t, syscall.SIGCONT) })
}

// Resume continues a server stopped by Pause (SIGCONT, by PID).
func (s *Server) Resume(t testing.TB) {
	t.Helper()
	s.signal(t, syscall.SIGCONT)
}

func (s *Server) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		t.Fatalf("redistest: signal %v: the server on %s is not running", sig, s.Addr())
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("redistest: signal %v to redis-server on %s: %v", sig, s.Addr(), err)
	}
}

// Stop stops the server with SIGTERM, kills it if it has not exited after
// 5 seconds, and waits for it to exit. It does nothing if the server is not
// running.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.stop(t)
}

// Restart starts the server again on the same port, in the same directory
// and with the same arguments, so it reloads its AOF. A running server is
// stopped first. Restart fails the test if the server does not answer PING
// within 10 seconds.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.stop(t)
	if err := s.run(); err != nil {
		t.Fatalf("redistest: restart: %v", err)
	}
}

func (s *Server) stop(t testing.TB) {
	t.Helper()
	p := s.take()
	if p == nil {
		return
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Logf("redistest: send SIGTERM to redis-server on %s: %v", s.Addr(), err)
	}
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		t.Logf("redistest: redis-server on %s did not exit within %v of SIGTERM, killing it", s.Addr(), stopTimeout)
		p.kill()
	}
}

// take detaches the running process from s and returns it, or nil if the
// server is not running.
func (s *Server) take() *process {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.proc
	s.proc = nil
	return p
}

// startFresh picks free ports, builds the command line and runs the server
// in an emptied data directory.
func (s *Server) startFresh(cfg config) error {
	if err := emptyDir(s.dir); err != nil {
		return err
	}
	n := 1
	if cfg.cluster {
		n = 2
	}
	ports, err := freePorts(n)
	if err != nil {
		return err
	}
	s.port = ports[0]
	s.args = []string{
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(s.port),
		"--dir", s.dir,
		"--appendonly", "yes",
		"--appendfsync", "everysec",
		"--save", "",
		"--daemonize", "no",
		"--protected-mode", "yes",
		"--maxmemory-policy", "noeviction",
		"--logfile", filepath.Join(s.dir, logFile),
	}
	if cfg.cluster {
		s.args = append(s.args,
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "5000",
			"--cluster-port", strconv.Itoa(ports[1]),
		)
	}
	s.args = append(s.args, cfg.args...)
	return s.run()
}

// run starts redis-server with s.args and waits until it answers PING.
func (s *Server) run() error {
	logPath := filepath.Join(s.dir, logFile)
	logStart := fileSize(logPath)
	p, err := s.launch()
	if err != nil {
		return err
	}
	if err := s.waitReady(p); err != nil {
		p.kill()
		if !errors.Is(err, errPortInUse) && bytes.Contains(readFrom(logPath, logStart), []byte("Address already in use")) {
			err = fmt.Errorf("%w: %w", errPortInUse, err)
		}
		return fmt.Errorf("%w\n%s", err, s.logTail())
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	return nil
}

func (s *Server) launch() (*process, error) {
	out, err := os.OpenFile(filepath.Join(s.dir, outputFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open redis-server output file: %w", err)
	}
	// The child keeps its own copy of the descriptor.
	defer out.Close()

	cmd := exec.Command(s.bin, s.args...)
	cmd.Dir = s.dir
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start redis-server: %w", err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// waitReady waits until the server answers PING. It also checks that the
// answering server is p and not another process that holds the port.
func (s *Server) waitReady(p *process) error {
	c := redis.NewClient(&redis.Options{
		Addr:         s.Addr(),
		DialTimeout:  250 * time.Millisecond,
		ReadTimeout:  time.Second,
		WriteTimeout: time.Second,
		MaxRetries:   -1,
		PoolSize:     1,
	})
	defer c.Close()

	deadline := time.Now().Add(readyTimeout)
	for {
		// A plain dial first keeps go-redis from logging refused dials.
		conn, err := net.DialTimeout("tcp", s.Addr(), 250*time.Millisecond)
		var pid int
		if err == nil {
			conn.Close()
			pid, err = serverPID(c)
		}
		switch {
		case err == nil && pid == p.cmd.Process.Pid:
			return nil
		case err == nil:
			return fmt.Errorf("%w: %s is served by pid %d, not by the started pid %d", errPortInUse, s.Addr(), pid, p.cmd.Process.Pid)
		}
		select {
		case <-p.done:
			return fmt.Errorf("redis-server on %s exited before answering PING: %v", s.Addr(), p.err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s did not answer PING within %v: %w", s.Addr(), readyTimeout, err)
		}
	}
}

// serverPID sends PING and returns the process_id reported by INFO server.
func serverPID(c *redis.Client) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		return 0, err
	}
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		return 0, err
	}
	v, ok := infoField(info, "process_id")
	if !ok {
		return 0, errors.New("INFO server has no process_id")
	}
	pid, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("parse process_id: %w", err)
	}
	return pid, nil
}

// logTail returns the last lines of the server log and anything the server
// wrote to stdout or stderr.
func (s *Server) logTail() string {
	var b strings.Builder
	for _, name := range []string{logFile, outputFile} {
		data, err := os.ReadFile(filepath.Join(s.dir, name))
		if err != nil || len(bytes.TrimSpace(data)) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > logTailLines {
			lines = lines[len(lines)-logTailLines:]
		}
		fmt.Fprintf(&b, "--- tail of %s ---\n%s\n", filepath.Join(s.dir, name), strings.Join(lines, "\n"))
	}
	if b.Len() == 0 {
		return "(redis-server wrote no log)"
	}
	return b.String()
}

func (p *process) kill() {
	// Kill fails only when the process has already exited, and the wait
	// below covers that case too.
	_ = p.cmd.Process.Kill()
	<-p.done
}

// lookPath finds name on PATH or fails the test with hint.
func lookPath(t testing.TB, name, hint string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s", hint)
	}
	return path
}

// freePorts returns n distinct loopback ports that were free a moment ago.
// Port 6379 is never returned.
func freePorts(n int) ([]int, error) {
	var ports []int
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick a free port: %w", err)
		}
		listeners = append(listeners, l)
		if port := l.Addr().(*net.TCPAddr).Port; port != 6379 {
			ports = append(ports, port)
		}
	}
	return ports, nil
}

// emptyDir removes everything inside dir, so a retried start does not see
// files of the failed attempt.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read data dir: %w", err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("clean data dir: %w", err)
		}
	}
	return nil
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readFrom returns the contents of path after offset, or nil if it cannot be
// read.
func readFrom(path string, offset int64) []byte {
	data, err := os.ReadFile(path)
	if err != nil || int64(len(data)) < offset {
		return nil
	}
	return data[offset:]
}

// infoField returns the value of key in the output of INFO or CLUSTER INFO.
func infoField(info, key string) (string, bool) {
	for line := range strings.Lines(info) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && k == key {
			return v, true
		}
	}
	return "", false
}
