"""Receive mpq webhooks: MPQ_WEBHOOK_SECRET=whsec_... python webhook_receiver.py 8080"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

webhook = Webhook(os.environ["MPQ_WEBHOOK_SECRET"])  # shown once by POST /v1/webhooks


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"])).decode()
        try:
            event = webhook.verify(body, dict(self.headers))  # checks signature and timestamp
        except WebhookVerificationError:
            self.send_response(400)
            self.end_headers()
            return
        # deliveries are at least once: deduplicate on the webhook-id header
        print(self.headers["webhook-id"], event["type"], json.dumps(event["data"]), flush=True)
        self.send_response(204)
        self.end_headers()


HTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
