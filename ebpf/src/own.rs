//! sonde's own TCP connections — to a collector, to the Kubernetes API — so that their other end
//! is never traced. A collector on this host would otherwise read each export as an HTTP (or gRPC)
//! request: a SERVER span that sonde exports, which makes the next export, and so on, for ever.
//!
//! Told from the socket's life cycle (`sock:inet_sock_set_state`), whatever the protocol:
//! - a connect by sonde's own process (the SYN_SENT transition runs in the connecting task) files
//!   the socket in `AGENT_SOCKS`;
//! - once established (in softirq, any task), its local address and port — what the other end sees
//!   as its peer — and the port it connected to go into `AGENT_ENDPOINTS` (see `Endpoint` for why
//!   the port connected to, not the whole 4-tuple). The other end accepts only after this transition (its
//!   ACK is sent after it), so the entry is there before the other end's first read;
//! - at close both go, so that a port reused by another process later is traced again; a close
//!   that went unseen is made up for when the socket's address is connected again (`forget`).
//!
//! The connection table then looks a new connection's peer up in `AGENT_ENDPOINTS` once, when it
//! first carries data (`conn::on_data`).

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    programs::TracePointContext,
};
use aya_log_ebpf::{debug, warn};
use sonde_common::{AF_INET, Endpoint};

use crate::maps::{
    AGENT_ENDPOINTS, AGENT_SOCKS, AGENT_TGID, OFF_STATE_DPORT, OFF_STATE_SADDR_V6, OFF_STATE_SPORT,
    global_u32,
};

// `include/net/tcp_states.h`.
const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;

/// A TCP state change of socket `sock`, told by the tracepoint `ctx`, whose record has `sport`,
/// `dport` and `saddr_v6` at the offsets its format file gave.
#[inline(always)]
pub fn on_state_change(ctx: &TracePointContext, sock: u64, old: i32, new: i32) {
    match new {
        TCP_SYN_SENT => {
            // A socket filed here before at this address was freed without its close being seen:
            // forget it, whoever connects now.
            forget(sock);
            if (bpf_get_current_pid_tgid() >> 32) as u32 == global_u32(&AGENT_TGID)
                // Not yet bound to a port (connect picks it after this transition).
                && AGENT_SOCKS.insert(&sock, &Endpoint::default(), 0).is_err()
            {
                warn!(ctx, "sonde's own sockets fill AGENT_SOCKS: the other end of this one may be traced");
            }
        }
        TCP_ESTABLISHED if old == TCP_SYN_SENT => {
            let Some(filed) = AGENT_SOCKS.get_ptr_mut(&sock) else {
                return;
            };
            let Some(endpoint) = local_endpoint(ctx.as_ptr() as *const u8) else {
                return;
            };
            // SAFETY: `filed` points into the map's value, valid for this program run.
            unsafe { *filed = endpoint };
            if AGENT_ENDPOINTS.insert(&endpoint, &1, 0).is_err() {
                warn!(
                    ctx,
                    "sonde's own connections fill AGENT_ENDPOINTS: the other end of port {} may be traced",
                    endpoint.port
                );
            } else {
                debug!(
                    ctx,
                    "own connection from [{:i}]:{} to port {}: its other end is not traced",
                    endpoint.addr,
                    endpoint.port,
                    endpoint.peer_port
                );
            }
        }
        TCP_CLOSE => {
            if let Some(endpoint) = forget(sock) {
                debug!(
                    ctx,
                    "own connection from port {} to port {} closed", endpoint.port, endpoint.peer_port
                );
            }
        }
        _ => {}
    }
}

/// Removes socket `sock` from `AGENT_SOCKS` and its endpoint, if it had one, from
/// `AGENT_ENDPOINTS`; returns that endpoint.
///
/// A close can go unseen: a tracepoint's program is skipped when it fires in a softirq that
/// interrupted another of sonde's programs on the same CPU, and a TCP socket often closes in a
/// softirq (the peer's last ACK or FIN). The entry then outlives the socket, and the kernel may
/// give its address to a socket of another process — whose other end would be taken for sonde's
/// and go untraced, had its connect not called this first.
#[inline(always)]
fn forget(sock: u64) -> Option<Endpoint> {
    // SAFETY: the value is copied out before the entry is removed.
    let endpoint = (unsafe { AGENT_SOCKS.get(&sock) }).copied()?;
    let _ = AGENT_SOCKS.remove(&sock);
    if endpoint.port == 0 {
        return None;
    }
    let _ = AGENT_ENDPOINTS.remove(&endpoint);
    Some(endpoint)
}

/// The socket's own address and port, as its peer sees them (`saddr_v6` is IPv4-mapped for an
/// IPv4 socket: the tracepoint stores it so).
#[inline(always)]
fn local_endpoint(record: *const u8) -> Option<Endpoint> {
    let port_at = global_u32(&OFF_STATE_SPORT) as usize;
    let peer_port_at = global_u32(&OFF_STATE_DPORT) as usize;
    let addr_at = global_u32(&OFF_STATE_SADDR_V6) as usize;
    if port_at == 0
        || peer_port_at == 0
        || addr_at == 0
        || port_at > 128
        || peer_port_at > 128
        || addr_at > 128
    {
        return None;
    }
    // SAFETY: reads of the tracepoint record at offsets its format file gave, through the
    // helper, which fails cleanly instead of faulting.
    let port = unsafe { bpf_probe_read_kernel(record.add(port_at) as *const u16) }.ok()?;
    // SAFETY: as for `port`, at the record's `dport` offset.
    let peer_port = unsafe { bpf_probe_read_kernel(record.add(peer_port_at) as *const u16) }.ok()?;
    // SAFETY: as for `port`: 16 bytes at the record's `saddr_v6` offset (at most 128), copied by
    // the helper or not at all; any bytes are a valid address.
    let addr = unsafe { bpf_probe_read_kernel(record.add(addr_at) as *const [u8; 16]) }.ok()?;
    Some(Endpoint { addr, port, peer_port })
}

/// Whether the peer of a connection (its address as the socket stores it: 4 bytes for IPv4, 16
/// for IPv6; ports in host order) is one of sonde's own sockets, connected to `local_port`.
#[inline(always)]
pub fn peer_is_agent(family: u16, addr: &[u8; 16], port: u16, local_port: u16) -> bool {
    let mut peer = Endpoint { addr: *addr, port, peer_port: local_port };
    if family == AF_INET {
        peer.addr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3]];
    }
    // SAFETY: only the presence of the key is read.
    unsafe { AGENT_ENDPOINTS.get(&peer) }.is_some()
}
