package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// runForward accepts TCP connections on --listen and copies each, both ways, to a new
// connection to --to. The local node (hack/node.sh) runs it so that pods, whose traffic to the
// kubernetes Service kube-proxy sends to the node's address, reach the apiserver, which listens
// on loopback only.
func runForward(args []string) int {
	fs := flag.NewFlagSet("forward", flag.ContinueOnError)
	listen := fs.String("listen", "", "address to accept connections on, e.g. 10.217.0.1:6443")
	to := fs.String("to", "", "address to forward them to, e.g. 127.0.0.1:6443")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *listen == "" || *to == "" || fs.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: kubeci-testenv forward --listen HOST:PORT --to HOST:PORT")
		return 2
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "forward: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "forward: %s -> %s\n", l.Addr(), *to)
	go func() {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		<-sigs
		l.Close()
	}()
	for {
		in, err := l.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return 0 // closed by a signal
		}
		go pipe(in, *to)
	}
}

func pipe(in net.Conn, to string) {
	defer in.Close()
	out, err := net.DialTimeout("tcp", to, 5*time.Second)
	if err != nil {
		fmt.Fprintf(os.Stderr, "forward: %s: %v\n", in.RemoteAddr(), err)
		return
	}
	defer out.Close()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite() // pass the half-close on
		}
		done <- struct{}{}
	}
	go cp(out, in)
	go cp(in, out)
	<-done
	<-done
}
