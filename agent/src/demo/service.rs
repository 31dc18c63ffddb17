//! `sonde demo-service`: one service of the demo chain — a plain HTTP/1.1 server with no tracing
//! code, one thread per connection (so the thread that reads a request makes its calls).
//! `GET /<anything>/<n>` calls `GET /<n>` on each downstream in turn, sleeps its delay, answers 200
//! (502 if a call failed).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use crate::config::DemoServiceArgs;

pub fn run(args: DemoServiceArgs) -> anyhow::Result<()> {
    if args.send > 0 {
        return send(&args);
    }
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    // The parent reads the port from the first line of stdout.
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let delay = Duration::from_millis(args.delay_ms);
    let calls: Vec<SocketAddr> = args.calls;
    for stream in listener.incoming().flatten() {
        let calls = calls.clone();
        std::thread::spawn(move || {
            let _ = serve(stream, &calls, delay);
        });
    }
    Ok(())
}

/// The demo's client: its requests come from a process of its own, because sonde does not trace
/// the other end of its own connections (a collector on the host would otherwise trace exports).
fn send(args: &DemoServiceArgs) -> anyhow::Result<()> {
    let entry = *args.calls.first().ok_or_else(|| anyhow::anyhow!("--send needs a --call address"))?;
    for i in 1..=args.send {
        if let Err(e) = call(entry, &format!("/checkout/{i}")) {
            eprintln!("sonde demo: request {i} failed: {e}");
        }
        std::thread::sleep(Duration::from_millis(args.delay_ms));
    }
    Ok(())
}

fn serve(stream: TcpStream, calls: &[SocketAddr], delay: Duration) -> std::io::Result<()> {
    // Read and write through the one fd: sonde follows a connection by (process, fd), and a
    // `try_clone` (dup) would split the request and the response across two.
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Headers up to the blank line; the demo's requests have no body.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let item = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let mut status = "200 OK";
    for peer in calls {
        if call(*peer, &format!("/{item}")).is_err() {
            status = "502 Bad Gateway";
        }
    }
    std::thread::sleep(delay);
    let body = format!("{path} -> {status}\n");
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    (&stream).write_all(reply.as_bytes())
}

/// One GET on a new connection, read to the end.
pub fn call(peer: SocketAddr, path: &str) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(peer)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {peer}\r\nUser-Agent: sonde-demo\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    if !reply.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other("not 200"));
    }
    Ok(reply)
}
