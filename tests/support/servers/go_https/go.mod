module tlsbridge.test/go_https

go 1.19
