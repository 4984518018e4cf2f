//! IPVS over generic netlink: the two dumps lbpath asks for
//! (`IPVS_CMD_GET_SERVICE`, `IPVS_CMD_GET_DEST`, both with `NLM_F_DUMP`) and
//! the parsing of the kernel's answers.
//!
//! The attribute layout is `include/uapi/linux/ip_vs.h`; the kernel fills it
//! in `ip_vs_genl_fill_service()` / `ip_vs_genl_fill_dest()`
//! (net/netfilter/ipvs/ip_vs_ctl.c). Requests are built by
//! netlink-packet-generic (the same netlink stack rtnetlink uses); the
//! attributes are parsed here, by pure functions over bytes that the unit
//! tests feed with messages built the way the kernel builds them.
//!
//! Read-only by construction: [`IpvsRequest`] can only be a GET command.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    time::Duration,
};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NLA_F_NESTED, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload, NlaBuffer, NlasIterator, ParseableParametrized,
};
use netlink_packet_generic::{
    GenlFamily, GenlHeader, GenlMessage,
    ctrl::{GenlCtrl, GenlCtrlCmd, nlas::GenlCtrlAttrs},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

use super::{Forward, RealServer, ServiceFlags, Stats, VirtualService};
use crate::kubeproxy::Proto;

/// `IPVS_GENL_NAME`.
pub const FAMILY_NAME: &str = "IPVS";
/// `IPVS_GENL_VERSION`.
const VERSION: u8 = 1;

// Commands (enum in ip_vs.h). Only the GETs are ever sent; NEW_* are what
// the kernel answers a dump with.
const CMD_NEW_SERVICE: u8 = 1;
const CMD_GET_SERVICE: u8 = 4;
const CMD_NEW_DEST: u8 = 5;
const CMD_GET_DEST: u8 = 8;

// First-level attributes (IPVS_CMD_ATTR_*).
const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;

// Service attributes (IPVS_SVC_ATTR_*).
const SVC_AF: u16 = 1;
const SVC_PROTOCOL: u16 = 2;
const SVC_ADDR: u16 = 3;
const SVC_PORT: u16 = 4;
const SVC_FWMARK: u16 = 5;
const SVC_SCHED_NAME: u16 = 6;
const SVC_FLAGS: u16 = 7;
const SVC_TIMEOUT: u16 = 8;
const SVC_NETMASK: u16 = 9;
const SVC_STATS: u16 = 10;
const SVC_PE_NAME: u16 = 11;
const SVC_STATS64: u16 = 12;

// Destination (real server) attributes (IPVS_DEST_ATTR_*).
const DEST_ADDR: u16 = 1;
const DEST_PORT: u16 = 2;
const DEST_FWD_METHOD: u16 = 3;
const DEST_WEIGHT: u16 = 4;
const DEST_U_THRESH: u16 = 5;
const DEST_L_THRESH: u16 = 6;
const DEST_ACTIVE_CONNS: u16 = 7;
const DEST_INACT_CONNS: u16 = 8;
const DEST_PERSIST_CONNS: u16 = 9;
const DEST_STATS: u16 = 10;
const DEST_ADDR_FAMILY: u16 = 11;
const DEST_STATS64: u16 = 12;

// Statistics attributes (IPVS_STATS_ATTR_*): u32 or u64 in STATS, all u64 in
// STATS64.
const STATS_CONNS: u16 = 1;
const STATS_INPKTS: u16 = 2;
const STATS_OUTPKTS: u16 = 3;
const STATS_INBYTES: u16 = 4;
const STATS_OUTBYTES: u16 = 5;

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

/// One IPVS generic-netlink message: its command and its attributes, kept
/// as bytes (see [`parse_service`] and [`parse_dest`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsRequest {
    cmd: u8,
    attrs: Vec<u8>,
}

impl IpvsRequest {
    /// Dump every virtual service.
    pub fn get_services() -> Self {
        Self {
            cmd: CMD_GET_SERVICE,
            attrs: Vec::new(),
        }
    }

    /// Dump the real servers of one service, named as the kernel wants it:
    /// family and fwmark, or family, protocol, address and port.
    pub fn get_dests(svc: &VirtualService) -> Self {
        let mut inner = vec![DefaultNla::new(SVC_AF, svc.family.to_ne_bytes().to_vec())];
        if svc.fwmark != 0 {
            inner.push(DefaultNla::new(
                SVC_FWMARK,
                svc.fwmark.to_ne_bytes().to_vec(),
            ));
        } else {
            let mut addr = [0u8; 16];
            match svc.addr {
                Some(IpAddr::V4(a)) => addr[..4].copy_from_slice(&a.octets()),
                Some(IpAddr::V6(a)) => addr.copy_from_slice(&a.octets()),
                None => {}
            }
            inner.push(DefaultNla::new(
                SVC_PROTOCOL,
                svc.ip_proto.to_ne_bytes().to_vec(),
            ));
            inner.push(DefaultNla::new(SVC_ADDR, addr.to_vec()));
            inner.push(DefaultNla::new(SVC_PORT, svc.port.to_be_bytes().to_vec()));
        }
        let nested = DefaultNla::new(CMD_ATTR_SERVICE | NLA_F_NESTED, emit(&inner.as_slice()));
        Self {
            cmd: CMD_GET_DEST,
            attrs: emit(&nested),
        }
    }

    /// The command byte of the generic netlink header.
    pub fn command(&self) -> u8 {
        self.cmd
    }

    /// The message's attributes, undecoded.
    pub fn attrs(&self) -> &[u8] {
        &self.attrs
    }
}

fn emit<E: Emitable>(e: &E) -> Vec<u8> {
    let mut buf = vec![0u8; e.buffer_len()];
    e.emit(&mut buf);
    buf
}

impl GenlFamily for IpvsRequest {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        VERSION
    }
}

impl Emitable for IpvsRequest {
    fn buffer_len(&self) -> usize {
        self.attrs.len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        buffer[..self.attrs.len()].copy_from_slice(&self.attrs);
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsRequest {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(Self {
            cmd: header.cmd,
            attrs: buf.to_vec(),
        })
    }
}

/// The attributes in `buf` as (type, value), the value borrowed from `buf`.
fn attributes(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), DecodeError>> {
    NlasIterator::new(buf).map(|nla| {
        let nla: NlaBuffer<&[u8]> = nla?;
        let (kind, len) = (nla.kind(), nla.length() as usize);
        // new_checked made sure the header and the length fit.
        Ok((kind, &nla.into_inner()[4..len]))
    })
}

/// The nested attribute `kind` among `attrs`, if present.
fn nested(attrs: &[u8], kind: u16) -> Result<Option<&[u8]>, DecodeError> {
    for a in attributes(attrs) {
        let (k, v) = a?;
        if k == kind {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

fn uint(v: &[u8]) -> Result<u64, DecodeError> {
    match v.len() {
        1 => Ok(v[0] as u64),
        2 => Ok(u16::from_ne_bytes([v[0], v[1]]) as u64),
        4 => Ok(u32::from_ne_bytes(v.try_into().expect("4 bytes")) as u64),
        8 => Ok(u64::from_ne_bytes(v.try_into().expect("8 bytes"))),
        n => Err(DecodeError::from(format!("integer attribute of {n} bytes"))),
    }
}

fn u16_be(v: &[u8]) -> Result<u16, DecodeError> {
    match v {
        [a, b] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(DecodeError::from(format!("port of {} bytes", v.len()))),
    }
}

fn string(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// An `union nf_inet_addr` (16 bytes, an IPv4 address in the first 4).
fn address(af: u16, v: &[u8]) -> Result<IpAddr, DecodeError> {
    match af {
        AF_INET if v.len() >= 4 => Ok(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
        AF_INET6 if v.len() >= 16 => {
            let b: [u8; 16] = v[..16].try_into().expect("16 bytes");
            Ok(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => Err(DecodeError::from(format!(
            "address of {} bytes for family {af}",
            v.len()
        ))),
    }
}

fn stats(v: &[u8]) -> Result<Stats, DecodeError> {
    let mut s = Stats::default();
    for a in attributes(v) {
        let (kind, val) = a?;
        let n = || uint(val);
        match kind {
            STATS_CONNS => s.conns = n()?,
            STATS_INPKTS => s.in_packets = n()?,
            STATS_OUTPKTS => s.out_packets = n()?,
            STATS_INBYTES => s.in_bytes = n()?,
            STATS_OUTBYTES => s.out_bytes = n()?,
            _ => {} // rates and padding
        }
    }
    Ok(s)
}

/// A virtual service from the attributes of an `IPVS_CMD_NEW_SERVICE`
/// message (the top level, holding `IPVS_CMD_ATTR_SERVICE`).
pub fn parse_service(attrs: &[u8]) -> Result<VirtualService, DecodeError> {
    let svc = nested(attrs, CMD_ATTR_SERVICE)?
        .ok_or_else(|| DecodeError::from("no IPVS_CMD_ATTR_SERVICE in a service message"))?;
    let mut v = VirtualService::empty();
    let mut addr = None;
    let mut stats32 = None;
    let mut stats64 = None;
    for a in attributes(svc) {
        let (kind, val) = a?;
        match kind {
            SVC_AF => v.family = uint(val)? as u16,
            SVC_PROTOCOL => v.ip_proto = uint(val)? as u16,
            SVC_ADDR => addr = Some(val),
            SVC_PORT => v.port = u16_be(val)?,
            SVC_FWMARK => v.fwmark = uint(val)? as u32,
            SVC_SCHED_NAME => v.scheduler = string(val),
            SVC_FLAGS => {
                // struct ip_vs_flags { __u32 flags; __u32 mask; }
                let raw = val
                    .get(..4)
                    .ok_or_else(|| DecodeError::from("short IPVS_SVC_ATTR_FLAGS"))?;
                v.flags = ServiceFlags::from_raw(uint(raw)? as u32);
            }
            SVC_TIMEOUT => v.timeout = uint(val)? as u32,
            SVC_NETMASK => v.netmask = uint(val)? as u32,
            SVC_STATS => stats32 = Some(stats(val)?),
            SVC_STATS64 => stats64 = Some(stats(val)?),
            SVC_PE_NAME => v.pe_name = Some(string(val)).filter(|s| !s.is_empty()),
            _ => {}
        }
    }
    if let Some(a) = addr
        && v.fwmark == 0
    {
        v.addr = Some(address(v.family, a)?);
    }
    v.proto = u8::try_from(v.ip_proto).ok().and_then(Proto::from_ip_proto);
    v.stats = stats64.or(stats32).unwrap_or_default();
    Ok(v)
}

/// A real server from the attributes of an `IPVS_CMD_NEW_DEST` message;
/// `svc_family` is the service's, for kernels that do not name the real
/// server's own family (IPVS_DEST_ATTR_ADDR_FAMILY came with 4.3).
pub fn parse_dest(attrs: &[u8], svc_family: u16) -> Result<RealServer, DecodeError> {
    let d = nested(attrs, CMD_ATTR_DEST)?
        .ok_or_else(|| DecodeError::from("no IPVS_CMD_ATTR_DEST in a destination message"))?;
    let mut family = svc_family;
    let mut addr = None;
    let mut r = RealServer {
        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        port: 0,
        forward: Forward::Masq,
        weight: 0,
        upper_threshold: 0,
        lower_threshold: 0,
        active_conns: 0,
        inactive_conns: 0,
        persistent_conns: 0,
        stats: Stats::default(),
    };
    let mut stats32 = None;
    let mut stats64 = None;
    for a in attributes(d) {
        let (kind, val) = a?;
        match kind {
            DEST_ADDR => addr = Some(val),
            DEST_PORT => r.port = u16_be(val)?,
            DEST_FWD_METHOD => r.forward = Forward::from_raw(uint(val)? as u32),
            DEST_WEIGHT => r.weight = uint(val)? as u32,
            DEST_U_THRESH => r.upper_threshold = uint(val)? as u32,
            DEST_L_THRESH => r.lower_threshold = uint(val)? as u32,
            DEST_ACTIVE_CONNS => r.active_conns = uint(val)? as u32,
            DEST_INACT_CONNS => r.inactive_conns = uint(val)? as u32,
            DEST_PERSIST_CONNS => r.persistent_conns = uint(val)? as u32,
            DEST_STATS => stats32 = Some(stats(val)?),
            DEST_STATS64 => stats64 = Some(stats(val)?),
            DEST_ADDR_FAMILY => family = uint(val)? as u16,
            _ => {}
        }
    }
    let a = addr.ok_or_else(|| DecodeError::from("real server without an address"))?;
    r.addr = address(family, a)?;
    r.stats = stats64.or(stats32).unwrap_or_default();
    Ok(r)
}

/// A generic netlink socket talking to the IPVS family of the calling
/// thread's network namespace.
pub struct Conn {
    sock: Socket,
    family_id: u16,
    seq: u32,
}

/// How long a dump may stay silent before it is given up.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

impl Conn {
    /// Opens the socket and resolves the IPVS family; `Ok(None)` when the
    /// kernel has no such family. Beware: on 5.16+ kernels the lookup
    /// itself loads ip_vs when it can (MODULE_ALIAS_GENL_FAMILY), so check
    /// that IPVS is loaded before calling this.
    pub fn open() -> io::Result<Option<Self>> {
        let mut sock = Socket::new(NETLINK_GENERIC)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        set_recv_timeout(&sock, RECV_TIMEOUT)?;
        let mut conn = Self {
            sock,
            family_id: 0,
            seq: 0,
        };
        let mut msg = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY_NAME.into())],
        });
        msg.finalize();
        let mut id = None;
        let res = conn.exchange(msg, NLM_F_REQUEST, |m: GenlMessage<GenlCtrl>| {
            for a in m.payload.nlas {
                if let GenlCtrlAttrs::FamilyId(i) = a {
                    id = Some(i);
                }
            }
            Ok(())
        });
        match res {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        }
        Ok(id.map(|family_id| Self { family_id, ..conn }))
    }

    /// Runs one dump and returns every answer's attributes.
    pub fn dump(&mut self, req: IpvsRequest) -> io::Result<Vec<IpvsRequest>> {
        debug_assert!(matches!(req.cmd, CMD_GET_SERVICE | CMD_GET_DEST));
        let mut msg = GenlMessage::from_payload(req);
        msg.set_resolved_family_id(self.family_id);
        msg.finalize();
        let mut out = Vec::new();
        self.exchange(
            msg,
            NLM_F_REQUEST | NLM_F_DUMP,
            |m: GenlMessage<IpvsRequest>| {
                if matches!(m.payload.cmd, CMD_NEW_SERVICE | CMD_NEW_DEST) {
                    out.push(m.payload);
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Sends `msg` and feeds each answer to `each` until the kernel is done
    /// (NLMSG_DONE for a dump, the answer or an error otherwise).
    fn exchange<F>(
        &mut self,
        msg: GenlMessage<F>,
        flags: u16,
        mut each: impl FnMut(GenlMessage<F>) -> io::Result<()>,
    ) -> io::Result<()>
    where
        F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = flags;
        nl.header.sequence_number = seq;
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let dump = flags & NLM_F_DUMP != 0;
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            if data.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "netlink socket closed",
                ));
            }
            let mut off = 0;
            while off < data.len() {
                let m = NetlinkMessage::<GenlMessage<F>>::deserialize(&data[off..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = m.header.length as usize;
                if m.header.sequence_number == seq {
                    match m.payload {
                        NetlinkPayload::Done(_) => return Ok(()),
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(()), // an ACK
                                Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            };
                        }
                        NetlinkPayload::InnerMessage(inner) => {
                            each(inner)?;
                            if !dump {
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += len.next_multiple_of(4);
            }
        }
    }
}

fn set_recv_timeout(sock: &Socket, t: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as _,
        tv_usec: t.subsec_micros() as _,
    };
    // SAFETY: a valid socket and a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    //! Messages built the way ip_vs_ctl.c builds them (attribute order,
    //! sizes, nesting), since the parser must read what the kernel writes.

    use super::*;
    use netlink_packet_core::{NetlinkDeserializable, NetlinkHeader};

    fn nla(kind: u16, value: &[u8]) -> DefaultNla {
        DefaultNla::new(kind, value.to_vec())
    }

    fn nest(kind: u16, inner: &[DefaultNla]) -> DefaultNla {
        DefaultNla::new(kind | NLA_F_NESTED, emit(&inner))
    }

    fn addr16(ip: [u8; 4]) -> Vec<u8> {
        let mut a = vec![0u8; 16];
        a[..4].copy_from_slice(&ip);
        a
    }

    /// ip_vs_genl_fill_stats64: every counter a u64, with padding attributes.
    fn stats64(conns: u64, inpkts: u64) -> Vec<DefaultNla> {
        vec![
            nla(STATS_CONNS, &conns.to_ne_bytes()),
            nla(STATS_INPKTS, &inpkts.to_ne_bytes()),
            nla(STATS_OUTPKTS, &(inpkts - 1).to_ne_bytes()),
            nla(STATS_INBYTES, &1234u64.to_ne_bytes()),
            nla(STATS_OUTBYTES, &5678u64.to_ne_bytes()),
            nla(6, &0u64.to_ne_bytes()), // CPS
            nla(11, &[]),                // PAD
        ]
    }

    /// ip_vs_genl_fill_stats: conns and packets are u32 there.
    fn stats32(conns: u32) -> Vec<DefaultNla> {
        vec![
            nla(STATS_CONNS, &conns.to_ne_bytes()),
            nla(STATS_INPKTS, &7u32.to_ne_bytes()),
            nla(STATS_OUTPKTS, &6u32.to_ne_bytes()),
            nla(STATS_INBYTES, &100u64.to_ne_bytes()),
            nla(STATS_OUTBYTES, &200u64.to_ne_bytes()),
        ]
    }

    fn service_attrs(
        ip: [u8; 4],
        port: u16,
        proto: u16,
        sched: &str,
        flags: u32,
        timeout: u32,
    ) -> Vec<u8> {
        let mut flag_bytes = flags.to_ne_bytes().to_vec();
        flag_bytes.extend(u32::MAX.to_ne_bytes());
        let mut sched_z = sched.as_bytes().to_vec();
        sched_z.push(0);
        let svc = nest(
            CMD_ATTR_SERVICE,
            &[
                nla(SVC_AF, &AF_INET.to_ne_bytes()),
                nla(SVC_PROTOCOL, &proto.to_ne_bytes()),
                nla(SVC_ADDR, &addr16(ip)),
                nla(SVC_PORT, &port.to_be_bytes()),
                nla(SVC_SCHED_NAME, &sched_z),
                nla(SVC_FLAGS, &flag_bytes),
                nla(SVC_TIMEOUT, &timeout.to_ne_bytes()),
                nla(SVC_NETMASK, &u32::MAX.to_ne_bytes()),
                nest(SVC_STATS, &stats32(3)),
                nest(SVC_STATS64, &stats64(3, 20)),
            ],
        );
        emit(&svc)
    }

    /// A whole netlink datagram as the kernel sends it for a dump.
    fn datagram(family: u16, cmd: u8, attrs: &[u8], seq: u32) -> Vec<u8> {
        let mut msg = GenlMessage::from_parts(
            GenlHeader { cmd, version: 1 },
            IpvsRequest {
                cmd,
                attrs: attrs.to_vec(),
            },
        );
        msg.set_resolved_family_id(family);
        let mut nl = NetlinkMessage::from(msg);
        nl.header.sequence_number = seq;
        nl.header.flags = 2; // NLM_F_MULTI
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        buf
    }

    #[test]
    fn service_with_persistence_and_stats() {
        let attrs = service_attrs([192, 0, 2, 240], 80, 6, "rr", 0x0001 | 0x0002, 10800);
        let v = parse_service(&attrs).unwrap();
        assert_eq!(v.family, AF_INET);
        assert_eq!(v.addr, Some("192.0.2.240".parse().unwrap()));
        assert_eq!((v.port, v.proto, v.ip_proto), (80, Some(Proto::Tcp), 6));
        assert_eq!(v.scheduler, "rr");
        assert!(v.flags.persistent && v.flags.hashed && !v.flags.one_packet);
        assert!(v.persistent());
        assert_eq!(v.timeout, 10800);
        assert_eq!(v.fwmark, 0);
        // STATS64 wins over the 32-bit block.
        assert_eq!((v.stats.conns, v.stats.in_packets), (3, 20));
        assert_eq!((v.stats.in_bytes, v.stats.out_bytes), (1234, 5678));
    }

    #[test]
    fn old_kernels_only_send_32_bit_stats() {
        let svc = nest(
            CMD_ATTR_SERVICE,
            &[
                nla(SVC_AF, &AF_INET.to_ne_bytes()),
                nla(SVC_PROTOCOL, &17u16.to_ne_bytes()),
                nla(SVC_ADDR, &addr16([10, 96, 0, 10])),
                nla(SVC_PORT, &53u16.to_be_bytes()),
                nla(SVC_SCHED_NAME, b"wrr\0"),
                nest(SVC_STATS, &stats32(9)),
            ],
        );
        let v = parse_service(&emit(&svc)).unwrap();
        assert_eq!(v.proto, Some(Proto::Udp));
        assert_eq!(v.scheduler, "wrr");
        assert_eq!(
            (v.stats.conns, v.stats.in_packets, v.stats.in_bytes),
            (9, 7, 100)
        );
        assert!(!v.persistent());
    }

    #[test]
    fn fwmark_service_has_no_address() {
        let svc = nest(
            CMD_ATTR_SERVICE,
            &[
                nla(SVC_AF, &AF_INET.to_ne_bytes()),
                nla(SVC_PROTOCOL, &0u16.to_ne_bytes()),
                nla(SVC_ADDR, &[0u8; 16]),
                nla(SVC_PORT, &0u16.to_be_bytes()),
                nla(SVC_FWMARK, &42u32.to_ne_bytes()),
                nla(SVC_SCHED_NAME, b"sh\0"),
            ],
        );
        let v = parse_service(&emit(&svc)).unwrap();
        assert_eq!((v.fwmark, v.addr, v.proto), (42, None, None));
    }

    #[test]
    fn ipv6_service() {
        let ip: Ipv6Addr = "2001:db8::f0".parse().unwrap();
        let svc = nest(
            CMD_ATTR_SERVICE,
            &[
                nla(SVC_AF, &AF_INET6.to_ne_bytes()),
                nla(SVC_PROTOCOL, &132u16.to_ne_bytes()),
                nla(SVC_ADDR, &ip.octets()),
                nla(SVC_PORT, &443u16.to_be_bytes()),
                nla(SVC_SCHED_NAME, b"mh\0"),
                nla(SVC_PE_NAME, b"sip\0"),
            ],
        );
        let v = parse_service(&emit(&svc)).unwrap();
        assert_eq!(v.addr, Some(IpAddr::V6(ip)));
        assert_eq!((v.port, v.proto), (443, Some(Proto::Sctp)));
        assert_eq!(v.pe_name.as_deref(), Some("sip"));
    }

    #[test]
    fn real_servers() {
        let dest = |fwd: u32, family: Option<u16>| {
            let mut a = vec![
                nla(DEST_ADDR, &addr16([10, 244, 1, 5])),
                nla(DEST_PORT, &8080u16.to_be_bytes()),
                nla(DEST_FWD_METHOD, &fwd.to_ne_bytes()),
                nla(DEST_WEIGHT, &1u32.to_ne_bytes()),
                nla(DEST_U_THRESH, &0u32.to_ne_bytes()),
                nla(DEST_L_THRESH, &0u32.to_ne_bytes()),
                nla(DEST_ACTIVE_CONNS, &2u32.to_ne_bytes()),
                nla(DEST_INACT_CONNS, &5u32.to_ne_bytes()),
                nla(DEST_PERSIST_CONNS, &0u32.to_ne_bytes()),
                nest(DEST_STATS, &stats32(7)),
                nest(DEST_STATS64, &stats64(7, 30)),
            ];
            if let Some(f) = family {
                a.push(nla(DEST_ADDR_FAMILY, &f.to_ne_bytes()));
            }
            emit(&nest(CMD_ATTR_DEST, &a))
        };
        let r = parse_dest(&dest(0, Some(AF_INET)), AF_INET).unwrap();
        assert_eq!(r.addr, "10.244.1.5".parse::<IpAddr>().unwrap());
        assert_eq!((r.port, r.forward, r.weight), (8080, Forward::Masq, 1));
        assert_eq!((r.active_conns, r.inactive_conns), (2, 5));
        assert_eq!((r.stats.conns, r.stats.in_packets), (7, 30));
        // Before 4.3 there is no family of its own: the service's applies.
        let r = parse_dest(&dest(2, None), AF_INET).unwrap();
        assert_eq!(r.forward, Forward::Tunnel);
        assert_eq!(
            parse_dest(&dest(3, None), AF_INET).unwrap().forward,
            Forward::DirectRouting
        );
        assert_eq!(
            parse_dest(&dest(6, None), AF_INET).unwrap().forward,
            Forward::Other(6)
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert!(parse_service(&[]).is_err());
        assert!(parse_dest(&[], AF_INET).is_err());
        // A port of three bytes.
        let bad = emit(&nest(
            CMD_ATTR_SERVICE,
            &[
                nla(SVC_AF, &AF_INET.to_ne_bytes()),
                nla(SVC_PORT, &[0, 80, 0]),
            ],
        ));
        assert!(parse_service(&bad).is_err());
        // A truncated attribute header.
        let mut cut = service_attrs([192, 0, 2, 240], 80, 6, "rr", 0, 0);
        cut.truncate(30);
        assert!(parse_service(&cut).is_err());
        // An IPv4 address shorter than 4 bytes.
        let bad = emit(&nest(
            CMD_ATTR_DEST,
            &[
                nla(DEST_ADDR, &[10, 244]),
                nla(DEST_PORT, &80u16.to_be_bytes()),
            ],
        ));
        assert!(parse_dest(&bad, AF_INET).is_err());
    }

    #[test]
    fn requests_are_gets_with_the_service_key() {
        let mut svc = VirtualService::empty();
        svc.family = AF_INET;
        svc.ip_proto = 6;
        svc.addr = Some("192.0.2.240".parse().unwrap());
        svc.port = 80;
        let req = IpvsRequest::get_dests(&svc);
        assert_eq!(req.command(), CMD_GET_DEST);
        assert_eq!(IpvsRequest::get_services().command(), CMD_GET_SERVICE);
        // The key reads back as the same service (the kernel parses it with
        // the service policy).
        let back = parse_service(&req.attrs).unwrap();
        assert_eq!(back.addr, svc.addr);
        assert_eq!((back.port, back.ip_proto, back.family), (80, 6, AF_INET));
        let first = NlasIterator::new(&req.attrs[..]).next().unwrap().unwrap();
        assert!(first.nested_flag(), "the service key is a nested attribute");
        // A fwmark service is named by its mark.
        svc.fwmark = 7;
        let back = parse_service(&IpvsRequest::get_dests(&svc).attrs).unwrap();
        assert_eq!((back.fwmark, back.addr), (7, None));
    }

    #[test]
    fn whole_datagrams_decode() {
        let attrs = service_attrs([192, 0, 2, 240], 80, 6, "rr", 0, 0);
        let mut two = datagram(0x23, CMD_NEW_SERVICE, &attrs, 9);
        two.extend(datagram(0x23, CMD_NEW_SERVICE, &attrs, 9));
        let first = NetlinkMessage::<GenlMessage<IpvsRequest>>::deserialize(&two).unwrap();
        let len = first.header.length as usize;
        assert_eq!(first.header.message_type, 0x23);
        let NetlinkPayload::InnerMessage(m) = first.payload else {
            panic!("not a family message");
        };
        assert_eq!(m.header.cmd, CMD_NEW_SERVICE);
        assert_eq!(parse_service(&m.payload.attrs).unwrap().port, 80);
        let second = NetlinkMessage::<GenlMessage<IpvsRequest>>::deserialize(&two[len..]).unwrap();
        assert!(matches!(second.payload, NetlinkPayload::InnerMessage(_)));
        // The payload type parses through the trait netlink-proto would use.
        let mut h = NetlinkHeader::default();
        h.message_type = 0x23;
        let g = GenlMessage::<IpvsRequest>::deserialize(&h, &two[16..len]).unwrap();
        assert_eq!(g.payload.cmd, CMD_NEW_SERVICE);
    }
}
