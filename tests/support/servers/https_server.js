// A node https server for the harvester tests: node https.createServer, TLS 1.2 and 1.3.
// usage: node https_server.js CERT KEY PORT
"use strict";
const fs = require("fs");
const https = require("https");
const [cert, key, port] = process.argv.slice(2);
const server = https.createServer(
  { cert: fs.readFileSync(cert), key: fs.readFileSync(key), minVersion: "TLSv1.2" },
  (request, response) => {
    response.writeHead(200, { "content-type": "text/plain" });
    response.end(`hello from node ${process.version} over ${request.socket.getProtocol()}\n`);
  }
);
// a kept connection stays while a test holds it (the default closes it after 5 s idle)
server.keepAliveTimeout = 300000;
server.listen(Number(port), "127.0.0.1", () => console.log(`listening on ${port}`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
