//! Accepted connections, tracked so that a receiver going away can shut them (as a collector
//! that stops does), instead of tonic serving them on in its own tasks.

use super::*;

/// The connections a receiver accepted and that are still open, as duplicates of their sockets,
/// so that they can be shut down (FIN to the peer) from outside the tasks serving them.
#[derive(Clone, Default)]
pub(super) struct Connections(Arc<Mutex<ConnectionSet>>);

#[derive(Default)]
pub(super) struct ConnectionSet {
    next_id: u64,
    open: BTreeMap<u64, std::os::fd::OwnedFd>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnectionSet> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn track(&self, stream: tokio::net::TcpStream) -> TrackedStream {
        use std::os::fd::AsFd as _;
        let mut set = self.lock();
        let id = set.next_id;
        set.next_id += 1;
        // Without a duplicate the connection cannot be shut down later; it is still served.
        if let Ok(fd) = stream.as_fd().try_clone_to_owned() {
            set.open.insert(id, fd);
        }
        TrackedStream { stream, id, connections: self.clone() }
    }

    pub(super) fn shut_all(&self) {
        use std::os::fd::AsRawFd as _;
        for fd in self.lock().open.values() {
            // SAFETY: `fd` is an open socket we own; shutdown(2) acts on the socket that the
            // serving task's fd refers to as well, whose reads then end and writes fail.
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

/// An accepted connection; closes its duplicate when the server is done with it (or the socket
/// would stay open, and its peer would never see it close).
pub(super) struct TrackedStream {
    stream: tokio::net::TcpStream,
    id: u64,
    connections: Connections,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        self.connections.lock().open.remove(&self.id);
    }
}

impl tokio::io::AsyncRead for TrackedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for TrackedStream {
    // The services do not ask who is calling.
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

/// A listener whose connections are tracked: tonic's incoming stream, and axum's listener.
pub(super) struct Tracked {
    pub(super) listener: TcpListener,
    pub(super) connections: Connections,
}

impl tokio_stream::Stream for Tracked {
    type Item = std::io::Result<TrackedStream>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.listener.poll_accept(cx).map(|accepted| Some(accepted.map(|(s, _)| self.connections.track(s))))
    }
}

impl axum::serve::Listener for Tracked {
    type Io = TrackedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TrackedStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => return (self.connections.track(stream), addr),
                // Out of fds, or a connection reset before it was accepted: try again.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}
