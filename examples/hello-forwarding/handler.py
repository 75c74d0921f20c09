"""A minimal Azure Functions custom handler (HTTP forwarding), standard library only.

With "enableForwardingHttpRequest": true, a function with exactly one httpTrigger
input and one http output receives the caller's request as-is: same method, headers
and body, at the original path including the /api prefix (e.g. GET /api/echo/a?b=1).
The response is relayed to the caller unchanged. The host probes GET / for
readiness, which this handler answers like any other request.
"""
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def answer(self):
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)  # drain the body; this example ignores it
        path, _, query = self.path.partition("?")
        text = f"you called {self.command} {path}" + (f"?{query}" if query else "")
        data = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = answer

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ["FUNCTIONS_CUSTOMHANDLER_PORT"])
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
