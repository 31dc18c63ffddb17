//! Whether this kernel lets a socket sit in a SOCKHASH without harm to the process that owns it.
//!
//! Header propagation enrols client sockets in a SOCKHASH so that an `sk_msg` program sees their
//! sends. On some kernels membership alone breaks the application: since the stable fix
//! "bpf, sockmap: Fix FIONREAD for sockmap" (6.6.128+, 6.12.75+, 6.18.14+, 6.19+), `ioctl(FIONREAD)`
//! on a member with no stream verdict reports 0 bytes whatever is queued (nginx, Java NIO and .NET
//! then stall on large responses: grafana/beyla#2941), and on the same kernels epoll-driven runtimes
//! miss readiness (grafana/beyla#3025). Neither is visible in a version number that can be trusted
//! (distributions backport), so both are tried on a loopback pair in a SOCKHASH of two entries made
//! for the purpose and dropped at once — before any socket of any application is enrolled.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, SockHash};
use aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_SOCKHASH;

/// Bytes the peer writes in the FIONREAD probe (what OBI's probe writes too).
const PROBE_BYTES: usize = 4096;
/// How long data written on loopback may take to be readable: it is there at once on a sound
/// kernel; a second is room for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(1);

/// What was found wrong with SOCKHASH membership on this kernel.
#[derive(Debug, thiserror::Error)]
pub enum SockhashHarm {
    #[error(
        "this kernel's FIONREAD is wrong for sockets in a SOCKHASH: {reported} of {queued} queued bytes \
         reported (the 'bpf, sockmap: Fix FIONREAD for sockmap' regression; nginx, Java and .NET stall \
         on it, grafana/beyla#2941)"
    )]
    Fionread { queued: usize, reported: i32 },
    #[error(
        "this kernel drops epoll readiness for sockets in a SOCKHASH: {0} (the regression of \
         grafana/beyla#3025; Node.js, Go and asyncio stall on it)"
    )]
    Readiness(&'static str),
    #[error("the SOCKHASH self-test could not run, so membership cannot be shown harmless: {0}")]
    Untestable(String),
}

/// The self-test itself failed at `what`.
fn untestable(what: &str, e: impl std::fmt::Display) -> SockhashHarm {
    SockhashHarm::Untestable(format!("{what}: {e}"))
}

/// Runs both probes; `Ok` when a socket in a SOCKHASH keeps FIONREAD and epoll readiness right.
pub fn sockhash_is_harmless() -> Result<(), SockhashHarm> {
    fionread_probe()?;
    readiness_probe()
}

/// A connected loopback pair whose client end is in a fresh two-entry SOCKHASH, as long as the
/// value lives (the kernel unlinks the socket when the map goes, or the socket closes).
struct EnrolledPair {
    client: TcpStream,
    server: TcpStream,
    _sockhash: SockHash<MapData, u64>,
}

impl EnrolledPair {
    fn new() -> Result<Self, SockhashHarm> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| untestable("listen", e))?;
        let address = listener.local_addr().map_err(|e| untestable("listen", e))?;
        let client = TcpStream::connect(address).map_err(|e| untestable("connect", e))?;
        let (server, _) = listener.accept().map_err(|e| untestable("accept", e))?;
        let map = aya_obj::Map::new_from_params(BPF_MAP_TYPE_SOCKHASH as u32, 8, 4, 2, 0);
        let data =
            MapData::create(map, "sonde_sh_probe", None).map_err(|e| untestable("creating a SOCKHASH", e))?;
        let mut sockhash: SockHash<MapData, u64> =
            SockHash::try_from(Map::SockHash(data)).map_err(|e| untestable("creating a SOCKHASH", e))?;
        sockhash.insert(0, client.as_raw_fd(), 0).map_err(|e| untestable("enrolling a socket", e))?;
        Ok(Self { client, server, _sockhash: sockhash })
    }
}

/// The peer writes `PROBE_BYTES`; once a peek sees them all (FIONREAD is what is under test),
/// FIONREAD must report them all.
fn fionread_probe() -> Result<(), SockhashHarm> {
    let mut pair = EnrolledPair::new()?;
    pair.server.write_all(&[b'x'; PROBE_BYTES]).map_err(|e| untestable("writing to the pair", e))?;
    pair.client.set_nonblocking(true).map_err(|e| untestable("making the pair non-blocking", e))?;
    let deadline = Instant::now() + PATIENCE;
    let mut peek = [0u8; PROBE_BYTES];
    loop {
        match pair.client.peek(&mut peek) {
            Ok(n) if n == PROBE_BYTES => break,
            Ok(_) | Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Ok(n) => {
                return Err(SockhashHarm::Untestable(format!(
                    "{n} of {PROBE_BYTES} bytes arrived within {PATIENCE:?}"
                )));
            }
            Err(e) => return Err(untestable("peeking at the pair", e)),
        }
    }
    let mut reported: libc::c_int = -1;
    // SAFETY: FIONREAD writes one int through the pointer, which points at `reported`.
    let r = unsafe { libc::ioctl(pair.client.as_raw_fd(), libc::FIONREAD, &raw mut reported) };
    if r != 0 {
        return Err(untestable("FIONREAD", std::io::Error::last_os_error()));
    }
    if reported as usize != PROBE_BYTES {
        return Err(SockhashHarm::Fionread { queued: PROBE_BYTES, reported });
    }
    Ok(())
}

/// The client end registered edge-triggered in an epoll set, as runtimes do: each write by the
/// peer must make it ready, the first and every one after a drain. The reported failures are
/// intermittent, so it is tried `READINESS_ROUNDS` times (a few milliseconds on loopback).
fn readiness_probe() -> Result<(), SockhashHarm> {
    const READINESS_ROUNDS: usize = 200;
    let mut pair = EnrolledPair::new()?;
    let epoll = Epoll::new(&pair.client)?;
    for round in 0..READINESS_ROUNDS {
        pair.server.write_all(b"x").map_err(|e| untestable("writing to the pair", e))?;
        if !epoll.ready_within(PATIENCE)? {
            return Err(SockhashHarm::Readiness(if round == 0 {
                "a write by the peer did not make the socket readable"
            } else {
                "a write after the socket was drained did not make it readable again"
            }));
        }
        pair.client.read_exact(&mut [0u8; 1]).map_err(|e| untestable("reading what the peer wrote", e))?;
    }
    Ok(())
}

/// An epoll set holding one socket for `EPOLLIN | EPOLLET`.
struct Epoll(libc::c_int);

impl Epoll {
    fn new(socket: &TcpStream) -> Result<Self, SockhashHarm> {
        // SAFETY: a plain epoll_create1(2); the fd is owned by the value and closed at its drop.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(untestable("epoll_create1", std::io::Error::last_os_error()));
        }
        let epoll = Self(fd);
        let mut event = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: 0 };
        // SAFETY: both fds are open; `event` is a valid epoll_event.
        let r = unsafe { libc::epoll_ctl(epoll.0, libc::EPOLL_CTL_ADD, socket.as_raw_fd(), &raw mut event) };
        if r != 0 {
            return Err(untestable("epoll_ctl", std::io::Error::last_os_error()));
        }
        Ok(epoll)
    }

    fn ready_within(&self, patience: Duration) -> Result<bool, SockhashHarm> {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        let timeout = libc::c_int::try_from(patience.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: room for the one event asked for.
        let n = unsafe { libc::epoll_wait(self.0, &raw mut event, 1, timeout) };
        if n < 0 {
            return Err(untestable("epoll_wait", std::io::Error::last_os_error()));
        }
        Ok(n == 1 && event.events & libc::EPOLLIN as u32 != 0)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: the fd is this value's own.
        unsafe { libc::close(self.0) };
    }
}
