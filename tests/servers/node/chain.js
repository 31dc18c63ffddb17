// One service of a call chain on Node's event loop, with no tracing code and no npm packages, for
// sonde's parenting tests.
//
// Usage: node chain.js [--delay MS] [--jitter MS] [--parallel] PORT [DOWNSTREAM_BASE_URL ...]
//
// GET /req/{n} calls GET DOWNSTREAM/req/{n} on every downstream — one after the other, or all at
// once with --parallel — through one keep-alive http.Agent, then waits --delay plus a random part
// of --jitter milliseconds and answers 200 (502 when a downstream failed). {n} travels down the
// chain, so a test can tell which request each span belongs to.
//
// One thread reads every request and writes every call: with several requests in flight, "the
// request this thread read last" is not, in general, the one a call is made for.
const http = require("http");

const args = process.argv.slice(2);
let delay = 0;
let jitter = 0;
let parallel = false;
for (;;) {
  if (args[0] === "--delay") {
    delay = Number(args[1]);
    args.splice(0, 2);
  } else if (args[0] === "--jitter") {
    jitter = Number(args[1]);
    args.splice(0, 2);
  } else if (args[0] === "--parallel") {
    parallel = true;
    args.shift();
  } else {
    break;
  }
}
const port = Number(args[0]);
const downstreams = args.slice(1);

const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

function call(url) {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent }, (res) => {
        res.resume();
        res.on("end", () => (res.statusCode === 200 ? resolve() : reject(new Error(`${url}: ${res.statusCode}`))));
      })
      .on("error", reject);
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function handle(req, res) {
  if (req.method !== "GET" || !/^\/req\/\d+$/.test(req.url)) {
    res.writeHead(404, { "Content-Type": "text/plain" });
    res.end("not found\n");
    return;
  }
  const calls = downstreams.map((base) => () => call(`${base}${req.url}`));
  let failed = 0;
  if (parallel) {
    const results = await Promise.allSettled(calls.map((c) => c()));
    failed = results.filter((r) => r.status === "rejected").length;
  } else {
    for (const c of calls) {
      try {
        await c();
      } catch {
        failed += 1;
      }
    }
  }
  await sleep(delay + Math.random() * jitter);
  const status = failed ? 502 : 200;
  const body = `${req.url} -> ${status}\n`;
  res.writeHead(status, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}

http
  .createServer((req, res) => {
    // Drain the request so the connection stays usable.
    req.resume();
    handle(req, res);
  })
  .listen(port, "127.0.0.1");
