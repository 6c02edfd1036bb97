//! Trusted proxies: which peers may say who the client is, and in which header.

use std::net::IpAddr;

use http::header::HeaderMap;

/// Which header a trusted proxy writes the client address into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default: nginx, HAProxy,
    /// cloud load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

/// The proxies whose word on the client address is trusted, and the one header
/// they write it into.
///
/// Only when a request comes directly from one of these is the client address
/// read from the configured header (default `X-Forwarded-For`; the other header
/// is never read, since most proxies pass it through from the client
/// untouched): walking from the nearest hop outwards, the first address that is
/// not itself a trusted proxy is the client. From anyone else the headers are
/// ignored, since a client can write them.
///
/// ```
/// use std::net::IpAddr;
/// use http::HeaderMap;
/// use keyed_session::http::{ForwardedHeader, TrustedProxies};
///
/// let proxies = TrustedProxies::new().trust("10.0.0.0".parse().unwrap(), 8);
/// let mut headers = HeaderMap::new();
/// headers.insert("x-forwarded-for", "203.0.113.7, 10.0.0.3".parse().unwrap());
/// // Written by the client, passed through by the proxy: never read.
/// headers.insert("forwarded", "for=192.0.2.66".parse().unwrap());
/// let proxy: IpAddr = "10.0.0.2".parse().unwrap();
/// let stranger: IpAddr = "198.51.100.1".parse().unwrap();
/// assert_eq!(proxies.client_ip(Some(proxy), &headers), Some("203.0.113.7".parse().unwrap()));
/// assert_eq!(proxies.client_ip(Some(stranger), &headers), Some(stranger));
///
/// let rfc7239 = proxies.clone().header(ForwardedHeader::Forwarded);
/// assert_eq!(rfc7239.client_ip(Some(proxy), &headers), Some("192.0.2.66".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<(IpAddr, u8)>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Trusts nobody (the default): the direct peer is the client.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also trusts the network `addr/prefix_len` (a width above 32 or 128 counts
    /// as the whole address).
    pub fn trust(mut self, addr: IpAddr, prefix_len: u8) -> Self {
        self.nets.push((addr.to_canonical(), prefix_len));
        self
    }

    /// The header the trusted proxies write (default
    /// [`ForwardedHeader::XForwardedFor`]). Only this one is read.
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Whether `addr` is a trusted proxy.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.nets
            .iter()
            .any(|&(net, len)| crate::net::same_prefix(net, addr, len, len))
    }

    /// The client address of a request that came from `direct` with `headers`.
    pub fn client_ip(&self, direct: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let direct = direct?;
        if !self.contains(direct) {
            return Some(direct);
        }
        let hops: Vec<Option<IpAddr>> = match self.header {
            ForwardedHeader::Forwarded => headers
                .get_all(http::header::FORWARDED)
                .into_iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .map(forwarded_for)
                .collect(),
            ForwardedHeader::XForwardedFor => headers
                .get_all("x-forwarded-for")
                .into_iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .map(|node| parse_node(node.trim_ascii()))
                .collect(),
        };
        // From the nearest hop outwards: the first one that is not a trusted proxy.
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) if self.contains(*ip) => continue,
                Some(ip) => return Some(ip.to_canonical()),
                // An unknown or obfuscated hop: nothing beyond it can be trusted.
                None => return Some(direct),
            }
        }
        Some(hops.first().copied().flatten().unwrap_or(direct))
    }
}

/// The `for=` address of one `Forwarded` element, if any.
fn forwarded_for(element: &[u8]) -> Option<IpAddr> {
    element
        .split(|&b| b == b';')
        .filter_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            pair[..eq]
                .eq_ignore_ascii_case(b"for")
                .then(|| &pair[eq + 1..])
        })
        .next()
        .and_then(|v| parse_node(v.trim_ascii()))
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]:80`, optionally in double quotes.
fn parse_node(node: &[u8]) -> Option<IpAddr> {
    let node = match node {
        [b'"', inner @ .., b'"'] => inner,
        n => n,
    };
    let text = std::str::from_utf8(node).ok()?;
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    // IPv4 with a port.
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}
