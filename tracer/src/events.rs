//! Ring-buffer records to Rust values. The kernel writes `#[repr(C)]` structs
//! from tracer-common; every record starts with its `Kind` byte.

use tracer_common::{ArpEvent, Event, Kind, SegEvent};

#[derive(Clone, Debug)]
pub enum Record {
    Path(Event),
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
        _ => read::<Event>(bytes).map(Record::Path),
    }
}

/// A NUL-padded kernel interface name.
pub fn ifname(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
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

    #[test]
    fn names() {
        assert_eq!(ifname(b"eth0\0\0\0\0\0\0\0\0\0\0\0\0"), "eth0");
        assert_eq!(ifname(b"0123456789abcdef"), "0123456789abcdef");
    }
}
