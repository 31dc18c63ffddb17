//! `rustls-get PORT CERT [HOLD_MS [COUNT]]`: COUNT (default 1) `GET /from-rustls` over TLS to
//! 127.0.0.1:PORT, each on a new connection, trusting CERT, with rustls — TLS compiled into the
//! program, no OpenSSL, like Go's crypto/tls or BoringSSL in a binary. Prints each status line,
//! then stays alive HOLD_MS so an observer can still read its /proc.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (port, cert) = match &args[..] {
        [_, port, cert, ..] => (port.parse::<u16>()?, cert),
        _ => anyhow::bail!("usage: rustls-get PORT CERT [HOLD_MS]"),
    };
    let hold_ms: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let count: u32 = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(1);
    for _ in 0..count {
        get(port, cert)?;
    }
    std::thread::sleep(std::time::Duration::from_millis(hold_ms));
    Ok(())
}

fn get(port: u16, cert: &str) -> anyhow::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(cert)?)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server = ServerName::try_from("localhost")?;
    let mut tls = rustls::ClientConnection::new(Arc::new(config), server)?;
    let mut tcp = TcpStream::connect(("127.0.0.1", port))?;
    let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
    stream.write_all(b"GET /from-rustls HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut reply = Vec::new();
    // A peer closing without close_notify is an error to rustls; the reply is in by then.
    let _ = stream.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    println!("{}", text.lines().next().unwrap_or(""));
    Ok(())
}
