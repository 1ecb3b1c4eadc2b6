"""A fault-injecting HTTP proxy in front of fake-gcs-server, for storage-fault tests.

Requests whose path names a "flaky" object fail with 503 the first `flaky_failures` times, then pass
(clients must retry); requests naming a "broken" object always fail with 403, a permanent error that
clients do not retry. Everything else is forwarded unchanged.
Loopback only; it stops with the test.
"""
import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class FaultyProxy:
    def __init__(self, upstream: str, flaky_failures: int = 2):
        self.upstream, self.upstream_url = urlparse(upstream), upstream.rstrip("/")
        self.flaky_failures = flaky_failures
        self.seen = Counter()
        self.faults = Counter()
        self.requests = []  # (method, path) of every request, as it came
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def fault_for(self, path: str) -> int | None:
        name = unquote(path)
        if "broken" in name:
            self.faults[name] += 1
            return 403
        if "flaky" in name and "alt=media" in path:  # only object downloads, not listings
            self.seen[name] += 1
            if self.seen[name] <= self.flaky_failures:
                self.faults[name] += 1
                return 503
        return None

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.requests.append((self.command, unquote(self.path)))
                status = proxy.fault_for(self.path)
                if status:
                    payload = b'{"error": {"code": %d, "message": "injected fault"}}' % status
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                response = conn.getresponse()
                # Object metadata carries download links to the emulator itself; point them here instead.
                data = response.read().replace(proxy.upstream_url.encode(), proxy.url.encode())
                self.send_response(response.status)
                for k, v in response.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        return Handler
