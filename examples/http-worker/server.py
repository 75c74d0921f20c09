"""An app in the shape of the Azure Functions host's sample/HttpWorker, in Python.

host.json uses the legacy `httpWorker` section: the host runs
`python3 server.py`, passes the port in FUNCTIONS_HTTPWORKER_PORT, and forwards
each request of an HTTP-only function as it came, but at /{FunctionName}:
GET /api/hello?name=ada reaches this server as GET /hello?name=ada.
"""
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/":
            # Readiness probe: any answer means ready.
            return self.reply(200, "ok")
        if url.path != "/hello":
            return self.reply(404, f"no function at {url.path}")
        name = parse_qs(url.query).get("name", ["world"])[0]
        self.reply(200, f"Hello, {name}! (the worker got {self.path})")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        self.reply(200, f"got {body!r} at {self.path}")

    def reply(self, status, text):
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ["FUNCTIONS_HTTPWORKER_PORT"])
    print(f"Listening on 127.0.0.1:{port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
