//! IP prefixes as NLRI carries them: the [`Prefix`] type and the
//! length-then-address encoding shared by IPv4 NLRI and MP_REACH/MP_UNREACH.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Serialize, Serializer};

/// An IP prefix as carried in NLRI, host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// `None` when `len` exceeds the address width.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        let masked = mask(addr, len)?;
        Some(Prefix { addr: masked, len })
    }

    /// Whether `ip` is inside this prefix (never across address families).
    pub fn covers(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                // Mask both sides: the fields are public, so `addr` may carry
                // host bits if the prefix was not built with `new`.
                mask(ip, self.len).is_some() && mask(ip, self.len) == mask(self.addr, self.len)
            }
            _ => false,
        }
    }
}

fn mask(addr: IpAddr, len: u8) -> Option<IpAddr> {
    match addr {
        IpAddr::V4(a) if len <= 32 => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            Some(IpAddr::V4(Ipv4Addr::from(u32::from(a) & m)))
        }
        IpAddr::V6(a) if len <= 128 => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            Some(IpAddr::V6(Ipv6Addr::from(u128::from(a) & m)))
        }
        _ => None,
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// As its text form, "203.0.113.240/32": what a person greps for.
impl Serialize for Prefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Prefixes in NLRI encoding (length in bits, then just enough bytes).
pub(super) fn parse_prefixes(mut b: &[u8], v6: bool) -> Result<Vec<Prefix>, &'static str> {
    let max = if v6 { 128 } else { 32 };
    let mut out = Vec::new();
    while let Some((&len, rest)) = b.split_first() {
        if len > max {
            return Err("prefix length exceeds the address width");
        }
        let n = usize::from(len).div_ceil(8);
        let bytes = rest
            .get(..n)
            .ok_or("prefix runs past the end of its list")?;
        let mut a = [0u8; 16];
        a[..n].copy_from_slice(bytes);
        let addr = if v6 {
            IpAddr::V6(Ipv6Addr::from(a))
        } else {
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        };
        out.extend(Prefix::new(addr, len));
        b = &rest[n..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::testutil::*;

    #[test]
    fn prefixes() {
        let p = pfx("203.0.113.240/28");
        assert_eq!(p.to_string(), "203.0.113.240/28");
        assert!(p.covers(LB));
        assert!(p.covers("203.0.113.255".parse().unwrap()));
        assert!(!p.covers("203.0.113.239".parse().unwrap()));
        assert!(!p.covers("::1".parse().unwrap()));
        assert!(pfx("0.0.0.0/0").covers(LB));
        assert!(pfx("203.0.113.240/32").covers(LB));
        // Host bits are cleared by `new`, and ignored by `covers` anyway.
        assert_eq!(pfx("10.1.2.3/8").to_string(), "10.0.0.0/8");
        let raw = Prefix {
            addr: "10.1.2.3".parse().unwrap(),
            len: 8,
        };
        assert!(raw.covers("10.9.9.9".parse().unwrap()));
        assert!(Prefix::new(LB, 33).is_none());
        assert!(!Prefix { addr: LB, len: 40 }.covers(LB));
        let v6 = pfx("2001:db8::/32");
        assert!(v6.covers("2001:db8:ffff::10".parse().unwrap()));
        assert!(!v6.covers("2001:db9::1".parse().unwrap()));
        assert_eq!(serde_json::to_value(p).unwrap(), "203.0.113.240/28");
    }
}
