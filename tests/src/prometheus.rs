//! Prometheus on the test side: a parser for the text exposition format (what sonde's `GET /metrics`
//! returns), a small blocking HTTP/1.1 client to scrape it, and a real Prometheus server (Debian's
//! `prometheus` package, installed by `cargo xtask setup`) that scrapes a target and answers PromQL.
//!
//! Everything here is blocking (std sockets, `thread::sleep`). From an async test whose runtime also
//! serves something the call waits on, use `tokio::task::spawn_blocking` or a multi-threaded
//! runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use serde_json::Value;

/// One sample of the Prometheus text exposition format.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// A label's value.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

const TYPES: [&str; 5] = ["counter", "gauge", "histogram", "summary", "untyped"];

/// Parses text exposition format 0.0.4. Skips blank lines and comments; `# HELP` and `# TYPE` lines
/// are checked (well formed, a known type, one `TYPE` per family) but not returned (see
/// [`parse_types`], [`parse_help`]). Label values may hold the escapes `\\`, `\"` and `\n` (any
/// other escape is an error); values may be `+Inf`, `-Inf`, `NaN`; an optional integer timestamp
/// (milliseconds) is checked and dropped. An error names the line number (1-based) and the line.
pub fn parse_exposition(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    let mut typed = BTreeSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        let result = if line.is_empty() {
            Ok(())
        } else if let Some(comment) = line.strip_prefix('#') {
            check_comment(comment, &mut typed)
        } else {
            parse_sample(line).map(|s| samples.push(s))
        };
        if let Err(reason) = result {
            bail!("line {}: {reason}: {raw:?}", i + 1);
        }
    }
    Ok(samples)
}

/// The `# TYPE` lines: metric family name → type (`"counter"`, `"histogram"`, …). Malformed
/// comment lines are skipped ([`parse_exposition`] reports them).
pub fn parse_types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let comment = line.trim_start().strip_prefix('#')?;
            // `#TYPE` is a plain comment to Prometheus's parser.
            comment.starts_with([' ', '\t']).then_some(())?;
            let mut words = comment.split_whitespace();
            (words.next()? == "TYPE").then_some(())?;
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

/// The `# HELP` lines: metric family name → docstring, unescaped (`\\`, `\n`).
pub fn parse_help(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix('#')?.trim_start().strip_prefix("HELP")?;
            let rest = rest.strip_prefix([' ', '\t'])?.trim_start();
            let (name, help) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
            Some((name.to_owned(), unescape_help(help.trim_start()).ok()?))
        })
        .collect()
}

/// Checks a comment (the text after `#`); `typed` collects the families that had a `TYPE` line.
fn check_comment(comment: &str, typed: &mut BTreeSet<String>) -> Result<(), String> {
    let mut words = comment.split_whitespace();
    // Only `# HELP …` and `# TYPE …` are special; `#HELP` or `# note` are plain comments.
    if !comment.starts_with([' ', '\t']) {
        return Ok(());
    }
    match words.next() {
        Some("TYPE") => {
            let name = words.next().ok_or("TYPE line without a metric name")?;
            check_metric_name(name)?;
            let kind = words.next().ok_or("TYPE line without a type")?;
            if !TYPES.contains(&kind) {
                return Err(format!("unknown metric type {kind:?}"));
            }
            if let Some(extra) = words.next() {
                return Err(format!("unexpected {extra:?} after the type"));
            }
            if !typed.insert(name.to_owned()) {
                return Err(format!("second TYPE line for {name}"));
            }
            Ok(())
        }
        Some("HELP") => {
            let name = words.next().ok_or("HELP line without a metric name")?;
            check_metric_name(name)?;
            let help = comment.trim_start().strip_prefix("HELP").unwrap_or_default().trim_start();
            let help = help.strip_prefix(name).unwrap_or_default().trim_start();
            unescape_help(help).map(drop)
        }
        _ => Ok(()),
    }
}

fn unescape_help(help: &str) -> Result<String, String> {
    let mut out = String::with_capacity(help.len());
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            other => {
                return Err(format!(
                    "bad escape in HELP text: \\{}",
                    other.map(String::from).unwrap_or_default()
                ));
            }
        }
    }
    Ok(out)
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    is_name_start(c) || c.is_ascii_digit()
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    if chars.next().is_some_and(is_name_start) && chars.all(is_name_char) {
        Ok(())
    } else {
        Err(format!("invalid metric name {name:?}"))
    }
}

/// A cursor over one sample line.
struct Line<'a> {
    rest: &'a str,
}

impl<'a> Line<'a> {
    fn skip_blanks(&mut self) -> bool {
        let before = self.rest.len();
        self.rest = self.rest.trim_start_matches([' ', '\t']);
        self.rest.len() != before
    }

    fn take_while(&mut self, pred: impl Fn(char) -> bool) -> &'a str {
        let end = self.rest.find(|c| !pred(c)).unwrap_or(self.rest.len());
        let (taken, rest) = self.rest.split_at(end);
        self.rest = rest;
        taken
    }

    fn eat(&mut self, c: char) -> bool {
        self.rest.strip_prefix(c).map(|rest| self.rest = rest).is_some()
    }

    fn token(&mut self) -> &'a str {
        self.take_while(|c| c != ' ' && c != '\t')
    }

    /// A quoted label value, the opening quote already eaten.
    fn label_value(&mut self) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[i + 1..];
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, '"')) => out.push('"'),
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, other)) => return Err(format!("bad escape \\{other} in a label value")),
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err("unterminated label value".into())
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let mut p = Line { rest: line };
    let name = p.take_while(is_name_char);
    check_metric_name(name)?;
    let mut labels = BTreeMap::new();
    p.skip_blanks();
    if p.eat('{') {
        loop {
            p.skip_blanks();
            if p.eat('}') {
                break;
            }
            let label = p.take_while(is_name_char);
            if label.is_empty() || label.starts_with(|c: char| c.is_ascii_digit() || c == ':') {
                return Err(format!("expected a label name at {:?}", p.rest));
            }
            p.skip_blanks();
            if !p.eat('=') {
                return Err(format!("expected '=' after label {label}"));
            }
            p.skip_blanks();
            if !p.eat('"') {
                return Err(format!("expected '\"' to open the value of label {label}"));
            }
            let value = p.label_value()?;
            if labels.insert(label.to_owned(), value).is_some() {
                return Err(format!("duplicate label {label}"));
            }
            p.skip_blanks();
            if p.eat(',') {
                continue;
            }
            if p.eat('}') {
                break;
            }
            return Err(format!("expected ',' or '}}' after label {label}"));
        }
        p.skip_blanks();
    }
    let value = p.token();
    if value.is_empty() {
        return Err("missing value".into());
    }
    let value = parse_float(value).ok_or_else(|| format!("invalid value {value:?}"))?;
    if p.skip_blanks() && !p.rest.is_empty() {
        let timestamp = p.token();
        timestamp.parse::<i64>().map_err(|_| format!("invalid timestamp {timestamp:?}"))?;
        p.skip_blanks();
    }
    if !p.rest.is_empty() {
        return Err(format!("unexpected {:?} after the value", p.rest));
    }
    Ok(Sample { name: name.to_owned(), labels, value })
}

/// A float as Prometheus writes one (`1.5`, `1e-3`, `+Inf`, `-Inf`, `NaN`).
fn parse_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust (and Go) would also take "inf", "infinity", "nan" in any case; the format's spelling
        // is the above, so anything else is a bug in the exporter.
        _ if s.bytes().any(|b| b.is_ascii_alphabetic() && !matches!(b, b'e' | b'E')) => None,
        _ => s.parse().ok(),
    }
}

/// `GET http://ADDR/metrics`: (status, `Content-Type` header, body).
pub fn scrape(addr: SocketAddr) -> anyhow::Result<(u16, String, String)> {
    http_get(addr, "/metrics")
}

/// The value of the first sample called `name` at sonde's endpoint `addr` (NaN if there is none).
pub fn value(addr: SocketAddr, name: &str) -> f64 {
    let (_, _, body) = scrape(addr).expect("scraping sonde");
    let samples = parse_exposition(&body).expect("exposition format");
    samples.iter().find(|s| s.name == name).map_or(f64::NAN, |s| s.value)
}

const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A blocking HTTP/1.1 `GET` (`Connection: close`), all within 5 s: (status, `Content-Type` header
/// or `""`, body). Handles `Content-Length`, chunked and read-to-close bodies; a body that is not
/// UTF-8, or shorter than announced, is an error.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String, String)> {
    let deadline = Instant::now() + HTTP_TIMEOUT;
    let what = || format!("GET http://{addr}{path}");
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).with_context(what)?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sonde-tests\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).with_context(what)?;
    let mut buf = Vec::new();
    let mut chunk = [0; 16 * 1024];
    loop {
        if let Some(response) = parse_response(&buf, false).with_context(what)? {
            return Ok(response);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "{}: no complete response within {HTTP_TIMEOUT:?}; got {:?}",
                what(),
                String::from_utf8_lossy(&buf)
            );
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                return parse_response(&buf, true)
                    .and_then(|r| {
                        r.ok_or_else(|| anyhow!("connection closed before the response was complete"))
                    })
                    .with_context(|| format!("{}: got {:?}", what(), String::from_utf8_lossy(&buf)));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(what),
        }
    }
}

/// The response in `buf` if it is complete (`eof`: the peer closed the connection).
fn parse_response(buf: &[u8], eof: bool) -> anyhow::Result<Option<(u16, String, String)>> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, status) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    ensure!(version.starts_with("HTTP/1."), "bad status line {status_line:?}");
    let status: u16 = status.parse().with_context(|| format!("bad status line {status_line:?}"))?;
    let mut content_type = String::new();
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':').with_context(|| format!("bad header line {line:?}"))?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-type" => content_type = value.to_owned(),
            "content-length" => {
                content_length =
                    Some(value.parse::<usize>().with_context(|| format!("bad Content-Length {value:?}"))?)
            }
            "transfer-encoding" => {
                chunked = value.to_ascii_lowercase().split(',').any(|t| t.trim() == "chunked")
            }
            _ => {}
        }
    }
    let body = &buf[head_end + 4..];
    let body = if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if chunked {
        match decode_chunked(body)? {
            Some(body) => body,
            None if eof => bail!("chunked body ends before its last chunk"),
            None => return Ok(None),
        }
    } else if let Some(len) = content_length {
        if body.len() < len {
            ensure!(!eof, "body has {} bytes, Content-Length said {len}", body.len());
            return Ok(None);
        }
        ensure!(body.len() == len, "body has {} bytes, more than Content-Length {len}", body.len());
        body.to_vec()
    } else if eof {
        body.to_vec()
    } else {
        return Ok(None);
    };
    let body = String::from_utf8(body).context("response body is not UTF-8")?;
    Ok(Some((status, content_type, body)))
}

/// The decoded body, or `None` if `data` does not hold the whole of it yet.
fn decode_chunked(mut data: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(data, b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&data[..line_end]).context("chunk size line is not UTF-8")?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size, 16).with_context(|| format!("bad chunk size line {line:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(end) = find(data, b"\r\n") else {
                    return Ok(None);
                };
                if end == 0 {
                    return Ok(Some(body));
                }
                data = &data[end + 2..];
            }
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[..size]);
        ensure!(&data[size..size + 2] == b"\r\n", "chunk of {size} bytes not followed by CRLF");
        data = &data[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One instant vector: each element's labels (with `__name__` when it has one) and value.
pub type Vector = Vec<(BTreeMap<String, String>, f64)>;

/// A real Prometheus server on loopback, scraping one target; killed (and its temp dir removed) on
/// drop.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

static INSTANCES: AtomicUsize = AtomicUsize::new(0);

/// Where Debian's package puts it; `PATH` is the fallback.
fn prometheus_bin() -> anyhow::Result<PathBuf> {
    let debian = Path::new("/usr/bin/prometheus");
    if debian.is_file() {
        return Ok(debian.to_owned());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
        .context("no prometheus binary (not at /usr/bin/prometheus, not on PATH): run `cargo xtask setup`, which installs Debian's prometheus package")
}

impl Prometheus {
    /// Starts Prometheus with `scrape_interval` (and `scrape_timeout`) `interval`, one job `sonde`
    /// scraping `http://TARGET/metrics`, storage under a fresh temp dir, listening on a free
    /// loopback port; returns once `GET /-/ready` answers 200 (at most 30 s). Errors carry the tail
    /// of Prometheus's log.
    ///
    /// Prometheus's service discovery hands new targets to the scrape manager at most every 5 s,
    /// starting 5 s after start-up: expect the first scrape about 5 s + up to one `interval` after
    /// this returns.
    pub fn start(target: SocketAddr, interval: Duration) -> anyhow::Result<Prometheus> {
        ensure!(
            interval >= Duration::from_millis(1),
            "scrape interval {interval:?} is below Prometheus's 1 ms resolution"
        );
        let bin = prometheus_bin()?;
        // The port is free when picked but could be taken before Prometheus binds it: retry then.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("sonde-prom-{}-{n}", std::process::id()));
            // A leftover of an earlier process with the same pid.
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let interval_ms = interval.as_millis();
            let config = dir.join("prometheus.yml");
            let yaml = format!(
                "global:\n  scrape_interval: {interval_ms}ms\n  scrape_timeout: {interval_ms}ms\n\
                 scrape_configs:\n  - job_name: sonde\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n"
            );
            let log_path = dir.join("prometheus.log");
            let setup = fs::write(&config, yaml)
                .and_then(|()| File::create(&log_path))
                .and_then(|log| Ok((log.try_clone()?, log)));
            let (stdout, stderr) = match setup {
                Ok(files) => files,
                Err(e) => {
                    let _ = fs::remove_dir_all(&dir);
                    return Err(e)
                        .with_context(|| format!("writing Prometheus's files in {}", dir.display()));
                }
            };
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, crate::harness::free_port()));
            let child = Command::new(&bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--web.enable-lifecycle")
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .spawn();
            let child = match child {
                Ok(child) => child,
                Err(e) => {
                    let _ = fs::remove_dir_all(&dir);
                    return Err(e).with_context(|| format!("starting {}", bin.display()));
                }
            };
            // From here on, dropping `prom` (error paths included) kills it and removes `dir`.
            let mut prom = Prometheus { child, addr, dir };
            match prom.wait_ready() {
                Ok(()) => return Ok(prom),
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                    eprintln!("Prometheus could not bind {addr}, retrying on another port: {e:#}");
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "Prometheus exited with {status} before it was ready; its log ends:\n{}",
                    tail_of(&self.log())
                );
            }
            let last = match http_get(self.addr, "/-/ready") {
                Ok((200, _, _)) => return Ok(()),
                Ok((status, _, body)) => format!("{status} {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "Prometheus on {} not ready within 30 s (last answer: {last}); its log ends:\n{}",
                    self.addr,
                    tail_of(&self.log())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address of Prometheus's web UI and API.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Prometheus's log (stdout and stderr).
    pub fn log(&self) -> String {
        let path = self.dir.join("prometheus.log");
        fs::read_to_string(&path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
    }

    /// An instant query (`GET /api/v1/query`), evaluated now: the vector's (labels, value) pairs.
    /// A non-vector result, or an error from the API, is an error naming the query.
    pub fn query(&self, promql: &str) -> anyhow::Result<Vector> {
        let json = self
            .api(&format!("/api/v1/query?query={}", url_encode(promql)))
            .with_context(|| format!("query {promql:?}"))?;
        let data = &json["data"];
        let kind = data["resultType"].as_str().unwrap_or_default();
        ensure!(kind == "vector", "query {promql:?}: result is a {kind:?}, not a vector: {data}");
        let result =
            data["result"].as_array().with_context(|| format!("query {promql:?}: no result in {json}"))?;
        result
            .iter()
            .map(|element| {
                let labels = element["metric"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                let value = element["value"][1]
                    .as_str()
                    .and_then(parse_float)
                    .with_context(|| format!("query {promql:?}: bad sample {element}"))?;
                Ok((labels, value))
            })
            .collect()
    }

    /// Runs `query` every 500 ms until `pred` holds on its result or `timeout` passes, and returns
    /// the last result either way (so the caller's assertion shows it); an error only if the last
    /// query failed.
    pub fn wait_for(
        &self,
        promql: &str,
        pred: impl Fn(&[(BTreeMap<String, String>, f64)]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vector> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.query(promql);
            if result.as_deref().is_ok_and(&pred) || Instant::now() >= deadline {
                return result;
            }
            std::thread::sleep(
                Duration::from_millis(500).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
    }

    /// The target's health as Prometheus sees it (`"up"`, `"down"`, `"unknown"`) and its last scrape
    /// error (`""` if none), for failure messages. An error before service discovery has handed
    /// Prometheus the target (about 5 s after start).
    pub fn target_health(&self) -> anyhow::Result<(String, String)> {
        let json = self.api("/api/v1/targets")?;
        let target = &json["data"]["activeTargets"][0];
        ensure!(target.is_object(), "Prometheus has no active target yet: {json}");
        Ok((
            target["health"].as_str().unwrap_or_default().to_owned(),
            target["lastError"].as_str().unwrap_or_default().to_owned(),
        ))
    }

    /// A `GET` of the HTTP API: the JSON body if its `status` is `"success"`.
    fn api(&self, path_and_query: &str) -> anyhow::Result<Value> {
        let (status, _, body) = http_get(self.addr, path_and_query)?;
        let json: Value = serde_json::from_str(&body)
            .with_context(|| format!("HTTP {status} from Prometheus, not JSON: {body:?}"))?;
        if json["status"] != "success" {
            bail!(
                "Prometheus API error (HTTP {status}, {}): {}",
                json["errorType"].as_str().unwrap_or("?"),
                json["error"].as_str().unwrap_or(&body)
            );
        }
        Ok(json)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- Prometheus log ({}) ---\n{}", self.addr, tail_of(&self.log()));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn tail_of(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    const EXPOSITION: &str = r#"# HELP http_server_request_duration_seconds Duration of HTTP server requests.
# TYPE http_server_request_duration_seconds histogram
http_server_request_duration_seconds_bucket{http_request_method="GET",http_route="/a",le="0.005"} 1
http_server_request_duration_seconds_bucket{http_request_method="GET",http_route="/a",le="0.1"} 3
http_server_request_duration_seconds_bucket{http_request_method="GET",http_route="/a",le="+Inf"} 4
http_server_request_duration_seconds_sum{http_request_method="GET",http_route="/a"} 1.25
http_server_request_duration_seconds_count{http_request_method="GET",http_route="/a"} 4

# HELP test_requests_total Requests, with a \\ backslash and a\nnewline.
# TYPE test_requests_total counter
test_requests_total{path="C:\\dir\\",quote="say \"hi\"",multi="a\nb"} 7 1700000000000
test_requests_total { code = "500" , } 0
# a plain comment
#TYPE not_a_type_line whatever
process_start_time_seconds 1.7e+09
weird_values{kind="pos"} +Inf
weird_values{kind="neg"} -Inf
weird_values{kind="nan"} NaN
up{} -12 -5
"#;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect()
    }

    #[test]
    fn parses_exposition() {
        let samples = parse_exposition(EXPOSITION).unwrap();
        assert_eq!(samples.len(), 12, "{samples:#?}");
        let get_a = [("http_request_method", "GET"), ("http_route", "/a")];
        let bucket = |le, value| Sample {
            name: "http_server_request_duration_seconds_bucket".into(),
            labels: labels(&[get_a[0], get_a[1], ("le", le)]),
            value,
        };
        assert_eq!(samples[0], bucket("0.005", 1.0));
        assert_eq!(samples[2], bucket("+Inf", 4.0));
        assert_eq!(samples[3].name, "http_server_request_duration_seconds_sum");
        assert_eq!((samples[3].labels.clone(), samples[3].value), (labels(&get_a), 1.25));
        assert_eq!(
            (samples[4].name.as_str(), samples[4].value),
            ("http_server_request_duration_seconds_count", 4.0)
        );

        assert_eq!(
            samples[5],
            Sample {
                name: "test_requests_total".into(),
                labels: labels(&[("path", r"C:\dir\"), ("quote", r#"say "hi""#), ("multi", "a\nb")]),
                value: 7.0,
            }
        );
        assert_eq!((samples[6].label("code"), samples[6].value), (Some("500"), 0.0));
        assert_eq!((samples[7].name.as_str(), samples[7].value), ("process_start_time_seconds", 1.7e9));
        assert_eq!(samples[8].value, f64::INFINITY);
        assert_eq!(samples[9].value, f64::NEG_INFINITY);
        assert!(samples[10].value.is_nan());
        assert_eq!(
            (samples[11].name.as_str(), samples[11].labels.len(), samples[11].value),
            ("up", 0, -12.0)
        );

        let types = parse_types(EXPOSITION);
        assert_eq!(
            types,
            [("http_server_request_duration_seconds", "histogram"), ("test_requests_total", "counter")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into()
        );
        let help = parse_help(EXPOSITION);
        assert_eq!(help["test_requests_total"], "Requests, with a \\ backslash and a\nnewline.");
        assert_eq!(help["http_server_request_duration_seconds"], "Duration of HTTP server requests.");
    }

    #[test]
    fn rejects_malformed_exposition() {
        let cases = [
            ("ok 1\nno_value\n", "line 2", "missing value"),
            ("ok 1\n\nbad{a=\"x} 1\n", "line 3", "unterminated"),
            ("a{b=\"\\t\"} 1", "line 1", "bad escape"),
            ("a{b=\"x\",b=\"y\"} 1", "line 1", "duplicate label b"),
            ("a{b=x} 1", "line 1", "expected '\"'"),
            ("a{b=\"x\" c=\"y\"} 1", "line 1", "expected ',' or '}'"),
            ("a 1 2 3", "line 1", "after the value"),
            ("a one", "line 1", "invalid value"),
            ("a inf", "line 1", "invalid value"),
            ("a 1 1.5", "line 1", "invalid timestamp"),
            ("9a 1", "line 1", "invalid metric name"),
            ("{a=\"b\"} 1", "line 1", "invalid metric name"),
            ("# TYPE a countr\na 1", "line 1", "unknown metric type"),
            ("# TYPE a counter\n# TYPE a gauge", "line 2", "second TYPE line"),
            ("# TYPE a", "line 1", "without a type"),
            ("# HELP a bad \\q", "line 1", "bad escape"),
        ];
        for (text, line, reason) in cases {
            let err = format!("{:#}", parse_exposition(text).unwrap_err());
            assert!(err.starts_with(&format!("{line}: ")) && err.contains(reason), "{text:?} gave {err:?}");
            // The error quotes the offending line.
            let bad = text.lines().nth(line[5..].parse::<usize>().unwrap() - 1).unwrap();
            assert!(err.ends_with(&format!("{bad:?}")), "{text:?} gave {err:?}");
        }
    }

    #[test]
    fn encodes_urls() {
        assert_eq!(
            url_encode("sum(rate(a_total{b=\"c d\"}[1m]))"),
            "sum%28rate%28a_total%7Bb%3D%22c%20d%22%7D%5B1m%5D%29%29"
        );
        assert_eq!(url_encode("az-_.~09+/é"), "az-_.~09%2B%2F%C3%A9");
    }

    /// Serves `response(request_path)` (the whole raw HTTP response) to every connection, from a
    /// thread that lives as long as the test process; closes each connection after the response
    /// unless `keep_open`.
    fn serve(keep_open: bool, response: impl Fn(&str) -> Vec<u8> + Send + 'static) -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut open = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buf = [0; 4096];
                while find(&request, b"\r\n\r\n").is_none() {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&request);
                let path = request.split(' ').nth(1).unwrap_or_default();
                let _ = stream.write_all(&response(path));
                if keep_open {
                    open.push(stream);
                }
            }
        });
        addr
    }

    fn exposition_server(text: &'static str) -> SocketAddr {
        serve(false, move |path| match path {
            "/metrics" => format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            )
            .into_bytes(),
            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found".to_vec(),
        })
    }

    #[test]
    fn scrapes_content_length_and_chunked() {
        let addr = exposition_server(EXPOSITION);
        let (status, content_type, body) = scrape(addr).unwrap();
        assert_eq!((status, content_type.as_str()), (200, "text/plain; version=0.0.4; charset=utf-8"));
        assert_eq!(body, EXPOSITION);
        assert_eq!(http_get(addr, "/nope").unwrap(), (404, String::new(), "not found".to_owned()));

        // Chunked, with an extension and a trailer; the server does not close the connection, so
        // this also checks that the client stops at the last chunk.
        let chunked = serve(true, |_| {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n"
                .to_vec()
        });
        let started = Instant::now();
        assert_eq!(http_get(chunked, "/").unwrap(), (200, String::new(), "hello, world".to_owned()));
        assert!(started.elapsed() < Duration::from_secs(2));
        // Likewise at the end of a Content-Length body.
        let open = serve(true, |_| b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok".to_vec());
        assert_eq!(http_get(open, "/").unwrap(), (201, String::new(), "ok".to_owned()));
        assert!(started.elapsed() < Duration::from_secs(2));
        // Read to close without a length.
        let eof = serve(false, |_| b"HTTP/1.1 200 OK\r\n\r\nuntil close".to_vec());
        assert_eq!(http_get(eof, "/").unwrap(), (200, String::new(), "until close".to_owned()));

        // Truncated Content-Length body, then close.
        let short = serve(false, |_| b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec());
        let err = format!("{:#}", http_get(short, "/").unwrap_err());
        assert!(err.contains("Content-Length said 10"), "{err}");

        // Nothing listening.
        let closed = SocketAddr::from((Ipv4Addr::LOCALHOST, crate::harness::free_port()));
        assert!(http_get(closed, "/").is_err());
    }

    #[test]
    fn prometheus_scrapes_a_target() {
        let target = exposition_server(
            "# TYPE test_requests_total counter\n\
             test_requests_total{code=\"200\"} 5\n\
             test_requests_total{code=\"500\"} 2\n",
        );
        let prom = Prometheus::start(target, Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("starting Prometheus (run `cargo xtask setup` to install it): {e:#}"));
        let result = prom
            .wait_for(
                "sum(test_requests_total)",
                |r| r.first().is_some_and(|(_, v)| *v == 7.0),
                Duration::from_secs(30),
            )
            .unwrap();
        assert_eq!(result.len(), 1, "{result:?}; target: {:?}", prom.target_health());
        assert_eq!(result[0].1, 7.0, "{result:?}; target: {:?}", prom.target_health());
        assert_eq!(prom.target_health().unwrap(), ("up".to_owned(), String::new()));

        let by_code = prom.query("test_requests_total").unwrap();
        let mut got: Vec<(String, String, f64)> =
            by_code.iter().map(|(l, v)| (l["code"].clone(), l["job"].clone(), *v)).collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, [("200".into(), "sonde".into(), 5.0), ("500".into(), "sonde".into(), 2.0)]);
        assert_eq!(by_code[0].0["instance"], target.to_string());

        // API errors and non-vector results name the query.
        let err = format!("{:#}", prom.query("sum(").unwrap_err());
        assert!(err.contains("\"sum(\"") && err.contains("parse error"), "{err}");
        let err = format!("{:#}", prom.query("1").unwrap_err());
        assert!(err.contains("\"1\"") && err.contains("scalar"), "{err}");

        let dir = prom.dir.clone();
        assert!(dir.join("tsdb").is_dir());
        drop(prom);
        assert!(!dir.exists());
    }
}
