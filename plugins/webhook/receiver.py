#!/usr/bin/env python3
"""A local webhook receiver for trying the webhook plugin: prints each event it gets,
checks the x-apiary-signature header against the secret, and answers 200.

    python3 plugins/webhook/receiver.py PORT SECRET
"""

import hashlib
import hmac
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

PORT, SECRET = int(sys.argv[1]), sys.argv[2].encode()


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        want = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(want, self.headers.get("x-apiary-signature", ""))
        events = json.loads(body)
        for e in events if isinstance(events, list) else [events]:
            what = e.get("topic", e.get("clientid"))
            print(f"{e['event']} {what} {e.get('payload', '')} (signature {'ok' if ok else 'BAD'})",
                  flush=True)
        self.send_response(200 if ok else 401)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", PORT), Hook).serve_forever()
