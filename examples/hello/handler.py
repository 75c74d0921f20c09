"""A minimal Azure Functions custom handler (JSON mode), standard library only.

The host starts it with FUNCTIONS_CUSTOMHANDLER_PORT set and POSTs each invocation
to /{FunctionName}; see shared azure-functions-reference.md §1.
"""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        # Readiness probe: any answer means ready.
        self.send_response(200)
        self.end_headers()

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        payload = json.loads(self.rfile.read(length) or b"{}")
        function = self.path.strip("/")
        if function == "hello":
            req = payload.get("Data", {}).get("req", {})
            name = req.get("Params", {}).get("name") or req.get("Query", {}).get("name") or "world"
            body = {
                "Outputs": {"res": {"statusCode": 200, "body": f"Hello, {name}!",
                                    "headers": {"Content-Type": "text/plain"}}},
                "Logs": [f"greeted {name}"],
            }
        elif function == "nightly":
            body = {"Outputs": {}, "Logs": ["nightly batch ran"]}
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ.get("FUNCTIONS_CUSTOMHANDLER_PORT", "8080"))
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
