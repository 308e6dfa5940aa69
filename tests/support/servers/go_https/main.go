// A small HTTPS server for the harvester's tests: Go's crypto/tls with no key log
// configured (Config.KeyLogWriter nil), TLS 1.2 and 1.3.
//
// usage: go_https CERT_CHAIN KEY ADDR
package main

import (
	"crypto/tls"
	"fmt"
	"log"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) != 4 {
		log.Fatal("usage: go_https CERT_CHAIN KEY ADDR")
	}
	server := &http.Server{
		Addr:      os.Args[3],
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from go %s %s\n", r.Proto, r.URL.Path)
		}),
	}
	log.Fatal(server.ListenAndServeTLS(os.Args[1], os.Args[2]))
}
