// kube-harness runs a real kube-apiserver backed by an embedded etcd in one
// process, so plugforge's tests talk to the genuine Kubernetes API without a
// cluster. Everything after "--" is passed to kube-apiserver unchanged; the
// harness adds only --etcd-servers.
//
//	kube-harness -etcd-dir DIR -- --secure-port=6443 ...
package main

import (
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	etcdDir := flag.String("etcd-dir", "", "directory for etcd's data (required)")
	flag.Parse()
	if *etcdDir == "" {
		fmt.Fprintln(os.Stderr, "kube-harness: -etcd-dir is required")
		os.Exit(2)
	}

	clientURL, err := startEtcd(*etcdDir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kube-harness: etcd: %v\n", err)
		os.Exit(1)
	}

	cmd := app.NewAPIServerCommand()
	cmd.SetArgs(append(flag.Args(), "--etcd-servers="+clientURL))
	os.Exit(cli.Run(cmd))
}

// startEtcd starts a single-member etcd on loopback and returns its client URL.
func startEtcd(dir string) (string, error) {
	clientPort, err := freePort()
	if err != nil {
		return "", err
	}
	peerPort, err := freePort()
	if err != nil {
		return "", err
	}
	client, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", clientPort))
	peer, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", peerPort))

	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.LogLevel = "error"
	cfg.ListenClientUrls = []url.URL{*client}
	cfg.AdvertiseClientUrls = []url.URL{*client}
	cfg.ListenPeerUrls = []url.URL{*peer}
	cfg.AdvertisePeerUrls = []url.URL{*peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	// Tests create and delete many objects; keep the database small and fast.
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "5m"
	cfg.UnsafeNoFsync = true

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return "", err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return "", fmt.Errorf("not ready after 60s")
	}
	go func() {
		// etcd failing underneath the apiserver is fatal: say so and exit.
		err := <-e.Err()
		fmt.Fprintf(os.Stderr, "kube-harness: etcd stopped: %v\n", err)
		os.Exit(1)
	}()
	return client.String(), nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
