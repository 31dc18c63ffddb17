// One service of a call chain, written against Go's plain net/http with no tracing code, for
// sonde's parenting tests.
//
// Usage: chain [-delay D] [-jitter D] [-parallel] [-cert FILE -key FILE [-plain PORT]] PORT [DOWNSTREAM_BASE_URL ...]
//
// With -cert and -key it serves HTTPS (crypto/tls, HTTP/1.1 only), and with -plain the same on a
// plain HTTP port too (the bench asks /status there); it calls https:// downstreams without
// checking their certificates (the tests' are self-signed), over HTTP/1.1.
//
// GET /status answers how many /req/ requests were answered so far (the bench's count of served
// requests).
//
// GET /req/{n} calls GET DOWNSTREAM/req/{n} on every downstream — one after the other, or all at
// once with -parallel — through one shared http.Client that keeps connections alive, then waits
// -delay plus a random part of -jitter and answers 200 (502 when a downstream failed). {n}
// travels down the chain, so a test can tell which request each span belongs to.
//
// net/http serves each connection on a goroutine of its own, and the client writes each request
// from a goroutine of the connection it picked (persistConn.writeLoop), on whichever OS thread
// the scheduler runs it: the thread that read a request is not, in general, the one that writes
// its calls.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var served atomic.Int64

var client = &http.Client{
	Timeout: 20 * time.Second,
	Transport: &http.Transport{
		// Enough idle connections that concurrent requests reuse them instead of churning.
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     5 * time.Minute,
		// A TLS configuration of its own keeps the client on HTTP/1.1 (no h2 offered).
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	},
}

func call(url string) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// Read to the end: only a drained body gives the connection back to the pool.
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

func main() {
	delay := flag.Duration("delay", 0, "wait this long before answering")
	jitter := flag.Duration("jitter", 0, "and up to this much longer, at random")
	parallel := flag.Bool("parallel", false, "call the downstreams all at once, not in turn")
	cert := flag.String("cert", "", "serve HTTPS with this certificate (PEM)")
	key := flag.String("key", "", "and this key (PEM)")
	plain := flag.Int("plain", 0, "with -cert, also serve plain HTTP on this port")
	flag.Parse()
	if flag.NArg() < 1 {
		fmt.Fprintln(os.Stderr, "usage: chain [-delay D] [-jitter D] [-parallel] [-cert FILE -key FILE [-plain PORT]] PORT [DOWNSTREAM ...]")
		os.Exit(2)
	}
	port, err := strconv.Atoi(flag.Arg(0))
	if err != nil {
		log.Fatalf("port: %v", err)
	}
	downstreams := flag.Args()[1:]

	http.HandleFunc("/req/", func(w http.ResponseWriter, r *http.Request) {
		n := strings.TrimPrefix(r.URL.Path, "/req/")
		if _, err := strconv.Atoi(n); err != nil {
			http.NotFound(w, r)
			return
		}
		var mu sync.Mutex
		failed := 0
		fetch := func(base string) {
			if err := call(base + r.URL.Path); err != nil {
				log.Print(err)
				mu.Lock()
				failed++
				mu.Unlock()
			}
		}
		if *parallel {
			var wg sync.WaitGroup
			for _, base := range downstreams {
				wg.Add(1)
				go func(base string) {
					defer wg.Done()
					fetch(base)
				}(base)
			}
			wg.Wait()
		} else {
			for _, base := range downstreams {
				fetch(base)
			}
		}
		wait := *delay
		if *jitter > 0 {
			wait += time.Duration(rand.Int63n(int64(*jitter)))
		}
		time.Sleep(wait)
		status := http.StatusOK
		if failed > 0 {
			status = http.StatusBadGateway
		}
		body := fmt.Sprintf("%s -> %d\n", r.URL.Path, status)
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(status)
		io.WriteString(w, body)
		served.Add(1)
	})
	http.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d\n", served.Load())
	})
	server := &http.Server{Addr: fmt.Sprintf("127.0.0.1:%d", port)}
	if *cert != "" {
		// A non-nil, empty map turns HTTP/2 off: ALPN offers HTTP/1.1 alone.
		server.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
		if *plain != 0 {
			go func() { log.Fatal(http.ListenAndServe(fmt.Sprintf("127.0.0.1:%d", *plain), nil)) }()
		}
		log.Fatal(server.ListenAndServeTLS(*cert, *key))
	}
	log.Fatal(server.ListenAndServe())
}
