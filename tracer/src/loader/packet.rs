//! BGP capture where the kernel has no tcx links (before 6.6): one AF_PACKET
//! socket per uplink, with a classic BPF filter that keeps only TCP port 179,
//! read in userspace into the same records the TC programs write.
//!
//! A packet socket sees both directions (sent frames through the packet
//! tap), reads nothing but the headers and up to [`SEG_PAYLOAD`] bytes of
//! payload, is bounded by its receive buffer, and goes away with the
//! process like a link. It only observes: the filter decides what this
//! socket gets, never what the interface passes.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context, Result};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracer_common::{AF_INET, AF_INET6, IFNAMSIZ, Kind, SEG_PAYLOAD, SegEvent, Tuple};

use crate::assembler::monotonic_ns;

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const PACKET_OUTGOING: u8 = 4;
const BGP_PORT: u16 = 179;
/// Bytes kept per frame: Ethernet, a VLAN tag, IPv6 or IPv4 with options,
/// TCP with options, and the payload a record holds.
const SNAP: u32 = 14 + 4 + 60 + 60 + SEG_PAYLOAD as u32;
/// Records waiting for the event loop; beyond that they are counted as lost.
const QUEUE: usize = 1024;

/// `tcpdump -dd 'tcp port 179'` with the accept length set to [`SNAP`]:
/// IPv6 (no extension headers) or unfragmented IPv4, either port 179.
fn filter() -> Vec<libc::sock_filter> {
    let f = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    vec![
        f(0x28, 0, 0, 12),
        f(0x15, 0, 6, ETH_P_IPV6 as u32),
        f(0x30, 0, 0, 20),
        f(0x15, 0, 15, 6),
        f(0x28, 0, 0, 54),
        f(0x15, 12, 0, BGP_PORT as u32),
        f(0x28, 0, 0, 56),
        f(0x15, 10, 11, BGP_PORT as u32),
        f(0x15, 0, 10, ETH_P_IP as u32),
        f(0x30, 0, 0, 23),
        f(0x15, 0, 8, 6),
        f(0x28, 0, 0, 20),
        f(0x45, 6, 0, 0x1fff),
        f(0xb1, 0, 0, 14),
        f(0x48, 0, 0, 14),
        f(0x15, 2, 0, BGP_PORT as u32),
        f(0x48, 0, 0, 16),
        f(0x15, 0, 1, BGP_PORT as u32),
        f(0x06, 0, 0, SNAP),
        f(0x06, 0, 0, 0),
    ]
}

/// Records from the sockets, and how many did not fit the queue.
pub struct PacketCapture {
    pub rx: mpsc::Receiver<SegEvent>,
    pub lost: Arc<AtomicU64>,
}

/// Opens one filtered socket per interface (index, name) and reads them on
/// the runtime until the receiver is dropped.
pub fn start(ifaces: &[(u32, String)]) -> Result<PacketCapture> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let lost = Arc::new(AtomicU64::new(0));
    for (index, name) in ifaces {
        let fd = open(*index).with_context(|| format!("packet socket on {name}"))?;
        // SAFETY: the descriptor is ours and lives as long as the AsyncFd.
        let fd = unsafe { AsyncFd::register(fd) }.context("polling a packet socket")?;
        let (tx, lost, name, index) = (tx.clone(), lost.clone(), name.clone(), *index);
        tokio::spawn(async move {
            let mut buf = vec![0u8; SNAP as usize];
            loop {
                let Ok(mut ready) = fd.readable().await else {
                    return;
                };
                loop {
                    match recv(fd.get_ref(), &mut buf) {
                        Ok((n, pkttype)) => {
                            let out = pkttype == PACKET_OUTGOING;
                            if let Some(e) = segment(&buf[..n], out, index, &name)
                                && tx.try_send(e).is_err()
                            {
                                if tx.is_closed() {
                                    return;
                                }
                                lost.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            ready.clear_ready();
                            break;
                        }
                        Err(_) => return,
                    }
                }
            }
        });
    }
    Ok(PacketCapture { rx, lost })
}

/// A packet socket bound to `ifindex` that only ever receives what the
/// filter keeps: it is created listening to nothing, gets its filter, and
/// only then is bound to all protocols.
fn open(ifindex: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let prog = filter();
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)?;
    // Bounded: a slow reader loses frames, counted by the kernel, never
    // memory.
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &(256 * 1024i32))?;
    // SAFETY: zeroed sockaddr_ll is valid; the fields set are its own.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll of the size given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, v: &T) -> io::Result<()> {
    // SAFETY: v points to a T of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            v as *const T as *const libc::c_void,
            size_of::<T>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One frame and its packet type (`PACKET_OUTGOING` for sent frames).
fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, u8)> {
    // SAFETY: zeroed sockaddr_ll is valid; recvfrom fills it.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_ll>() as u32;
    // SAFETY: buf and sll are valid for the sizes given.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_DONTWAIT,
            &mut sll as *mut libc::sockaddr_ll as *mut libc::sockaddr,
            &mut len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, sll.sll_pkttype))
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The record the TC programs would write for this Ethernet frame, when it
/// is a TCP segment to or from port 179 that says something (SYN, FIN, RST
/// or data).
pub fn segment(frame: &[u8], outgoing: bool, ifindex: u32, ifname: &str) -> Option<SegEvent> {
    let mut l3 = 14;
    let mut proto = be16(frame, 12)?;
    if proto == ETH_P_8021Q {
        proto = be16(frame, 16)?;
        l3 = 18;
    }
    let mut t = Tuple::default();
    let (l4, ip_end) = match proto {
        ETH_P_IP => {
            let h = frame.get(l3..l3 + 20)?;
            if h[9] != 6 || u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                return None;
            }
            t.family = AF_INET;
            t.saddr[..4].copy_from_slice(&h[12..16]);
            t.daddr[..4].copy_from_slice(&h[16..20]);
            (
                l3 + ((h[0] & 0xf) as usize) * 4,
                l3 + u16::from_be_bytes([h[2], h[3]]) as usize,
            )
        }
        ETH_P_IPV6 => {
            let h = frame.get(l3..l3 + 40)?;
            if h[6] != 6 {
                return None;
            }
            t.family = AF_INET6;
            t.saddr.copy_from_slice(&h[8..24]);
            t.daddr.copy_from_slice(&h[24..40]);
            (l3 + 40, l3 + 40 + u16::from_be_bytes([h[4], h[5]]) as usize)
        }
        _ => return None,
    };
    t.proto = 6;
    t.sport = be16(frame, l4)?;
    t.dport = be16(frame, l4 + 2)?;
    if t.sport != BGP_PORT && t.dport != BGP_PORT {
        return None;
    }
    let flags = *frame.get(l4 + 13)?;
    let payload = l4 + ((*frame.get(l4 + 12)? >> 4) as usize) * 4;
    let paylen = ip_end.saturating_sub(payload);
    if paylen == 0 && flags & 0x07 == 0 {
        return None;
    }
    let avail = frame.len().saturating_sub(payload);
    let caplen = paylen.min(avail).min(SEG_PAYLOAD);
    let mut e = SegEvent {
        kind: Kind::Bgp as u8,
        dir: outgoing as u8,
        tcp_flags: flags,
        _pad: 0,
        netns: 0,
        ifindex,
        paylen: paylen.min(u16::MAX as usize) as u16,
        caplen: caplen as u16,
        ts: monotonic_ns(),
        tuple: t,
        seq: be32(frame, l4 + 4)?,
        ack: be32(frame, l4 + 8)?,
        ifname: [0; IFNAMSIZ],
        payload: [0; SEG_PAYLOAD],
    };
    let n = ifname.len().min(IFNAMSIZ - 1);
    e.ifname[..n].copy_from_slice(&ifname.as_bytes()[..n]);
    if let Some(bytes) = frame.get(payload..payload + caplen) {
        e.payload[..caplen].copy_from_slice(bytes);
    }
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ethernet + IPv4 + TCP (no options) + payload.
    fn frame(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend(ETH_P_IP.to_be_bytes());
        let total = 20 + 20 + payload.len();
        f.extend([
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0x40,
            0,
            64,
            6,
            0,
            0,
        ]);
        f.extend([192, 0, 2, 2, 192, 0, 2, 1]);
        f.extend(sport.to_be_bytes());
        f.extend(dport.to_be_bytes());
        f.extend(1000u32.to_be_bytes());
        f.extend(2000u32.to_be_bytes());
        f.extend([0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend(payload);
        f
    }

    #[test]
    fn bgp_segments_become_records() {
        let keepalive = [0xffu8; 16]
            .iter()
            .copied()
            .chain([0, 19, 4])
            .collect::<Vec<_>>();
        let e = segment(&frame(40000, 179, 0x18, &keepalive), true, 7, "eth0").unwrap();
        assert_eq!(e.dir, 1);
        assert_eq!((e.tuple.sport, e.tuple.dport), (40000, 179));
        assert_eq!((e.seq, e.ack), (1000, 2000));
        assert_eq!((e.paylen, e.caplen), (19, 19));
        assert_eq!(&e.payload[..19], &keepalive[..]);
        assert_eq!(&e.ifname[..4], b"eth0");
        // A pure ACK says nothing; a SYN does; other ports are not BGP.
        assert!(segment(&frame(179, 40000, 0x10, &[]), false, 7, "eth0").is_none());
        assert!(segment(&frame(179, 40000, 0x12, &[]), false, 7, "eth0").is_some());
        assert!(segment(&frame(40000, 80, 0x18, &keepalive), false, 7, "eth0").is_none());
        // Truncated frames are refused, never read past.
        let f = frame(40000, 179, 0x18, &keepalive);
        for n in 0..f.len() {
            let _ = segment(&f[..n], false, 7, "eth0");
        }
    }

    #[test]
    fn the_filter_is_well_formed() {
        let f = filter();
        for (i, ins) in f.iter().enumerate() {
            // Jumps stay inside the program and it ends in returns.
            if ins.code & 0x07 == 0x05 {
                assert!(i + 1 + (ins.jt.max(ins.jf) as usize) < f.len(), "{i}");
            }
        }
        assert_eq!(f.last().unwrap().code, 0x06);
    }
}
