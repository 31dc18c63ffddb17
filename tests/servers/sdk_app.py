"""A Flask service instrumented by OpenTelemetry's Python SDK (run it under
`opentelemetry-instrument`), for sonde's interop tests: it exports its own spans and propagates
`traceparent` on the calls it makes with `requests`.

Usage: opentelemetry-instrument python3 sdk_app.py PORT [DOWNSTREAM_BASE_URL ...]
GET /<anything>/<n> calls GET <downstream>/<n> on each downstream, then answers 200.
"""
import sys

import requests
from flask import Flask

port = int(sys.argv[1])
downstreams = sys.argv[2:]
app = Flask(__name__)


@app.route("/<path:path>")
def handle(path):
    suffix = path.rstrip("/").rsplit("/", 1)[-1]
    for base in downstreams:
        requests.get(f"{base}/{suffix}", timeout=10).raise_for_status()
    return f"/{path} -> 200\n"


app.run(host="127.0.0.1", port=port, threaded=True)
