//! Value parsers for the flags whose values need more than their type: each checks a value as
//! `sonde run` will use it, so that clap refuses a bad one wherever it comes from — a flag, a
//! SONDE_* variable or a key of the file (`file::args_for`) — and the error can name that place.
//! (`KEY=VALUE` is `conn::select::PodLabel`'s `FromStr`; route patterns, `RoutePattern`'s.)

/// A URL sonde sends to: `http://` or `https://`, and a valid URI. Empty means unset, as
/// OTEL_* variables have it.
pub fn http_url(value: &str) -> Result<String, String> {
    let url = value.trim();
    if url.is_empty() || crate::export::config::is_http_url(url) {
        Ok(url.to_owned())
    } else {
        Err("expected an http:// or https:// URL, e.g. http://127.0.0.1:4318".to_owned())
    }
}

/// A log filter in `RUST_LOG` syntax (`info`, `sonde=debug,sonde::kernel=trace`).
pub fn log_filter(value: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(value)
        .map(|_| value.to_owned())
        .map_err(|e| format!("not a log filter ({e}); e.g. info, or sonde=debug"))
}

/// Bytes copied per read or write: a head needs a few dozen at least, and the kernel copies at
/// most `MAX_CAPTURE`.
pub fn capture_bytes(value: &str) -> Result<u32, String> {
    const MIN: u32 = 64;
    let max = sonde_common::MAX_CAPTURE as u32;
    match value.trim().parse::<u32>() {
        Ok(n) if (MIN..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a number of bytes from {MIN} to {max}")),
    }
}

/// A glob on a path or a file name (`*`, `?`, `[…]`).
pub fn glob(value: &str) -> Result<glob::Pattern, String> {
    glob::Pattern::new(value).map_err(|e| format!("not a valid glob: {e}"))
}

/// A sampling ratio: a number from 0 to 1.
pub fn ratio(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("expected a ratio from 0 to 1, e.g. 0.1".to_owned()),
    }
}
