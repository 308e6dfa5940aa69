module tlsbridge.bench/go_handshakes

go 1.19
