//! The OTLP span queue: spans travel in the chunks the intake thread finishes them in (one per
//! drain of the ring buffer), so the export task wakes once per chunk rather than once per span;
//! the bound is still counted in spans. They travel encoded (`T` is `otlp::encode::EncodedSpan`);
//! what does not fit is dropped before it is encoded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

/// Creates a queue that holds at most `max_spans` spans.
pub(crate) fn channel<T>(max_spans: usize) -> (QueueTx<T>, QueueRx<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let max = max_spans.max(1);
    (QueueTx { tx, queued: Arc::clone(&queued), max }, QueueRx { rx, queued, carry: Vec::new() })
}

/// What happened to the spans handed to [`QueueTx::push`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pushed {
    pub queued: usize,
    pub dropped_full: usize,
    pub dropped_closed: usize,
}

pub(crate) struct QueueTx<T> {
    tx: mpsc::UnboundedSender<Vec<T>>,
    /// Spans in the channel or in the receiver's carry-over, not yet in a batch.
    queued: Arc<AtomicUsize>,
    max: usize,
}

impl<T> Clone for QueueTx<T> {
    fn clone(&self) -> Self {
        QueueTx { tx: self.tx.clone(), queued: Arc::clone(&self.queued), max: self.max }
    }
}

impl<T> QueueTx<T> {
    /// Queues what fits of `spans` (the first ones), each made into a `T` by `convert`, and drops
    /// the rest unconverted. Never blocks.
    pub(crate) fn push<S>(&self, spans: &[S], convert: impl FnMut(&S) -> T) -> Pushed {
        let n = spans.len();
        // Reserve room first, so that several senders cannot overshoot the bound together.
        let mut room = 0;
        let _ = self.queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
            room = self.max.saturating_sub(queued).min(n);
            Some(queued + room)
        });
        let spans: Vec<T> = spans[..room].iter().map(convert).collect();
        let mut pushed = Pushed { queued: room, dropped_full: n - room, dropped_closed: 0 };
        if room > 0
            && let Err(mpsc::error::SendError(spans)) = self.tx.send(spans)
        {
            self.queued.fetch_sub(spans.len(), Ordering::AcqRel);
            pushed.dropped_closed = pushed.queued;
            pushed.queued = 0;
        }
        pushed
    }

    /// Share of the bound in use (0 to 1).
    pub(crate) fn fill(&self) -> f64 {
        self.queued.load(Ordering::Relaxed) as f64 / self.max as f64
    }
}

pub(crate) struct QueueRx<T> {
    rx: mpsc::UnboundedReceiver<Vec<T>>,
    queued: Arc<AtomicUsize>,
    /// The rest of a chunk that did not fit into the last batch.
    carry: Vec<T>,
}

impl<T> QueueRx<T> {
    /// Waits for spans and moves up to `limit` of them into `batch`, taking whatever has
    /// arrived without waiting further. Returns how many it moved: 0 only once every sender is
    /// gone (or the queue was closed) and the queue is empty.
    pub(crate) async fn recv(&mut self, batch: &mut Vec<T>, limit: usize) -> usize {
        if self.carry.is_empty() {
            match self.rx.recv().await {
                Some(chunk) => self.carry = chunk,
                None => return 0,
            }
        }
        let mut moved = self.take_carry(batch, limit);
        while moved < limit
            && let Ok(chunk) = self.rx.try_recv()
        {
            self.carry = chunk;
            moved += self.take_carry(batch, limit - moved);
        }
        moved
    }

    /// Refuses further spans; those already queued can still be received.
    pub(crate) fn close(&mut self) {
        self.rx.close();
    }

    fn take_carry(&mut self, batch: &mut Vec<T>, limit: usize) -> usize {
        let n = self.carry.len().min(limit);
        if n == self.carry.len() {
            batch.append(&mut self.carry);
        } else {
            batch.extend(self.carry.drain(..n));
        }
        self.queued.fetch_sub(n, Ordering::AcqRel);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::testutil::{resource, span};
    use crate::span::model::{Span, SpanKind};

    fn spans(n: u8) -> Vec<Span> {
        let r = resource(1, "svc");
        (1..=n).map(|i| span(&r, i, None, SpanKind::Server, "GET /")).collect()
    }

    fn ids(batch: &[Span]) -> Vec<u8> {
        batch.iter().map(|s| s.span_id.to_bytes()[0]).collect()
    }

    #[tokio::test]
    async fn bound_is_counted_in_spans_and_keeps_the_first() {
        let (tx, mut rx) = channel::<Span>(5);
        assert_eq!(tx.push(&spans(3), Span::clone), Pushed { queued: 3, dropped_full: 0, dropped_closed: 0 });
        assert_eq!(tx.push(&spans(4), Span::clone), Pushed { queued: 2, dropped_full: 2, dropped_closed: 0 });
        assert_eq!(tx.push(&spans(1), Span::clone), Pushed { queued: 0, dropped_full: 1, dropped_closed: 0 });
        let mut batch = Vec::new();
        assert_eq!(rx.recv(&mut batch, 100).await, 5);
        assert_eq!(ids(&batch), [1, 2, 3, 1, 2]);
        // Room again once received.
        assert_eq!(tx.push(&spans(5), Span::clone).queued, 5);
    }

    #[test]
    fn what_does_not_fit_is_never_converted() {
        let (tx, _rx) = channel::<u8>(4);
        let mut converted = 0;
        let pushed = tx.push(&spans(10), |s| {
            converted += 1;
            s.span_id.to_bytes()[0]
        });
        assert_eq!(pushed, Pushed { queued: 4, dropped_full: 6, dropped_closed: 0 });
        assert_eq!(converted, 4);
    }

    #[tokio::test]
    async fn chunks_are_split_to_the_batch_limit_in_order() {
        let (tx, mut rx) = channel::<Span>(100);
        tx.push(&spans(5), Span::clone);
        tx.push(&spans(3), Span::clone);
        let mut batch = Vec::new();
        assert_eq!(rx.recv(&mut batch, 4).await, 4);
        assert_eq!(ids(&batch), [1, 2, 3, 4]);
        batch.clear();
        assert_eq!(rx.recv(&mut batch, 3).await, 3);
        assert_eq!(ids(&batch), [5, 1, 2]);
        batch.clear();
        // The bound counts the carried-over span too.
        assert_eq!(rx.queued.load(Ordering::Acquire), 1);
        drop(tx);
        assert_eq!(rx.recv(&mut batch, 10).await, 1);
        assert_eq!(ids(&batch), [3]);
        assert_eq!(rx.recv(&mut batch, 10).await, 0, "senders gone, queue empty");
    }

    #[tokio::test]
    async fn closed_queue_refuses_and_counts() {
        let (tx, mut rx) = channel::<Span>(100);
        tx.push(&spans(2), Span::clone);
        rx.close();
        assert_eq!(tx.push(&spans(3), Span::clone), Pushed { queued: 0, dropped_full: 0, dropped_closed: 3 });
        let mut batch = Vec::new();
        assert_eq!(rx.recv(&mut batch, 10).await, 2, "what was queued before closing still arrives");
        assert_eq!(rx.recv(&mut batch, 10).await, 0);
        assert_eq!(rx.queued.load(Ordering::Acquire), 0);
    }
}
