//! Naming a drop. From 5.17 `kfree_skb` carries the kernel's own reason
//! (`enum skb_drop_reason`, named from BTF). Before that there is only the
//! address it was called from: like dropwatch, lbpath resolves it through
//! `/proc/kallsyms` to the function that freed the packet, and maps the
//! functions that drop for one clear cause to the name a newer kernel
//! would give that cause, so the path logic speaks one language.

use std::{
    cell::RefCell,
    collections::HashMap,
    io::{BufRead, BufReader},
};

use tracer_common::Event;

use crate::btf::EnumNames;

/// Where the kernel's symbols come from (a file in tests).
const KALLSYMS: &str = "/proc/kallsyms";

pub struct DropNames {
    /// `enum skb_drop_reason` names when kfree_skb carries a reason.
    reasons: Option<EnumNames>,
    kallsyms: String,
    /// Resolved locations (a few distinct ones per run).
    functions: RefCell<HashMap<u64, Option<String>>>,
}

impl DropNames {
    /// `reasons`: the kernel's drop-reason names, when its kfree_skb
    /// tracepoint passes one.
    pub fn new(reasons: Option<EnumNames>) -> Self {
        Self {
            reasons,
            kallsyms: KALLSYMS.into(),
            functions: RefCell::new(HashMap::new()),
        }
    }

    #[cfg(test)]
    pub fn with_kallsyms(reasons: Option<EnumNames>, path: &str) -> Self {
        Self {
            kallsyms: path.into(),
            ..Self::new(reasons)
        }
    }

    pub fn has_reasons(&self) -> bool {
        self.reasons.is_some()
    }

    /// The drop's reason name (`NETFILTER_DROP`, `IP_RPFILTER` …). Without
    /// kernel reasons, the one its freeing function stands for, or
    /// `NOT_SPECIFIED`.
    pub fn reason(&self, e: &Event) -> String {
        match &self.reasons {
            Some(r) => r.name(e.reason as u64),
            None => self
                .function(e)
                .and_then(|f| reason_of_function(&f))
                .unwrap_or("NOT_SPECIFIED")
                .to_string(),
        }
    }

    /// The kernel function that freed the packet, when the address resolves.
    pub fn function(&self, e: &Event) -> Option<String> {
        if e.location == 0 {
            return None;
        }
        self.functions
            .borrow_mut()
            .entry(e.location)
            .or_insert_with(|| resolve(&self.kallsyms, e.location))
            .clone()
    }
}

/// The text symbol containing `addr`: the one with the highest address not
/// above it. One pass over the file; callers cache the answer.
fn resolve(path: &str, addr: u64) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    let mut best: Option<(u64, String)> = None;
    for line in BufReader::new(f).lines().map_while(Result::ok) {
        let mut parts = line.split_whitespace();
        let (Some(a), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        let Ok(a) = u64::from_str_radix(a, 16) else {
            continue;
        };
        // Zero addresses: kptr_restrict hides them.
        if a == 0 || a > addr {
            continue;
        }
        if best.as_ref().is_none_or(|(b, _)| a > *b) {
            best = Some((a, name.to_string()));
        }
    }
    best.map(|(_, n)| n)
}

/// The cause a dropping function stands for, named like the reason newer
/// kernels give it. Compiler suffixes (`.constprop.0`, `.isra.0`) are ignored.
pub fn reason_of_function(function: &str) -> Option<&'static str> {
    let f = function.split('.').next().unwrap_or(function);
    Some(match f {
        "nf_hook_slow" => "NETFILTER_DROP",
        // The input route lookup failed: rp_filter, martians, no route.
        "ip_rcv_finish_core" | "ip_rcv_finish" | "ip_list_rcv_finish" | "ip_sublist_rcv_finish" => {
            "IP_ROUTE_INPUT"
        }
        "ip_rcv_core" | "ip_rcv" | "ipv6_rcv" | "ip6_rcv_core" => "IP_RCV",
        "__neigh_event_send"
        | "neigh_invalidate"
        | "arp_error_report"
        | "ndisc_error_report"
        | "neigh_resolve_output" => "NEIGH_FAILED",
        "ip_finish_output2" | "ip6_finish_output2" => "NEIGH_CREATEFAIL",
        // Too big (with DF) or TTL exceeded: told apart by the packet size.
        "ip_forward" | "ip6_forward" => "IP_FORWARD",
        "tcp_v4_rcv" | "tcp_v6_rcv" | "__udp4_lib_rcv" | "__udp6_lib_rcv" => "NO_SOCKET",
        "ip_local_deliver_finish" | "ip_protocol_deliver_rcu" => "IP_NOPROTO",
        "__netif_receive_skb_core" => "UNHANDLED_PROTO",
        "enqueue_to_backlog" => "CPU_BACKLOG",
        "br_handle_frame_finish" | "br_handle_frame" | "br_forward" | "__br_forward" => "BRIDGE",
        "packet_rcv" | "tpacket_rcv" | "packet_rcv_spkt" => "SOCKET_FILTER",
        "skb_queue_purge" | "__skb_queue_purge" => "QUEUE_PURGE",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(location: u64, reason: u32) -> Event {
        let mut e: Event = unsafe { std::mem::zeroed() };
        e.location = location;
        e.reason = reason;
        e
    }

    #[test]
    fn functions_map_to_the_causes_newer_kernels_name() {
        assert_eq!(reason_of_function("nf_hook_slow"), Some("NETFILTER_DROP"));
        assert_eq!(
            reason_of_function("ip_rcv_finish_core.constprop.0"),
            Some("IP_ROUTE_INPUT")
        );
        assert_eq!(reason_of_function("arp_error_report"), Some("NEIGH_FAILED"));
        assert_eq!(reason_of_function("some_other_function"), None);
    }

    #[test]
    fn locations_resolve_through_kallsyms() {
        let dir = std::env::temp_dir().join(format!("lbpath-kallsyms-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kallsyms");
        std::fs::write(
            &path,
            "ffffffff81000000 T _stext\n\
             ffffffff81a00000 t ip_rcv_finish_core.constprop.0\n\
             ffffffff81a00400 T ip_rcv_finish\n\
             ffffffff81a00800 D some_data\n\
             ffffffff81b00000 T nf_hook_slow\n\
             ffffffff81b00200 T nf_hook_slow_list\n",
        )
        .unwrap();
        let names = DropNames::with_kallsyms(None, path.to_str().unwrap());
        // Inside the first function, past the data symbol, in nf_hook_slow.
        assert_eq!(names.reason(&ev(0xffffffff81a00123, 0)), "IP_ROUTE_INPUT");
        assert_eq!(
            names.function(&ev(0xffffffff81a00900, 0)).as_deref(),
            Some("ip_rcv_finish")
        );
        assert_eq!(names.reason(&ev(0xffffffff81b00010, 0)), "NETFILTER_DROP");
        assert_eq!(names.reason(&ev(0, 0)), "NOT_SPECIFIED");
        // With kernel reasons, the enum decides.
        let r = DropNames::with_kallsyms(
            Some(EnumNames::from_pairs(&[(3, "NO_SOCKET")])),
            path.to_str().unwrap(),
        );
        assert_eq!(r.reason(&ev(0xffffffff81b00010, 3)), "NO_SOCKET");
        // Hidden addresses (kptr_restrict) resolve to nothing.
        std::fs::write(&path, "0000000000000000 T nf_hook_slow\n").unwrap();
        let hidden = DropNames::with_kallsyms(None, path.to_str().unwrap());
        assert_eq!(hidden.function(&ev(0xffffffff81b00010, 0)), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
