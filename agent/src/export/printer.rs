//! The thread that prints spans to stdout (tree or JSON). Printing runs on its own thread, fed by
//! a bounded queue, so a slow terminal or a full pipe never stalls the tokio runtime or the
//! thread that produces spans: the sink drops and counts instead.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::span::model::Span;

/// How often the thread looks at the clock (for idle traces) and at the stop flag.
const TICK: Duration = Duration::from_millis(100);

/// A way of printing spans.
pub(crate) trait SpanPrinter: Send {
    fn span(&mut self, span: Span, now: Instant) -> io::Result<()>;
    /// Called at least every `TICK`.
    fn tick(&mut self, now: Instant) -> io::Result<()>;
    /// Print whatever is still pending; called once, at shutdown.
    fn finish(&mut self) -> io::Result<()>;
}

pub(crate) struct PrinterThread {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

pub(crate) fn spawn(
    printer: Box<dyn SpanPrinter>,
    queue_len: usize,
) -> io::Result<(SyncSender<Span>, PrinterThread)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(queue_len.max(1));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new().name("sonde-print".into()).spawn({
        let stop = Arc::clone(&stop);
        move || run(printer, &rx, &stop)
    })?;
    Ok((tx, PrinterThread { stop, thread }))
}

impl PrinterThread {
    /// Prints what is queued and pending, waiting at most `timeout` for a blocked stdout.
    pub(crate) async fn stop(self, timeout: Duration) {
        self.stop.store(true, Ordering::Release);
        let join = tokio::task::spawn_blocking(move || self.thread.join());
        match tokio::time::timeout(timeout, join).await {
            Ok(Ok(Ok(()))) => {}
            Ok(_) => tracing::warn!("the print thread panicked"),
            // The thread stays blocked on stdout; the process is about to exit anyway.
            Err(_) => tracing::warn!("stdout is blocked; giving up on printing the last spans"),
        }
    }
}

fn run(mut printer: Box<dyn SpanPrinter>, rx: &Receiver<Span>, stop: &AtomicBool) {
    let mut out = Output { printer: &mut *printer, broken: false };
    let mut next_tick = Instant::now() + TICK;
    loop {
        match rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Ok(span) => out.span(span),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        if now >= next_tick {
            out.tick(now);
            next_tick = now + TICK;
        }
        if stop.load(Ordering::Acquire) {
            while let Ok(span) = rx.try_recv() {
                out.span(span);
            }
            break;
        }
    }
    out.finish();
}

/// Stops printing, without stopping the thread, once stdout fails (a closed pipe: `sonde run |
/// head`); the thread keeps draining so that the sink does not count a reader going away as drops.
struct Output<'a> {
    printer: &'a mut dyn SpanPrinter,
    broken: bool,
}

impl Output<'_> {
    fn span(&mut self, span: Span) {
        if !self.broken {
            let result = self.printer.span(span, Instant::now());
            self.check(result);
        }
    }

    fn tick(&mut self, now: Instant) {
        if !self.broken {
            let result = self.printer.tick(now);
            self.check(result);
        }
    }

    fn finish(&mut self) {
        if !self.broken {
            let result = self.printer.finish();
            self.check(result);
        }
    }

    fn check(&mut self, result: io::Result<()>) {
        if let Err(e) = result {
            self.broken = true;
            if e.kind() == io::ErrorKind::BrokenPipe {
                tracing::debug!("stdout closed; no longer printing spans");
            } else {
                tracing::warn!(error = %e, "cannot write to stdout; no longer printing spans");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use crate::span::model::TraceId;

    use super::*;
    use crate::export::json::JsonPrinter;
    use crate::export::terminal::{Style, TreePrinter};
    use crate::export::testutil::{resource, span};
    use crate::span::model::SpanKind;

    /// Stdout stand-in the test can read while the thread writes.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// A closed pipe.
    struct Broken;

    impl io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    #[tokio::test]
    async fn tree_prints_quiet_traces_then_the_rest_at_stop() {
        let out = Shared::default();
        let printer = TreePrinter::new(out.clone(), Style { color: false }, Duration::from_millis(50), 100);
        let (tx, thread) = spawn(Box::new(printer), 16).unwrap();
        let r = resource(1, "svc");
        tx.send(span(&r, 2, Some(1), SpanKind::Client, "GET")).unwrap();
        tx.send(span(&r, 1, None, SpanKind::Server, "GET /a")).unwrap();

        let deadline = Instant::now() + Duration::from_secs(5);
        while !out.text().contains("GET /a") {
            assert!(Instant::now() < deadline, "the quiet trace was never printed");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(out.text().matches("trace ").count(), 1);

        let mut other = span(&r, 3, None, SpanKind::Server, "GET /b");
        other.trace_id = TraceId::from_bytes([9; 16]);
        tx.send(other).unwrap();
        thread.stop(Duration::from_secs(5)).await;
        let text = out.text();
        assert_eq!(text.matches("trace ").count(), 2, "{text}");
        assert!(text.contains("GET /b"));
        assert!(tx.try_send(span(&r, 4, None, SpanKind::Server, "late")).is_err(), "thread gone");
    }

    #[tokio::test]
    async fn json_lines_and_a_closed_stdout() {
        let out = Shared::default();
        let (tx, thread) = spawn(Box::new(JsonPrinter::new(out.clone())), 16).unwrap();
        let r = resource(1, "svc");
        tx.send(span(&r, 1, None, SpanKind::Server, "GET /a")).unwrap();
        tx.send(span(&r, 2, None, SpanKind::Server, "GET /b")).unwrap();
        thread.stop(Duration::from_secs(5)).await;
        assert_eq!(out.text().lines().count(), 2);

        // Writing fails: the thread stops printing but keeps taking spans, and stops cleanly.
        let (tx, thread) = spawn(Box::new(JsonPrinter::new(Broken)), 1).unwrap();
        for id in 0..20 {
            tx.send(span(&r, id, None, SpanKind::Server, "x")).unwrap();
        }
        thread.stop(Duration::from_secs(5)).await;
    }
}
