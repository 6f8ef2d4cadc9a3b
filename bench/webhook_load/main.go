// webhook_load: the load generator of bench/webhook_ack.py. It sends a burst of prepared HTTP
// requests, each on a connection of its own, all released at once, and prints each request's
// status and latency as JSON. Written in Go so that the client, not the server, is never what
// is measured: a burst of Python threads spends most of its time on the GIL and thread starts.
//
// Usage: webhook_load PLAN.json. The plan: {"address": "host:port", "timeout": seconds,
// "requests": [<base64 of the raw HTTP/1.1 request bytes>, ...]}. Python prepares the
// requests (bodies, signatures, headers), so the bytes on the wire are exactly the ones the
// benchmark built. Output: {"results": [{"status": 202, "seconds": 0.0123, "error": ""}, ...]}
// in plan order; status 0 with an error when no response arrived.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

type plan struct {
	Address  string   `json:"address"`
	Timeout  float64  `json:"timeout"`
	Requests [][]byte `json:"requests"`
}

type result struct {
	Status  int     `json:"status"`
	Seconds float64 `json:"seconds"`
	Error   string  `json:"error"`
}

// send dials, writes the request and reads the whole response; the clock starts before the
// dial because a forge opens a connection per delivery.
func send(address string, request []byte, timeout time.Duration) result {
	start := time.Now()
	fail := func(err error) result {
		return result{Status: 0, Seconds: time.Since(start).Seconds(), Error: err.Error()}
	}
	conn, err := net.DialTimeout("tcp", address, timeout)
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(start.Add(timeout)); err != nil {
		return fail(err)
	}
	if _, err := conn.Write(request); err != nil {
		return fail(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return fail(err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return fail(err)
	}
	return result{Status: resp.StatusCode, Seconds: time.Since(start).Seconds()}
}

func run() error {
	if len(os.Args) != 2 {
		return fmt.Errorf("usage: webhook_load PLAN.json (got %d arguments)", len(os.Args)-1)
	}
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		return err
	}
	var p plan
	if err := json.Unmarshal(data, &p); err != nil {
		return fmt.Errorf("plan %s: %w", os.Args[1], err)
	}
	if p.Address == "" || len(p.Requests) == 0 || p.Timeout <= 0 {
		return fmt.Errorf("plan %s: expected an address, a positive timeout and at least one "+
			"request, found address %q, timeout %v, %d requests", os.Args[1], p.Address,
			p.Timeout, len(p.Requests))
	}
	timeout := time.Duration(p.Timeout * float64(time.Second))
	results := make([]result, len(p.Requests))
	release := make(chan struct{})
	var ready, done sync.WaitGroup
	ready.Add(len(p.Requests))
	done.Add(len(p.Requests))
	for i, request := range p.Requests {
		go func() {
			defer done.Done()
			ready.Done()
			<-release
			results[i] = send(p.Address, request, timeout)
		}()
	}
	ready.Wait() // every goroutine is parked on the barrier: the burst starts at once
	close(release)
	done.Wait()
	return json.NewEncoder(os.Stdout).Encode(map[string][]result{"results": results})
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "webhook_load:", err)
		os.Exit(2)
	}
}
