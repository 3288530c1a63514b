//! The client address: the peer, or — when the peer is a trusted proxy —
//! the address its `X-Forwarded-For` names.
//!
//! Invariant: an address a client wrote is believed only as far as every
//! hop to its right is a trusted proxy; the list is walked right to left.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use crate::proxy::headers::X_FORWARDED_FOR;

/// Who a request is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// The client's address: the peer's, or the one its trusted proxies name.
    pub ip: IpAddr,
    /// The peer is one of `client_ip.trusted_proxies`.
    pub peer_trusted: bool,
}

/// Whether `ip` is one of the trusted proxies.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|n| n.contains(&ip))
}

/// The client of a request from `peer`, decided once per request.
pub fn client(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> ClientAddr {
    let peer_trusted = !trusted.is_empty() && is_trusted(peer, trusted);
    ClientAddr {
        ip: if peer_trusted {
            resolve(peer, headers, trusted)
        } else {
            canonical(peer)
        },
        peer_trusted,
    }
}

/// The client address for a request from `peer`.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    // Every X-Forwarded-For header in order, each a comma-separated list;
    // walk all hops right to left.
    let hops: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) => {
                client = ip;
                if !is_trusted(ip, trusted) {
                    break;
                }
            }
            // A hop we cannot read ends the walk at the last trusted one.
            None => break,
        }
    }
    client
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    // `[v6]:port` or `v4:port`.
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let ip = resolve(
            "203.0.113.9".parse().unwrap(),
            &xff(&["10.0.0.1"]),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_trusted_peer_is_walked_right_to_left_to_the_first_untrusted_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = xff(&["1.1.1.1, 198.51.100.7", "10.0.0.5"]);
        let ip = resolve("10.0.0.2".parse().unwrap(), &h, &trusted);
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn all_trusted_hops_give_the_leftmost() {
        let trusted = nets(&["10.0.0.0/8"]);
        let ip = resolve("10.0.0.2".parse().unwrap(), &xff(&["10.1.1.1"]), &trusted);
        assert_eq!(ip, "10.1.1.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_garbage_hop_stops_the_walk() {
        let trusted = nets(&["10.0.0.0/8"]);
        let ip = resolve(
            "10.0.0.2".parse().unwrap(),
            &xff(&["1.2.3.4, nonsense"]),
            &trusted,
        );
        assert_eq!(ip, "10.0.0.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_networks() {
        assert!(is_trusted(
            "::ffff:10.0.0.1".parse().unwrap(),
            &nets(&["10.0.0.0/8"])
        ));
    }
}
