//! Doing things inside a network namespace from this process: commands via
//! `ip netns exec`, and threads that enter a namespace (setns only moves the
//! calling thread) to run servers, clients and the ARP responder.

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Runs a command, failing with its stderr when it fails.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    check(args, out)
}

fn check(args: &[&str], out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside namespace `ns`.
pub fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    sh(&full)
}

/// Runs a command inside `ns` with `stdin` as its input.
pub fn in_ns_stdin(ns: &str, args: &[&str], stdin: &str) -> Result<String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} in {ns}", args.join(" ")))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    check(args, out)
}

/// Moves the calling thread into namespace `ns`.
pub fn enter(ns: &str) -> Result<()> {
    let f =
        File::open(format!("/run/netns/{ns}")).with_context(|| format!("opening netns {ns}"))?;
    // SAFETY: a valid namespace fd; only this thread changes namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a fresh thread inside `ns` and returns its result.
pub fn run_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {} panicked", "netns"))?
}

/// A background thread inside a namespace, stopped when dropped.
pub struct Background {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// Work done (connections served, ARP replies sent ...).
    pub count: Arc<AtomicU64>,
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn background(
    ns: &str,
    setup: impl FnOnce() -> Result<Box<dyn FnMut(&AtomicU64) + Send>> + Send + 'static,
) -> Result<Background> {
    let ns = ns.to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let (s2, c2) = (stop.clone(), count.clone());
    let handle = std::thread::spawn(move || {
        let step = enter(&ns).and_then(|_| setup());
        match step {
            Ok(mut step) => {
                let _ = tx.send(Ok(()));
                while !s2.load(Ordering::Relaxed) {
                    step(&c2);
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    rx.recv().context("background thread died")??;
    Ok(Background {
        stop,
        handle: Some(handle),
        count,
    })
}

/// A TCP server answering every connection with a short HTTP response.
pub fn http_server(ns: &str, addr: SocketAddr, body: &str) -> Result<Background> {
    let body = body.to_string();
    background(ns, move || {
        let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        l.set_nonblocking(true)?;
        Ok(Box::new(move |n: &AtomicU64| match l.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let resp = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes());
                n.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }))
    })
}

/// A TCP server that reads and discards everything (bulk transfer sink).
pub fn sink_server(ns: &str, addr: SocketAddr) -> Result<Background> {
    background(ns, move || {
        let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        l.set_nonblocking(true)?;
        Ok(Box::new(move |n: &AtomicU64| match l.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(k) = s.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    n.fetch_add(k as u64, Ordering::Relaxed);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }))
    })
}

/// Sends `bytes` over one TCP connection from `ns`; the time it took.
pub fn bulk_send(ns: &str, addr: SocketAddr, bytes: usize) -> Result<Duration> {
    run_in(ns, move || {
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        let chunk = vec![0u8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            let k = left.min(chunk.len());
            s.write_all(&chunk[..k])?;
            left -= k;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        let mut b = [0u8; 1];
        let _ = s.read(&mut b);
        Ok(t.elapsed())
    })
}

/// One TCP connection from `ns`: sends `warm` bytes, waits `pause`, then
/// times sending `bytes` more (a long-lived stream's steady state).
pub fn stream_send(
    ns: &str,
    addr: SocketAddr,
    warm: usize,
    pause: Duration,
    bytes: usize,
) -> Result<Duration> {
    run_in(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        let chunk = vec![0u8; 1 << 16];
        let send = |s: &mut TcpStream, n: usize| -> Result<()> {
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk.len());
                s.write_all(&chunk[..k])?;
                left -= k;
            }
            Ok(())
        };
        send(&mut s, warm)?;
        std::thread::sleep(pause);
        let t = Instant::now();
        send(&mut s, bytes)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut b = [0u8; 1];
        let _ = s.read(&mut b);
        Ok(t.elapsed())
    })
}

/// A UDP server echoing datagrams (or silent, to play a pod that never answers).
pub fn udp_server(ns: &str, addr: SocketAddr, answer: bool) -> Result<Background> {
    background(ns, move || {
        let s = UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(Box::new(move |n: &AtomicU64| {
            let mut buf = [0u8; 2048];
            if let Ok((len, from)) = s.recv_from(&mut buf) {
                n.fetch_add(1, Ordering::Relaxed);
                if answer {
                    let _ = s.send_to(&buf[..len], from);
                }
            }
        }))
    })
}

/// An HTTP GET from inside `ns`; the response body, or the error.
pub fn http_get(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<String> {
    run_in(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

/// A TCP connection that sends `n` bytes (to test MTU on the data path).
pub fn tcp_send(ns: &str, addr: SocketAddr, n: usize, timeout: Duration) -> Result<()> {
    run_in(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_write_timeout(Some(timeout))?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(&vec![b'x'; n])?;
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        Ok(())
    })
}

/// Sends one UDP datagram from `ns` and waits for an answer.
pub fn udp_ask(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<Vec<u8>> {
    run_in(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(timeout))?;
        s.send_to(b"ping", addr)?;
        let mut buf = [0u8; 2048];
        let (len, _) = s.recv_from(&mut buf)?;
        Ok(buf[..len].to_vec())
    })
}

fn ifindex(name: &str) -> Result<i32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        bail!("no interface {name}");
    }
    Ok(i as i32)
}

const ETH_P_ARP: u16 = 0x0806;

/// Answers ARP requests for `ips` on `iface` with `mac`, as a MetalLB speaker
/// does in L2 mode (the IP is not configured on any interface).
pub fn arp_responder(
    ns: &str,
    iface: &str,
    mac: [u8; 6],
    ips: Vec<Ipv4Addr>,
) -> Result<Background> {
    let iface = iface.to_string();
    background(ns, move || {
        let idx = ifindex(&iface)?;
        // SAFETY: plain socket call.
        let fd =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (ETH_P_ARP).to_be() as i32) };
        if fd < 0 {
            bail!("packet socket: {}", std::io::Error::last_os_error());
        }
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ARP.to_be();
        sll.sll_ifindex = idx;
        // SAFETY: sll is a valid sockaddr_ll.
        if unsafe {
            libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as u32,
            )
        } != 0
        {
            bail!("bind packet socket: {}", std::io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: valid option pointer and length.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                size_of::<libc::timeval>() as u32,
            );
        }
        let fd = Fd(fd);
        Ok(Box::new(move |n: &AtomicU64| {
            let mut buf = [0u8; 128];
            // SAFETY: buffer of the given length.
            let len = unsafe {
                libc::recv(
                    fd.raw(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if len < 42 {
                return;
            }
            let a = &buf[14..42];
            let op = u16::from_be_bytes([a[6], a[7]]);
            let tpa = Ipv4Addr::new(a[24], a[25], a[26], a[27]);
            if op != 1 || !ips.contains(&tpa) {
                return;
            }
            let (sha, spa) = (&a[8..14], &a[14..18]);
            let mut r = Vec::with_capacity(42);
            r.extend_from_slice(sha); // to the requester
            r.extend_from_slice(&mac);
            r.extend_from_slice(&ETH_P_ARP.to_be_bytes());
            r.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
            r.extend_from_slice(&mac);
            r.extend_from_slice(&tpa.octets());
            r.extend_from_slice(sha);
            r.extend_from_slice(spa);
            // SAFETY: buffer of the given length, socket bound to the interface.
            unsafe { libc::send(fd.raw(), r.as_ptr() as *const libc::c_void, r.len(), 0) };
            n.fetch_add(1, Ordering::Relaxed);
        }))
    })
}

/// Sends gratuitous ARP for `ip` from `mac` (a speaker taking over an IP).
pub fn gratuitous_arp(ns: &str, iface: &str, mac: [u8; 6], ip: Ipv4Addr) -> Result<()> {
    send_arp(ns, iface, mac, 2, ip, [0xff; 6], ip)
}

/// Asks who has `target`, from `sender` (like arping).
pub fn arp_request(
    ns: &str,
    iface: &str,
    mac: [u8; 6],
    sender: Ipv4Addr,
    target: Ipv4Addr,
) -> Result<()> {
    send_arp(ns, iface, mac, 1, sender, [0; 6], target)
}

fn send_arp(
    ns: &str,
    iface: &str,
    mac: [u8; 6],
    op: u16,
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
) -> Result<()> {
    let iface = iface.to_string();
    run_in(ns, move || {
        let idx = ifindex(&iface)?;
        // SAFETY: plain socket call.
        let fd = Fd(unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (ETH_P_ARP).to_be() as i32)
        });
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ARP.to_be();
        sll.sll_ifindex = idx;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let mut r = Vec::with_capacity(42);
        r.extend_from_slice(&[0xff; 6]);
        r.extend_from_slice(&mac);
        r.extend_from_slice(&ETH_P_ARP.to_be_bytes());
        r.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
        r.extend_from_slice(&op.to_be_bytes());
        r.extend_from_slice(&mac);
        r.extend_from_slice(&spa.octets());
        r.extend_from_slice(&tha);
        r.extend_from_slice(&tpa.octets());
        send_to(&fd, &r, &sll).context("sending ARP")?;
        Ok(())
    })
}

/// sendto(2) on a raw or packet socket, to a sockaddr_in / sockaddr_ll.
fn send_to<A>(fd: &Fd, buf: &[u8], addr: &A) -> std::io::Result<()> {
    // SAFETY: valid buffer, and `addr` is a complete sockaddr of its size.
    let n = unsafe {
        libc::sendto(
            fd.raw(),
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            0,
            addr as *const A as *const libc::sockaddr,
            size_of::<A>() as u32,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

struct Fd(i32);

impl Fd {
    /// Through a method, so closures capture the whole guard (not just the
    /// integer, which would let the guard close the socket early).
    fn raw(&self) -> i32 {
        self.0
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn csum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one bare TCP segment (e.g. an ACK for a connection that does not
/// exist) from `src` to `dst` through a raw socket inside `ns`.
pub fn tcp_segment(ns: &str, src: SocketAddr, dst: SocketAddr, flags: u8) -> Result<()> {
    let (SocketAddr::V4(s4), SocketAddr::V4(d4)) = (src, dst) else {
        bail!("IPv4 only");
    };
    run_in(ns, move || {
        let mut seg = vec![0u8; 20];
        seg[0..2].copy_from_slice(&s4.port().to_be_bytes());
        seg[2..4].copy_from_slice(&d4.port().to_be_bytes());
        seg[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        seg[8..12].copy_from_slice(&0x0bad_cafeu32.to_be_bytes());
        seg[12] = 5 << 4;
        seg[13] = flags;
        seg[14..16].copy_from_slice(&64240u16.to_be_bytes());
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&s4.ip().octets());
        pseudo.extend_from_slice(&d4.ip().octets());
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        let mut sum = 0u32;
        for c in pseudo.chunks(2) {
            sum += u16::from_be_bytes([c[0], c[1]]) as u32;
        }
        let c = csum(&seg, sum);
        seg[16..18].copy_from_slice(&c.to_be_bytes());
        // SAFETY: plain socket calls with valid buffers.
        let fd = Fd(unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) });
        if fd.raw() < 0 {
            bail!("raw socket: {}", std::io::Error::last_os_error());
        }
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(d4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        send_to(&fd, &seg, &sa).context("sending the TCP segment")?;
        Ok(())
    })
}

/// One iperf3 run's result.
#[derive(Debug, Clone, Copy)]
pub struct Iperf {
    /// What the receiver got, bits per second.
    pub bits_per_second: f64,
    /// Bytes sent, the whole run.
    pub bytes: u64,
}

/// `iperf3 -c addr -t secs` from `ns` (one TCP stream; a server must listen).
pub fn iperf3(ns: &str, addr: SocketAddr, secs: u32) -> Result<Iperf> {
    let (ip, port, t) = (
        addr.ip().to_string(),
        addr.port().to_string(),
        secs.to_string(),
    );
    let out = in_ns(ns, &["iperf3", "-c", &ip, "-p", &port, "-t", &t, "-J"])?;
    parse_iperf3(&out)
}

fn parse_iperf3(json: &str) -> Result<Iperf> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 -J output")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {e}");
    }
    let end = &v["end"];
    let bits_per_second = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3: no end.sum_received.bits_per_second")?;
    let bytes = end["sum_sent"]["bytes"]
        .as_u64()
        .context("iperf3: no end.sum_sent.bytes")?;
    Ok(Iperf {
        bits_per_second,
        bytes,
    })
}

/// `n` short TCP connections from `ns` to `addr` on `threads` threads, each
/// an HTTP GET read to the end: the local ports of those that completed,
/// and how many failed.
pub fn connect_burst(
    ns: &str,
    addr: SocketAddr,
    n: usize,
    threads: usize,
) -> Result<(Vec<u16>, usize)> {
    let per = n.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let ns = ns.to_string();
            let count = per.min(n.saturating_sub(t * per));
            std::thread::spawn(move || -> Result<(Vec<u16>, usize)> {
                enter(&ns)?;
                let mut ports = Vec::with_capacity(count);
                let mut failed = 0;
                for _ in 0..count {
                    let one = || -> std::io::Result<u16> {
                        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
                        s.set_read_timeout(Some(Duration::from_secs(3)))?;
                        let port = s.local_addr()?.port();
                        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                        let mut sink = Vec::new();
                        s.read_to_end(&mut sink)?;
                        Ok(port)
                    };
                    match one() {
                        Ok(p) => ports.push(p),
                        Err(_) => failed += 1,
                    }
                }
                Ok((ports, failed))
            })
        })
        .collect();
    let mut ports = Vec::with_capacity(n);
    let mut failed = 0;
    for h in handles {
        let (p, f) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a burst thread panicked"))??;
        ports.extend(p);
        failed += f;
    }
    Ok((ports, failed))
}

/// TCP SYNs from `src` (an address of `ns`), one per source port
/// `first_port..first_port + n`, to `dst`, paced at `rate` a second: each
/// one a new flow the far end answers (SYN-ACK) and `ns` resets, all in the
/// kernel. Returns how long sending took.
pub fn syn_flood(
    ns: &str,
    src: Ipv4Addr,
    first_port: u16,
    n: u16,
    dst: SocketAddr,
    rate: u32,
) -> Result<Duration> {
    let SocketAddr::V4(d4) = dst else {
        bail!("IPv4 only");
    };
    if u32::from(first_port) + u32::from(n) > 65536 {
        bail!("source ports {first_port}+{n} run past 65535");
    }
    run_in(ns, move || {
        // SAFETY: plain socket call, checked.
        let fd = Fd(unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) });
        if fd.raw() < 0 {
            bail!("raw socket: {}", std::io::Error::last_os_error());
        }
        // Sent from `src`, not the address routing would pick: the
        // checksum covers it, and a wrong one makes conntrack drop the SYN.
        let from = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(src.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: a valid address of the size given.
        let bound = unsafe {
            libc::bind(
                fd.raw(),
                &from as *const libc::sockaddr_in as *const libc::sockaddr,
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if bound != 0 {
            bail!("binding to {src}: {}", std::io::Error::last_os_error());
        }
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(d4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let segment = |sport: u16| -> [u8; 20] {
            let mut seg = [0u8; 20];
            seg[0..2].copy_from_slice(&sport.to_be_bytes());
            seg[2..4].copy_from_slice(&d4.port().to_be_bytes());
            seg[4..8].copy_from_slice(&(0x1000_0000u32 + u32::from(sport)).to_be_bytes());
            seg[12] = 5 << 4;
            seg[13] = 0x02; // SYN
            seg[14..16].copy_from_slice(&64240u16.to_be_bytes());
            let mut sum = 0u32;
            for c in src.octets().chunks(2).chain(d4.ip().octets().chunks(2)) {
                sum += u16::from_be_bytes([c[0], c[1]]) as u32;
            }
            sum += 6 + 20;
            let c = csum(&seg, sum);
            seg[16..18].copy_from_slice(&c.to_be_bytes());
            seg
        };
        // Batches of 64 a tick, ticks spaced for the rate.
        const BATCH: u16 = 64;
        let tick = Duration::from_secs_f64(f64::from(BATCH) / f64::from(rate.max(1)));
        let start = Instant::now();
        let mut sent: u16 = 0;
        let mut batch = 0u32;
        while sent < n {
            let k = BATCH.min(n - sent);
            let mut segs: Vec<[u8; 20]> = (0..k).map(|i| segment(first_port + sent + i)).collect();
            let mut iov: Vec<libc::iovec> = segs
                .iter_mut()
                .map(|s| libc::iovec {
                    iov_base: s.as_mut_ptr() as *mut libc::c_void,
                    iov_len: s.len(),
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iov
                .iter_mut()
                .map(|v| {
                    // SAFETY: all-zero is a valid msghdr.
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_name = &sa as *const libc::sockaddr_in as *mut libc::c_void;
                    m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
                    m.msg_hdr.msg_iov = v as *mut libc::iovec;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            let mut done = 0usize;
            while done < msgs.len() {
                // SAFETY: valid messages pointing at live buffers and address.
                let r = unsafe {
                    libc::sendmmsg(
                        fd.raw(),
                        msgs[done..].as_mut_ptr(),
                        (msgs.len() - done) as u32,
                        0,
                    )
                };
                if r < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::ENOBUFS) {
                        std::thread::sleep(Duration::from_micros(200));
                        continue;
                    }
                    bail!("sending SYNs: {e}");
                }
                done += r as usize;
            }
            sent += k;
            batch += 1;
            let due = start + tick * batch;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        Ok(start.elapsed())
    })
}

/// Conntrack entries in `ns` now (`conntrack -C`). Not `conntrack -S`'s
/// `insert=`: recent kernels print it but no longer count it.
pub fn conntrack_entries(ns: &str) -> Result<u64> {
    let out = in_ns(ns, &["conntrack", "-C"])?;
    out.trim()
        .parse()
        .with_context(|| format!("conntrack -C printed {out:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_json_is_read() {
        let ok = r#"{"start":{},"end":{"sum_sent":{"bytes":1000,"bits_per_second":8000.0},"sum_received":{"bytes":990,"bits_per_second":7920.5}}}"#;
        let r = parse_iperf3(ok).unwrap();
        assert_eq!(r.bytes, 1000);
        assert_eq!(r.bits_per_second, 7920.5);
        let err =
            r#"{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}"#;
        assert!(
            parse_iperf3(err)
                .unwrap_err()
                .to_string()
                .contains("Connection refused")
        );
        assert!(parse_iperf3("not json").is_err());
    }
}
