"""A minimal Azure Functions custom handler (JSON mode), standard library only.

The host starts it with FUNCTIONS_CUSTOMHANDLER_PORT set, probes GET / until it
answers, then POSTs each invocation to /{FunctionName} with a body
{"Data": {...}, "Metadata": {...}} and expects {"Outputs": {...}, "Logs": [...]}.

Functions:
  hello    GET/POST /api/hello/{name?}  anonymous  -> "<GREETING>, <name>!"
  secret   GET /api/secret/{id:int}     function   -> {"id": <id>, "message": ...}
  nightly  timer 0 30 2 * * *                      -> only Logs (`strom fn invoke` runs it now)
"""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def as_dict(value):
    # The docs show an empty Query as the string "{}"; the host code sends an object.
    return value if isinstance(value, dict) else {}


def http_response(status, body, content_type="text/plain"):
    return {"statusCode": status, "body": body, "headers": {"Content-Type": content_type}}


def hello(data):
    req = as_dict(data.get("req"))
    name = as_dict(req.get("Params")).get("name") or as_dict(req.get("Query")).get("name") or "world"
    greeting = os.environ.get("GREETING", "Hello")
    return {
        "Outputs": {"res": http_response(200, f"{greeting}, {name}!")},
        "Logs": [f"greeted {name}"],
    }


def secret(data):
    item_id = int(as_dict(as_dict(data.get("req")).get("Params")).get("id", 0))
    body = json.dumps({"id": item_id, "message": "only with a key"})
    return {
        "Outputs": {"res": http_response(200, body, "application/json")},
        "Logs": [f"secret {item_id} read"],
    }


def nightly(data):
    late = " (past due)" if as_dict(data.get("timer")).get("IsPastDue") else ""
    return {"Outputs": {}, "Logs": [f"nightly batch ran{late}"]}


FUNCTIONS = {"hello": hello, "secret": secret, "nightly": nightly}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        # Readiness probe: any answer means ready.
        self.reply(200, b"ok", "text/plain")

    def do_POST(self):
        function = FUNCTIONS.get(self.path.strip("/"))
        if function is None:
            self.reply(404, b"no such function", "text/plain")
            return
        length = int(self.headers.get("Content-Length", "0"))
        payload = json.loads(self.rfile.read(length) or b"{}")
        result = function(as_dict(payload.get("Data")))
        self.reply(200, json.dumps(result).encode(), "application/json")

    def reply(self, status, data, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ["FUNCTIONS_CUSTOMHANDLER_PORT"])
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
