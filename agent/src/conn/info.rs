//! What is known about one connection, from the kernel's `Open` event.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use sonde_common::{AF_INET, AF_INET6, ConnEvent, Role};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Unique per connection for the life of the agent (the connection table numbers them; 0
    /// until it did), unlike (pid, fd), which the process reuses.
    pub id: u64,
    pub pid: u32,
    pub fd: i32,
    pub role: Role,
    /// None when the kernel could not read the addresses (e.g. IPv6 offsets missing from BTF).
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// Its plaintext comes from TLS library hooks (HTTPS).
    pub tls: bool,
}

impl ConnInfo {
    pub fn from_event(e: &ConnEvent) -> Self {
        let addr = |bytes: &[u8; 16], port: u16| -> Option<SocketAddr> {
            let ip = match e.family {
                AF_INET => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
                AF_INET6 if bytes.iter().any(|&b| b != 0) || port != 0 => {
                    let v6 = Ipv6Addr::from(*bytes);
                    // Dual-stack sockets carry IPv4 peers as ::ffff:a.b.c.d; show them as IPv4.
                    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
                }
                _ => return None,
            };
            Some(SocketAddr::new(ip, port))
        };
        Self {
            id: 0,
            pid: e.header.tgid,
            fd: e.header.fd,
            role: Role::from_u8(e.role),
            local: addr(&e.local_addr, e.local_port),
            remote: addr(&e.remote_addr, e.remote_port),
            tls: false,
        }
    }

    pub fn local_port(&self) -> Option<u16> {
        self.local.map(|a| a.port())
    }

    pub fn remote_port(&self) -> Option<u16> {
        self.remote.map(|a| a.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_common::EventHeader;

    fn event(family: u16, local: [u8; 16], remote: [u8; 16]) -> ConnEvent {
        ConnEvent {
            header: EventHeader { ts_ns: 0, tgid: 10, tid: 11, fd: 5, kind: 2 },
            sock: 1,
            family,
            local_port: 8080,
            remote_port: 40000,
            role: Role::Server as u8,
            _pad: 0,
            local_addr: local,
            remote_addr: remote,
            comm: [0; 16],
            start_ns: 0,
        }
    }

    #[test]
    fn addresses_by_family() {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[127, 0, 0, 1]);
        let info = ConnInfo::from_event(&event(AF_INET, v4, v4));
        assert_eq!(info.local, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(info.role, Role::Server);

        let mapped = Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped().octets();
        let info = ConnInfo::from_event(&event(AF_INET6, Ipv6Addr::LOCALHOST.octets(), mapped));
        assert_eq!(info.local, Some("[::1]:8080".parse().unwrap()));
        assert_eq!(info.remote, Some("10.0.0.2:40000".parse().unwrap()));

        assert_eq!(ConnInfo::from_event(&event(1, v4, v4)).local, None);
    }
}
