package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/component-base/version"
)

// The stdout protocol of "up": exactly one line, "ready <abs DIR>/kubeconfig",
// once etcd, kube-apiserver (/readyz) and kube-controller-manager (/healthz)
// are up. Nothing else is ever written to stdout. Diagnostics go to stderr and
// DIR/testenv.log; component logs go to DIR/<component>.log.

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, " ") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func runVersion(args []string) int {
	fmt.Println(version.Get().GitVersion)
	return 0
}

type upOptions struct {
	dir          string
	withKCM      bool
	exitOnEOF    bool
	cleanup      bool
	timeout      time.Duration
	advertise    string
	apiserverArg stringList
	kcmArg       stringList
}

func runUp(args []string) int {
	var o upOptions
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	fs.StringVar(&o.dir, "dir", "", "state directory: certs, kubeconfig, etcd data, logs (required)")
	fs.BoolVar(&o.withKCM, "controller-manager", true, "also run kube-controller-manager")
	fs.BoolVar(&o.exitOnEOF, "exit-on-stdin-eof", false, "shut down when stdin reaches EOF")
	fs.BoolVar(&o.cleanup, "cleanup", false, "remove --dir on exit")
	fs.StringVar(&o.advertise, "advertise-address", "10.217.0.1", "address the apiserver publishes in the kubernetes Service's endpoints: the local node's (hack/node.sh forwards it to the loopback port); empty: the apiserver's default, the host's main address")
	fs.DurationVar(&o.timeout, "timeout", 120*time.Second, "give up if the control plane is not ready by then")
	fs.Var(&o.apiserverArg, "apiserver-arg", "extra kube-apiserver flag, e.g. --apiserver-arg=--feature-gates=X=true (repeatable; later flags win)")
	fs.Var(&o.kcmArg, "controller-manager-arg", "extra kube-controller-manager flag (repeatable)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.dir == "" || fs.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: kubeci-testenv up --dir DIR [--controller-manager=true] [--exit-on-stdin-eof] [--cleanup] [--timeout 120s]")
		return 2
	}
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "up: %v\n", err)
		return 1
	}
	o.dir = dir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintf(os.Stderr, "up: %v\n", err)
		return 1
	}

	// One orchestrator per DIR.
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		fmt.Fprintf(os.Stderr, "up: %v\n", err)
		return 1
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		fmt.Fprintf(os.Stderr, "up: %s is in use by another kubeci-testenv up (%v)\n", dir, err)
		return 1
	}

	u := &upper{opts: o, dir: dir}
	code := u.run()
	if o.cleanup {
		os.RemoveAll(dir)
	}
	return code
}

type upper struct {
	opts     upOptions
	dir      string
	log      io.Writer
	children []*child
	mu       sync.Mutex
}

func (u *upper) logf(format string, a ...any) {
	fmt.Fprintf(u.log, time.Now().Format("15:04:05.000")+" up: "+format+"\n", a...)
}

func (u *upper) run() int {
	start := time.Now()
	logFile, err := os.Create(filepath.Join(u.dir, "testenv.log"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "up: %v\n", err)
		return 1
	}
	defer logFile.Close()
	u.log = bestEffortWriter{logFile, os.Stderr}

	// The test harness that reads our stdout/stderr through pipes may be gone by the time we
	// shut down. Without this, the first log line written to a broken stderr pipe kills the
	// process with SIGPIPE before it stops its children and removes --dir. (Notify, unlike
	// signal.Ignore, is not inherited by the children.)
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)

	// A fresh cluster every time: stale state of a killed run is discarded.
	for _, p := range []string{"etcd", "kubeconfig", "testenv.json", "kube-controller-manager", "kube-apiserver"} {
		os.RemoveAll(filepath.Join(u.dir, p))
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sigs
		u.logf("received %v, shutting down", s)
		cancel()
	}()
	if u.opts.exitOnEOF {
		go func() {
			io.Copy(io.Discard, os.Stdin)
			u.logf("stdin reached EOF, shutting down")
			cancel()
		}()
	}
	defer u.stopAll()

	err = u.bringUp(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return 0 // asked to stop while starting
		}
		u.logf("FAILED after %s: %v", time.Since(start).Round(time.Millisecond), err)
		return 1
	}
	u.logf("ready after %s", time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(os.Stdout, "ready %s\n", filepath.Join(u.dir, "kubeconfig"))
	os.Stdout.Sync()

	// Run until told to stop, or until a component dies.
	dead := make(chan *child, len(u.children))
	for _, c := range u.children {
		go func(c *child) { <-c.done; dead <- c }(c)
	}
	select {
	case <-ctx.Done():
		return 0
	case c := <-dead:
		u.logf("%s exited unexpectedly (%v); last lines of %s:\n%s", c.name, c.err, c.logPath, tail(c.logPath, 30))
		return 1
	}
}

// bestEffortWriter writes to every writer, ignoring errors (a closed stderr must not stop
// the log file, unlike io.MultiWriter).
type bestEffortWriter []io.Writer

func (ws bestEffortWriter) Write(p []byte) (int, error) {
	for _, w := range ws {
		w.Write(p)
	}
	return len(p), nil
}

// bringUp starts etcd, kube-apiserver and kube-controller-manager in turn.
func (u *upper) bringUp(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, u.opts.timeout)
	defer cancel()

	p, err := genPKI(u.dir)
	if err != nil {
		return fmt.Errorf("generating certificates: %w", err)
	}
	caPool := x509.NewCertPool()
	caPool.AppendCertsFromPEM(p.caPEM)
	apiClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: caPool}}}
	// kube-controller-manager serves with a self-signed certificate of its own.
	insecureClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		Proxy: nil, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}

	info := map[string]any{"dir": u.dir, "kubeconfig": filepath.Join(u.dir, "kubeconfig"), "pid": os.Getpid()}

	// etcd
	var etcdURL string
	etcd, err := u.startWithPortRetry(ctx, "etcd", 2, func(ports []int) ([]string, string) {
		etcdURL = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
		return []string{"etcd",
			"--data-dir=" + filepath.Join(u.dir, "etcd"),
			"--listen-client-url=" + etcdURL,
			fmt.Sprintf("--listen-peer-url=http://127.0.0.1:%d", ports[1]),
		}, etcdURL + "/health"
	}, func(ctx context.Context, c *child, url string) error {
		return waitHTTP(ctx, c, &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil}}, url, "", `"health":"true"`)
	})
	if err != nil {
		return err
	}
	info["etcd"] = etcdURL
	info["etcdPid"] = etcd.cmd.Process.Pid

	// kube-apiserver
	var apiURL string
	apiserver, err := u.startWithPortRetry(ctx, "kube-apiserver", 1, func(ports []int) ([]string, string) {
		apiURL = fmt.Sprintf("https://127.0.0.1:%d", ports[0])
		args := []string{"kube-apiserver",
			"--etcd-servers=" + etcdURL,
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(ports[0]),
			"--cert-dir=" + filepath.Join(u.dir, "kube-apiserver"),
			"--tls-cert-file=" + p.servingCert,
			"--tls-private-key-file=" + p.servKey,
			"--authorization-mode=Node,RBAC",
			"--token-auth-file=" + p.tokenFile,
			// Client certificates signed by DIR/ca.crt authenticate too; it also makes the
			// apiserver publish kube-system/extension-apiserver-authentication, which the
			// controller manager's delegated authentication reads.
			"--client-ca-file=" + p.caCert,
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + p.saKey,
			"--service-account-signing-key-file=" + p.saKey,
			"--service-cluster-ip-range=10.0.0.0/24",
			"--allow-privileged=true",
			// Reach kubelets (logs, exec) at their node IP only: the default tries the
			// Hostname address first, a DNS lookup that would leave this machine.
			"--kubelet-preferred-address-types=InternalIP",
		}
		if u.opts.advertise != "" {
			// Pods reach the apiserver through the kubernetes Service, whose endpoint is this
			// address and the secure port; nothing listens there until the local node forwards it.
			args = append(args, "--advertise-address="+u.opts.advertise)
		}
		if !u.opts.withKCM {
			// Nobody creates default ServiceAccounts without the controller manager.
			args = append(args, "--disable-admission-plugins=ServiceAccount")
		}
		return append(args, u.opts.apiserverArg...), apiURL + "/readyz"
	}, func(ctx context.Context, c *child, url string) error {
		return waitHTTP(ctx, c, apiClient, url, p.token, "ok")
	})
	if err != nil {
		return err
	}
	info["server"] = apiURL
	info["apiserverPid"] = apiserver.cmd.Process.Pid

	kubeconfig := filepath.Join(u.dir, "kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kubeci-testenv
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: kubeci-testenv
  context:
    cluster: kubeci-testenv
    user: admin
    namespace: default
current-context: kubeci-testenv
`, apiURL, base64.StdEncoding.EncodeToString(p.caPEM), p.token)
	// The controller manager gets its own copy; DIR/kubeconfig is written
	// last, so that its existence means "ready".
	kcmKubeconfig := filepath.Join(u.dir, "kube-controller-manager.kubeconfig")
	if err := os.WriteFile(kcmKubeconfig, []byte(kc), 0o600); err != nil {
		return err
	}

	// kube-controller-manager
	if u.opts.withKCM {
		kcm, err := u.startWithPortRetry(ctx, "kube-controller-manager", 1, func(ports []int) ([]string, string) {
			args := []string{"kube-controller-manager",
				"--kubeconfig=" + kcmKubeconfig,
				"--authentication-kubeconfig=" + kcmKubeconfig,
				"--authorization-kubeconfig=" + kcmKubeconfig,
				// Tokens are reviewed by the apiserver; client certs are not used: skip reading
				// kube-system/extension-apiserver-authentication (it has no requestheader CA here).
				"--authentication-skip-lookup=true",
				"--leader-elect=false",
				"--controllers=*",
				"--use-service-account-credentials=false",
				"--service-account-private-key-file=" + p.saKey,
				"--root-ca-file=" + p.caCert,
				// Sign approved CertificateSigningRequests with the test CA.
				"--cluster-signing-cert-file=" + p.caCert,
				"--cluster-signing-key-file=" + p.caKey,
				"--bind-address=127.0.0.1",
				"--secure-port=" + strconv.Itoa(ports[0]),
				"--cert-dir=" + filepath.Join(u.dir, "kube-controller-manager"),
			}
			return append(args, u.opts.kcmArg...), fmt.Sprintf("https://127.0.0.1:%d/healthz", ports[0])
		}, func(ctx context.Context, c *child, url string) error {
			return waitHTTP(ctx, c, insecureClient, url, "", "ok")
		})
		if err != nil {
			return err
		}
		info["controllerManagerPid"] = kcm.cmd.Process.Pid
	}

	if err := writeFileAtomic(filepath.Join(u.dir, "testenv.json"), mustJSON(info), 0o644); err != nil {
		return err
	}
	return writeFileAtomic(kubeconfig, []byte(kc), 0o600)
}

func mustJSON(v any) []byte {
	b, _ := json.MarshalIndent(v, "", "  ")
	return append(b, '\n')
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// startWithPortRetry picks free loopback ports, starts a component with them
// and waits until it is healthy. Ports are chosen by binding to port 0 and
// releasing them, so a concurrent instance may grab one first: then the
// component fails with "address already in use" and is retried on new ports.
func (u *upper) startWithPortRetry(ctx context.Context, name string, nports int,
	mkArgs func(ports []int) (args []string, healthURL string),
	wait func(ctx context.Context, c *child, url string) error) (*child, error) {
	const attempts = 5
	for i := 1; ; i++ {
		ports, err := freePorts(nports)
		if err != nil {
			return nil, err
		}
		args, url := mkArgs(ports)
		t0 := time.Now()
		c, err := u.spawn(name, args)
		if err != nil {
			return nil, err
		}
		err = wait(ctx, c, url)
		if err == nil {
			u.logf("%s healthy after %s (pid %d, %s)", name, time.Since(t0).Round(time.Millisecond), c.cmd.Process.Pid, url)
			return c, nil
		}
		u.stop(c)
		u.forget(c)
		if ctx.Err() == nil && i < attempts && strings.Contains(tail(c.logPath, 50), "address already in use") {
			u.logf("%s: port taken, retrying with other ports", name)
			continue
		}
		return nil, fmt.Errorf("%s: %w; last lines of %s:\n%s", name, err, c.logPath, tail(c.logPath, 40))
	}
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitHTTP polls url until it answers 200 with a body containing want, the
// child exits, or ctx ends.
func waitHTTP(ctx context.Context, c *child, client *http.Client, url, token, want string) error {
	var last string
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && bytes.Contains(body, []byte(want)) {
				return nil
			}
			last = fmt.Sprintf("%s: HTTP %d: %s", url, resp.StatusCode, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		select {
		case <-c.done:
			return fmt.Errorf("exited before it was healthy (%v)", c.err)
		case <-ctx.Done():
			return fmt.Errorf("not healthy in time: %s", last)
		case <-tick.C:
		}
	}
}

// child is a component process: this binary re-executed with a subcommand.
type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	err     error         // exit status, valid once done is closed
}

// spawnRequests is served by one goroutine locked to its OS thread, which
// never exits: Pdeathsig fires when the *thread* that forked the child dies,
// so all children are forked from a thread that lives as long as the process.
var spawnRequests = make(chan spawnRequest)

type spawnRequest struct {
	cmd *exec.Cmd
	res chan error
}

func init() {
	go func() {
		runtime.LockOSThread()
		for r := range spawnRequests {
			r.res <- r.cmd.Start()
		}
	}()
}

func (u *upper) spawn(name string, args []string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(u.dir, name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	fmt.Fprintf(lf, "=== %s %s\n", time.Now().Format(time.RFC3339), strings.Join(args, " "))
	cmd := exec.Command(exe, args...)
	cmd.Dir = u.dir
	cmd.Stdin = nil // /dev/null
	cmd.Stdout = lf
	cmd.Stderr = lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	res := make(chan error)
	spawnRequests <- spawnRequest{cmd, res}
	if err := <-res; err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	u.mu.Lock()
	u.children = append(u.children, c)
	u.mu.Unlock()
	return c, nil
}

// stop sends SIGTERM, and SIGKILL if the process is still there after a grace period.
func (u *upper) stop(c *child) {
	select {
	case <-c.done:
		return
	default:
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		u.logf("%s did not stop within 10s, killing it", c.name)
		c.cmd.Process.Kill()
		<-c.done
	}
}

func (u *upper) forget(c *child) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i, x := range u.children {
		if x == c {
			u.children = append(u.children[:i], u.children[i+1:]...)
			return
		}
	}
}

// stopAll stops the children in reverse start order.
func (u *upper) stopAll() {
	u.mu.Lock()
	cs := append([]*child(nil), u.children...)
	u.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		u.stop(cs[i])
	}
	if len(cs) > 0 {
		u.logf("stopped")
	}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const max = 256 << 10
	if st, err := f.Stat(); err == nil && st.Size() > max {
		f.Seek(st.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
