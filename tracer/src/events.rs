//! Ring-buffer records to Rust values. The kernel writes `#[repr(C)]` structs
//! from tracer-common; every record starts with its `Kind` byte.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tracer_common::{AF_INET6, ArpEvent, CAP_NONE, Capture, Event, Kind, SegEvent, Tuple};

use crate::kubeproxy::Proto;

#[derive(Clone, Debug)]
pub enum Record {
    /// A path event, with the packet's headers when they were captured.
    Path(Event, Option<Box<Capture>>),
    Arp(ArpEvent),
    Seg(Box<SegEvent>),
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is plain old data, any bit pattern is valid.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

pub fn decode(bytes: &[u8]) -> Option<Record> {
    match Kind::from_u8(*bytes.first()?)? {
        Kind::Arp => read::<ArpEvent>(bytes).map(Record::Arp),
        Kind::Bgp => read::<SegEvent>(bytes).map(|s| Record::Seg(Box::new(s))),
        _ => read::<Event>(bytes).map(|e| {
            // With capture on, the headers follow the event (EventCap).
            let cap = bytes
                .get(size_of::<Event>()..)
                .and_then(read::<Capture>)
                .filter(|c| c.link != CAP_NONE)
                .map(Box::new);
            Record::Path(e, cap)
        }),
    }
}

/// An address as the kernel side encodes it (IPv4 in the first 4 bytes).
pub fn ip(addr: &[u8; 16], family: u8) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*addr))
    } else {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    }
}

pub fn src(t: &Tuple) -> SocketAddr {
    SocketAddr::new(ip(&t.saddr, t.family), t.sport)
}

pub fn dst(t: &Tuple) -> SocketAddr {
    SocketAddr::new(ip(&t.daddr, t.family), t.dport)
}

/// An IP protocol number as people write it.
pub fn proto_name(p: u8) -> String {
    match (Proto::from_ip_proto(p), p) {
        (Some(proto), _) => proto.as_str().into(),
        (None, 1) => "icmp".into(),
        (None, 58) => "icmpv6".into(),
        (None, n) => format!("proto {n}"),
    }
}

/// A NUL-padded kernel interface name.
pub fn ifname(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    crate::escape::visible(&String::from_utf8_lossy(&raw[..end])).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_unknown_records_are_refused() {
        assert!(decode(&[]).is_none());
        assert!(decode(&[200, 0, 0]).is_none());
        assert!(decode(&[Kind::Drop as u8, 0, 0]).is_none());
    }

    /// Path records are plain events unless capture is on; then the
    /// headers follow, and an empty capture counts as none.
    #[test]
    fn captured_headers_follow_the_event() {
        let mut rec = vec![0u8; size_of::<tracer_common::EventCap>()];
        rec[0] = Kind::Arrive as u8;
        let ev = size_of::<Event>();
        assert!(matches!(decode(&rec[..ev]), Some(Record::Path(_, None))));
        assert!(matches!(decode(&rec), Some(Record::Path(_, None))));
        rec[ev] = tracer_common::CAP_ETHERNET;
        rec[ev + 2] = 60;
        match decode(&rec) {
            Some(Record::Path(e, Some(c))) => {
                assert_eq!(e.kind, Kind::Arrive as u8);
                assert_eq!((c.link, c.caplen), (tracer_common::CAP_ETHERNET, 60));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tuples_and_protocols() {
        let mut t = Tuple {
            family: 2,
            sport: 5,
            dport: 80,
            ..Tuple::default()
        };
        t.daddr[..4].copy_from_slice(&[192, 0, 2, 240]);
        assert_eq!(dst(&t).to_string(), "192.0.2.240:80");
        assert_eq!(src(&t).to_string(), "0.0.0.0:5");
        assert_eq!(proto_name(6), "tcp");
        assert_eq!(proto_name(132), "sctp");
        assert_eq!(proto_name(58), "icmpv6");
        assert_eq!(proto_name(47), "proto 47");
    }

    #[test]
    fn names() {
        assert_eq!(ifname(b"eth0\0\0\0\0\0\0\0\0\0\0\0\0"), "eth0");
        assert_eq!(ifname(b"0123456789abcdef"), "0123456789abcdef");
    }
}
