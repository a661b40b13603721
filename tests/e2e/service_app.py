"""A tiny HTTP server run as a service replica by the services e2e tests (stdlib only).

GET /healthz: 200 (503 while the file ``unready`` exists in the working directory);
GET /id: the replica's attempt id; GET /sleep?s=N: answers after N seconds;
GET /sse?n=N&gap=S: N Server-Sent Events, S seconds apart, each flushed as it is written."""

import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

ME = os.environ.get("GPUNET_ATTEMPT_ID", "?")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stdout.write(f"{self.command} {self.path}\n")
        sys.stdout.flush()

    def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/healthz":
            self._send(503 if os.path.exists("unready") else 200, b"ok")
        elif url.path == "/id":
            self._send(200, ME.encode())
        elif url.path == "/sleep":
            time.sleep(float(q.get("s", "1")))
            self._send(200, ME.encode())
        elif url.path == "/sse":
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(int(q.get("n", "5"))):
                data = f"data: {i} {time.time():.3f}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(float(q.get("gap", "0.3")))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._send(404, b"no such path")


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
