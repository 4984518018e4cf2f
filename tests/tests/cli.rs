//! What users get wrong and what a killed lbpath leaves: bad input gets one
//! line and exit code 2; a SIGKILLed lbpath leaves no program or link behind.
//! (Its own test binary: no other lbpath runs while programs are counted.)

use std::time::Duration;

use lbpath_tests::{
    bpf, kernel,
    lab::*,
    netns,
    run::{Running, lbpath_bin, run_once},
};

const T: Duration = Duration::from_secs(20);

/// The detach test counts every lbp_ program on the kernel: nothing else in
/// this binary may load one meanwhile.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_line_exit_2(out: &lbpath_tests::run::Finished, expected: &str) {
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {:?}", out.stderr);
    assert!(
        lines[0].starts_with("lbpath: ") && lines[0].contains(expected),
        "{:?}",
        lines[0]
    );
    assert!(!out.stderr.contains("panicked") && !out.stderr.contains("backtrace"));
}

#[test]
fn bad_input_one_line_exit_2() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new("cli", LabSpec::default()).unwrap();
    let node = lab.node();
    one_line_exit_2(
        &run_once(&node, &["watch", "192.0.2.300"], T).unwrap(),
        "'192.0.2.300' is not an IP address",
    );
    one_line_exit_2(
        &run_once(&node, &["watch", "192.0.2.240", "--iface", "nope0"], T).unwrap(),
        "unknown interface 'nope0'",
    );
    one_line_exit_2(
        &run_once(
            &node,
            &["watch", "192.0.2.240", "--client", "10.0.0.0/99"],
            T,
        )
        .unwrap(),
        "is not a CIDR",
    );
    one_line_exit_2(
        &run_once(&node, &["watch", "192.0.2.240", "--proto", "gre"], T).unwrap(),
        "invalid value 'gre' for '--proto",
    );
    one_line_exit_2(
        &run_once(&node, &["watch", "192.0.2.240", "--bogus"], T).unwrap(),
        "unexpected argument",
    );
    one_line_exit_2(
        &run_once(&node, &["diagnose", "192.0.2.240", "--duration", "soon"], T).unwrap(),
        "not a duration",
    );
    // Addresses that can never be a LoadBalancer IP, filters that can never
    // match, windows too short to see anything.
    for (ip, why) in [
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("255.255.255.255", "the broadcast address"),
        ("224.0.0.5", "a multicast address"),
    ] {
        one_line_exit_2(&run_once(&node, &["watch", ip], T).unwrap(), why);
    }
    one_line_exit_2(
        &run_once(
            &node,
            &["watch", "192.0.2.240", "--client", "2001:db8::/64"],
            T,
        )
        .unwrap(),
        "can never match",
    );
    one_line_exit_2(
        &run_once(
            &node,
            &["watch", "192.0.2.240", "--duration", "0.0001ms"],
            T,
        )
        .unwrap(),
        "out of range",
    );

    // No BTF for this kernel.
    let out: lbpath_tests::run::Finished = std::process::Command::new("ip")
        .args(["netns", "exec", &node])
        .arg(lbpath_bin())
        .args(["watch", "192.0.2.240"])
        .env("LBPATH_BTF", "/nonexistent/vmlinux")
        .output()
        .unwrap()
        .into();
    one_line_exit_2(&out, "no kernel BTF at /nonexistent/vmlinux (LBPATH_BTF)");

    // Not root, no capabilities.
    let out: lbpath_tests::run::Finished = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &node,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(lbpath_bin())
        .args(["watch", "192.0.2.240"])
        .output()
        .unwrap()
        .into();
    one_line_exit_2(&out, "needs root");
}

/// Root with every capability, but a seccomp filter (as a container
/// runtime's default profile has) answers bpf() with EPERM: lbpath must say
/// what blocks it, not ask for sudo.
#[test]
fn bpf_blocked_by_seccomp_is_named() {
    use std::os::unix::process::CommandExt;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new("seccomp", LabSpec::default()).unwrap();
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &lab.node()])
        .arg(lbpath_bin())
        .args(["watch", "192.0.2.240"]);
    // SAFETY: only async-signal-safe calls (prctl) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            const BPF_LD_W_ABS: u16 = 0x20;
            const BPF_JEQ_K: u16 = 0x15;
            const BPF_RET_K: u16 = 0x06;
            const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
            let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
            let insns = [
                // Only on x86_64 (arch at offset 4), else allow.
                libc::sock_filter {
                    code: BPF_LD_W_ABS,
                    jt: 0,
                    jf: 0,
                    k: 4,
                },
                libc::sock_filter {
                    code: BPF_JEQ_K,
                    jt: 0,
                    jf: 3,
                    k: AUDIT_ARCH_X86_64,
                },
                // bpf(2) gets EPERM, everything else passes.
                libc::sock_filter {
                    code: BPF_LD_W_ABS,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                libc::sock_filter {
                    code: BPF_JEQ_K,
                    jt: 0,
                    jf: 1,
                    k: libc::SYS_bpf as u32,
                },
                libc::sock_filter {
                    code: BPF_RET_K,
                    jt: 0,
                    jf: 0,
                    k: eperm,
                },
                libc::sock_filter {
                    code: BPF_RET_K,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                },
            ];
            let prog = libc::sock_fprog {
                len: insns.len() as u16,
                filter: insns.as_ptr() as *mut _,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out: lbpath_tests::run::Finished = cmd.output().unwrap().into();
    one_line_exit_2(&out, "seccomp filter blocks it");
    assert!(!out.stderr.contains("sudo"), "{}", out.stderr);
}

#[test]
fn killed_lbpath_leaves_nothing_behind() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new("kill", LabSpec::default()).unwrap();
    assert_eq!(
        bpf::lbpath_programs(),
        0,
        "programs of an earlier run are still loaded"
    );
    let w = Running::watch(&lab.node(), &["192.0.2.240", "--bgp", "--json"]).unwrap();
    // The tracepoint variants this kernel's BTF calls for, and the netfilter
    // and TC programs where the kernel has those links (kernel names are
    // cut at 15 characters).
    let names = bpf::program_names();
    let mut expected = vec![
        "lbp_receive",
        "lbp_xmit",
        "lbp_fib",
        if kernel::has_drop_reasons() {
            "lbp_kfree"
        } else {
            "lbp_kfree_norea"
        },
    ];
    if kernel::has_netfilter_links() {
        expected.extend(["lbp_nf_0", "lbp_nf_1"]);
    }
    if kernel::has_tcx() {
        expected.extend(["lbp_tc_ingress", "lbp_tc_egress"]);
    }
    for p in expected {
        assert!(names.iter().any(|n| n == p), "{p} not loaded: {names:?}");
    }
    // Exactly one variant of each tracepoint.
    assert_eq!(
        names.iter().filter(|n| n.starts_with("lbp_kfree")).count(),
        1,
        "{names:?}"
    );
    netns::http_get(&lab.client(), lab.lb_addr(), Duration::from_secs(3)).unwrap();
    w.kill9().unwrap();
    let gone = netns::wait_for(Duration::from_secs(10), || {
        (bpf::lbpath_programs() == 0).then_some(())
    });
    assert!(
        gone.is_some(),
        "still loaded after SIGKILL: {:?}",
        bpf::program_names()
    );
    // And traffic still flows.
    let body = netns::http_get(&lab.client(), lab.lb_addr(), Duration::from_secs(3)).unwrap();
    assert!(body.contains("hello from pod"));
}
