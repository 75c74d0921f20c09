"""An Azure Functions custom handler (JSON mode) that sends messages to RabbitMQ
through output bindings and handles them through a RabbitMQ trigger, standard
library only. The host publishes what a function puts in `Outputs.<binding>`
(or `ReturnValue` for `$return`) and confirms it with the broker before the
invocation succeeds; it acknowledges a delivered message only then.

Functions:
  order           POST /api/orders  anonymous  -> the order (a JSON object) to queue
                  `orders`, or each item of a JSON array as its own message;
                  answers 202 with how many were queued
  process-order   each message of queue `orders` -> `{"processed": <id>}` to queue
                  `processed`; an order with "fail": true fails (500), is tried
                  3 times (its retry policy), then lands in `orders-poison`
  nightly-report  timer 0 0 3 * * *  -> a report message to queue `reports`
                  (`strom fn invoke` runs it now)

The broker is the app setting RabbitMQConnection (amqp://user:password@host:5672/).
"""
import json
import os
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def as_dict(value):
    return value if isinstance(value, dict) else {}


def order(data):
    req = as_dict(data.get("req"))
    try:
        body = json.loads(req.get("Body") or "null")
    except ValueError:
        body = None
    if not isinstance(body, (dict, list)) or not body:
        res = {"statusCode": 400, "body": "send a JSON order (an object, or an array of them)"}
        return {"Outputs": {"res": res}, "Logs": ["rejected a request without an order"]}
    count = len(body) if isinstance(body, list) else 1
    res = {
        "statusCode": 202,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"queued": count}),
    }
    return {"Outputs": {"res": res, "outOrder": body}, "Logs": [f"queued {count} order(s)"]}


def process_order(data):
    order = data.get("order")
    if isinstance(order, dict) and order.get("fail"):
        return None  # answered as HTTP 500: the host retries, then poisons
    order_id = order.get("id") if isinstance(order, dict) else order
    return {"Outputs": {}, "Logs": [f"processed order {order_id}"], "ReturnValue": {"processed": order_id}}


def nightly_report(data):
    now = datetime.now(timezone.utc).isoformat()
    return {"Outputs": {}, "Logs": ["report sent"], "ReturnValue": {"report": "nightly", "at": now}}


FUNCTIONS = {"order": order, "process-order": process_order, "nightly-report": nightly_report}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.reply(200, b"ok", "text/plain")

    def do_POST(self):
        function = FUNCTIONS.get(self.path.strip("/"))
        if function is None:
            self.reply(404, b'{"Logs":["no such function"]}', "application/json")
            return
        length = int(self.headers.get("Content-Length") or 0)
        payload = json.loads(self.rfile.read(length) or b"{}")
        answer = function(as_dict(payload.get("Data")))
        if answer is None:
            self.reply(500, b'{"Logs":["failed on purpose"]}', "application/json")
            return
        self.reply(200, json.dumps(answer).encode(), "application/json")

    def reply(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ["FUNCTIONS_CUSTOMHANDLER_PORT"])
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
