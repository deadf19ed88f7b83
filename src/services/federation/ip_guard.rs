//! Which addresses outbound federation requests may reach.
//!
//! Server names, `.well-known` answers, SRV records and redirects all come from other
//! servers, so without a guard anyone could make us send requests into our own network
//! (server-side request forgery). Refused unless `federation.ip_range_allowlist` opens
//! them: loopback, private (RFC 1918, unique local), link-local, shared (CGNAT),
//! unspecified, multicast, broadcast and documentation ranges; IPv6 addresses that embed
//! an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4, NAT64) are judged by that address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::IpNet;

/// The allowlist and the rules.
#[derive(Debug, Clone, Default)]
pub struct IpGuard {
    allow: Vec<IpNet>,
}

impl IpGuard {
    /// A guard that lets `allow` through besides public addresses.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// Whether a request may go to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|net| net.contains(ip)) || is_public(ip)
    }
}

/// Whether `ip` is a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)) // documentation
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), 6to4 (`2002:aabb:ccdd::/48`) and NAT64
/// (`64:ff9b::a.b.c.d`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let tail = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return Some(tail());
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_loopback_and_link_local_are_refused_in_every_form() {
        let guard = IpGuard::default();
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "2002:7f00:0001::1",
            "2002:a9fe:a9fe::1",
            "64:ff9b::10.0.0.1",
        ] {
            assert!(!guard.permits(ip(refused)), "{refused} permitted");
        }
    }

    #[test]
    fn public_addresses_pass_in_every_form() {
        let guard = IpGuard::default();
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::1",
            "64:ff9b::8.8.8.8",
        ] {
            assert!(guard.permits(ip(public)), "{public} refused");
        }
    }

    #[test]
    fn the_allowlist_opens_a_range_and_no_more() {
        let guard = IpGuard::new(vec![
            IpNet::parse("127.0.0.0/8").unwrap(),
            IpNet::parse("::1/128").unwrap(),
        ]);
        assert!(guard.permits(ip("127.0.0.1")));
        assert!(guard.permits(ip("127.9.9.9")));
        assert!(
            guard.permits(ip("::ffff:127.0.0.1")),
            "the mapped form of an allowed v4 address"
        );
        assert!(guard.permits(ip("::1")));
        assert!(!guard.permits(ip("10.0.0.1")));
        assert!(!guard.permits(ip("169.254.169.254")));
    }
}
