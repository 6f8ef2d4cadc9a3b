// Command reload-peer stands in for configmap-reload when the Go module proxy will not serve
// that module (it answers 403 on this workplace). It does what configmap-reload documents and
// nothing more, with the same flags, so the benchmark drives either binary the same way: watch
// each --volume-dir with fsnotify, and when ..data is created (the kubelet's atomic swap) send
// the webhook synchronously, then serve Prometheus metrics like the peer does (which also keeps
// its resident memory comparable: the peer links the same client library).
package main

import (
	"flag"
	"log"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

var reloads = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "configmap_reload_success_reloads_total", Help: "Webhook calls answered as expected.",
}, []string{"webhook"})

func main() {
	var dirs, hooks list
	flag.Var(&dirs, "volume-dir", "directory to watch (repeatable)")
	flag.Var(&hooks, "webhook-url", "URL called after each ..data swap (repeatable)")
	method := flag.String("webhook-method", "POST", "HTTP method of the webhook")
	status := flag.Int("webhook-status-code", 200, "status that means the reload worked")
	retries := flag.Int("webhook-retries", 1, "attempts per webhook")
	listen := flag.String("web.listen-address", ":9533", "metrics address")
	flag.Parse()
	if len(dirs) == 0 || len(hooks) == 0 {
		log.Fatal("need --volume-dir and --webhook-url")
	}
	go func() {
		http.Handle("/metrics", promhttp.Handler())
		log.Fatal(http.ListenAndServe(*listen, nil))
	}()
	w, err := fsnotify.NewWatcher()
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range dirs {
		if err := w.Add(d); err != nil {
			log.Fatal(err)
		}
	}
	for {
		select {
		case ev := <-w.Events:
			if ev.Op&fsnotify.Create == 0 || filepath.Base(ev.Name) != "..data" {
				continue
			}
			for _, h := range hooks {
				call(h, *method, *status, *retries)
			}
		case err := <-w.Errors:
			log.Println("watch error:", err)
		}
	}
}

func call(url, method string, want, attempts int) {
	for i := 0; i < attempts; i++ {
		req, err := http.NewRequest(method, url, nil)
		if err != nil {
			log.Println("webhook:", err)
			return
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == want {
				reloads.WithLabelValues(url).Inc()
				return
			}
		}
		time.Sleep(time.Duration(i+1) * 100 * time.Millisecond)
	}
	log.Println("webhook failed after", attempts, "attempts:", url)
}
