// In-memory TLS 1.3 handshakes (client and server of Go's crypto/tls over net.Pipe),
// sequential, for bench/bench_keylog_hooks.py: each handshake calls writeKeyLog 8 times
// (4 secrets on each side).  Waits for a line on stdin before each round, then prints
// "HANDSHAKES SECONDS" for that round.
//
// usage: go_handshakes CERT KEY HANDSHAKES
package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"log"
	"net"
	"os"
	"strconv"
	"time"
)

func handshake(server, client *tls.Config) {
	a, b := net.Pipe()
	done := make(chan error, 1)
	go func() {
		s := tls.Server(a, server)
		done <- s.Handshake()
	}()
	c := tls.Client(b, client)
	if err := c.Handshake(); err != nil {
		log.Fatal(err)
	}
	if err := <-done; err != nil {
		log.Fatal(err)
	}
	a.Close() // the raw pipe: a close_notify would wait for a reader
	b.Close()
}

func main() {
	pair, err := tls.LoadX509KeyPair(os.Args[1], os.Args[2])
	if err != nil {
		log.Fatal(err)
	}
	count, _ := strconv.Atoi(os.Args[3])
	server := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13}
	client := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	input := bufio.NewScanner(os.Stdin)
	for input.Scan() {
		started := time.Now()
		for i := 0; i < count; i++ {
			handshake(server, client)
		}
		fmt.Printf("%d %.6f\n", count, time.Since(started).Seconds())
	}
}
