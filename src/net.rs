//! Client addresses: IP binding and the prefix arithmetic it and the per-address
//! limit share, used by the store and by the HTTP layer's trusted proxies.

use std::net::IpAddr;

/// Whether a session is tied to the client address that created it.
///
/// With binding on, a request for the session from another address is refused
/// with [`Refused::IpMismatch`](crate::Refused::IpMismatch) and the session is
/// ended (reason [`EndReason::IpMismatch`](crate::EndReason::IpMismatch)): a
/// stolen cookie used elsewhere kills the session for the thief and the owner.
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) count as their IPv4 address.
/// A session created without an address is not bound; a bound session refuses a
/// request that comes without one.
///
/// ```
/// use std::net::IpAddr;
/// use keyed_session::IpBinding;
/// let home: IpAddr = "192.0.2.10".parse().unwrap();
/// let next_door: IpAddr = "192.0.2.77".parse().unwrap();
/// assert!(!IpBinding::Exact.allows(Some(home), Some(next_door)));
/// assert!(IpBinding::subnet().allows(Some(home), Some(next_door)));
/// assert!(!IpBinding::Exact.allows(Some(home), None), "no address: refused");
/// assert!(IpBinding::Off.allows(Some(home), None));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IpBinding {
    /// No check (the default).
    #[default]
    Off,
    /// The request must come from the very same address.
    Exact,
    /// The request must come from the same network: the first `v4` bits of an
    /// IPv4 address or the first `v6` bits of an IPv6 address must match.
    /// Widths above 32 / 128 count as 32 / 128. [`IpBinding::subnet`] gives /24
    /// and /64, which survive a mobile client hopping between nearby addresses.
    Prefix {
        /// Prefix length for IPv4 (0 to 32).
        v4: u8,
        /// Prefix length for IPv6 (0 to 128).
        v6: u8,
    },
}

impl IpBinding {
    /// Same IPv4 /24 or IPv6 /64.
    pub const fn subnet() -> Self {
        IpBinding::Prefix { v4: 24, v6: 64 }
    }

    /// Whether a request from `request` may use a session bound to `bound`.
    pub fn allows(&self, bound: Option<IpAddr>, request: Option<IpAddr>) -> bool {
        let bound = match (self, bound) {
            (IpBinding::Off, _) | (_, None) => return true,
            (_, Some(b)) => b.to_canonical(),
        };
        let Some(request) = request.map(|r| r.to_canonical()) else {
            return false;
        };
        match *self {
            IpBinding::Off => true,
            IpBinding::Exact => bound == request,
            IpBinding::Prefix { v4, v6 } => same_prefix(bound, request, v4, v6),
        }
    }
}

/// Whether two addresses share their first `v4` (IPv4) or `v6` (IPv6) bits.
pub(crate) fn same_prefix(a: IpAddr, b: IpAddr, v4: u8, v6: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = prefix_mask_u32(v4);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = prefix_mask_u128(v6);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

fn prefix_mask_u32(bits: u8) -> u32 {
    match bits.min(32) {
        0 => 0,
        n => u32::MAX << (32 - n),
    }
}

fn prefix_mask_u128(bits: u8) -> u128 {
    match bits.min(128) {
        0 => 0,
        n => u128::MAX << (128 - n),
    }
}

/// The address a per-IP limit counts under: the IPv4 address, or the /64 of an
/// IPv6 address (one client usually holds a whole /64).
pub(crate) fn per_ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & prefix_mask_u128(64)).into()),
        v4 => v4,
    }
}
