// Command kubeci-testenv is a busybox-style multiplexer around upstream
// Kubernetes components, built from the upstream Go modules, plus an
// orchestrator ("up") that runs a throwaway control plane on loopback for
// kubeci's tests.
//
//	kubeci-testenv kube-apiserver <flags>           upstream kube-apiserver
//	kubeci-testenv kube-controller-manager <flags>  upstream kube-controller-manager
//	kubeci-testenv kube-scheduler <flags>           upstream kube-scheduler
//	kubeci-testenv kubelet <flags>                  upstream kubelet (the local node, hack/node.sh)
//	kubeci-testenv kube-proxy <flags>               upstream kube-proxy (the local node, hack/node.sh)
//	kubeci-testenv forward --listen A --to B        TCP forwarder (the apiserver on the node's address)
//	kubeci-testenv etcd <flags>                     embedded etcd (go.etcd.io/etcd/server/v3/embed)
//	kubeci-testenv up --dir DIR [flags]             etcd + apiserver (+ controller-manager)
//
// Every component runs in its own process (the orchestrator re-executes this
// binary), so the process-global state of the components (flags, feature
// gates, signal handlers, metrics registries) never collides.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	_ "time/tzdata" // CronJob time zones, as in the upstream mains

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxyapp "k8s.io/kubernetes/cmd/kube-proxy/app"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"
)

// command is one entry of the dispatch table. Upstream commands are given as
// constructors: they must only be built in the process that runs them (e.g.
// NewAPIServerCommand installs the process's signal handler).
type command struct {
	help  string
	cobra func() *cobra.Command // upstream cobra command, run with cli.Run
	run   func(args []string) int
}

// commands is the dispatch table. To add a component (kubelet,
// kube-scheduler, kubectl, ...), import its app package and add one line.
var commands = map[string]command{
	"kube-apiserver":          {help: "upstream kube-apiserver", cobra: apiserverapp.NewAPIServerCommand},
	"kube-controller-manager": {help: "upstream kube-controller-manager", cobra: kcmapp.NewControllerManagerCommand},
	"kube-scheduler":          {help: "upstream kube-scheduler", cobra: func() *cobra.Command { return schedulerapp.NewSchedulerCommand() }},
	"kubelet":                 {help: "upstream kubelet", cobra: func() *cobra.Command { return kubeletapp.NewKubeletCommand(context.Background()) }},
	"kube-proxy":              {help: "upstream kube-proxy", cobra: proxyapp.NewProxyCommand},
	"forward":                 {help: "forward TCP connections from --listen to --to", run: runForward},
	"etcd":                    {help: "embedded etcd server on loopback", run: runEtcd},
	"up":                      {help: "run a test control plane in --dir, print 'ready DIR/kubeconfig'", run: runUp},
	"version":                 {help: "print the Kubernetes version this binary was built from", run: runVersion},
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if _, ok := commands[name]; !ok { // not invoked through a symlink named after a command
		if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			usage()
			if len(args) == 0 {
				os.Exit(2)
			}
			os.Exit(0)
		}
		name, args = args[0], args[1:]
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "kubeci-testenv: unknown command %q\n", name)
		usage()
		os.Exit(2)
	}
	if c.cobra != nil {
		cmd := c.cobra()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	}
	os.Exit(c.run(args))
}

func usage() {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("usage: kubeci-testenv <command> [flags]\n\ncommands:\n")
	for _, n := range names {
		fmt.Fprintf(&b, "  %-24s %s\n", n, commands[n].help)
	}
	fmt.Fprint(os.Stderr, b.String())
}
