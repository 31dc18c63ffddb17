// A Node.js service instrumented by OpenTelemetry's zero-code instrumentation (start it with
// `node --require @opentelemetry/auto-instrumentations-node/register`), for sonde's interop tests:
// it exports its own spans and propagates `traceparent` on the calls it makes.
//
// Usage: node --require @opentelemetry/auto-instrumentations-node/register sdk_app.js PORT [DOWNSTREAM_BASE_URL ...]
// GET /<anything>/<n> calls GET <downstream>/<n> on each downstream in turn, then answers 200.
const http = require("http");

const port = Number(process.argv[2]);
const downstreams = process.argv.slice(3);

function call(url) {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent: false }, (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode));
      })
      .on("error", reject);
  });
}

http
  .createServer(async (req, res) => {
    const suffix = req.url.replace(/\/+$/, "").split("/").pop();
    let status = 200;
    for (const base of downstreams) {
      try {
        await call(`${base}/${suffix}`);
      } catch {
        status = 502;
      }
    }
    res.writeHead(status, { "Content-Type": "text/plain" });
    res.end(`${req.url} -> ${status}\n`);
  })
  .listen(port, "127.0.0.1");
