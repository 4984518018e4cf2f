//! Which integration tests the kernel matrix runs in every guest.
//!
//! This list is the one place to change: a test of lbpath-tests that
//! depends on the kernel (hooks, verifier, drop reasons, netfilter links)
//! belongs here. Each entry is `binary::test`: the test target
//! (tests/tests/<binary>.rs) and the test's exact libtest name. Each is run
//! alone as `<binary> <test> --exact --test-threads=1 --nocapture`.
//! Selectors given after `--` on the command line replace the list.

use anyhow::{Result, bail};

pub const KERNEL_TESTS: &[&str] = &[
    "watch::healthy_iptables_nft",
    "watch::rp_filter_strict_drops_asymmetric_requests",
    "watch::forward_drop_names_hook_and_rule",
    "diagnose::healthy",
    "diagnose::pod_not_answering",
    "diagnose::bgp_notification_decoded",
    "cli::killed_lbpath_leaves_nothing_behind",
    "watch::debug_bpf_shows_the_programs_decisions",
    // One connection, one flow: exact counts under a burst and tuple reuse,
    // drops counted, and untraced drops found through conntrack (which
    // before 6.4 only the transmit hook ties to the flow).
    "flows::every_connection_is_one_flow_even_reusing_its_tuple",
    "flows::retransmitted_syns_are_one_flow_with_their_drops_counted",
    "flows::a_drop_in_mid_connection_updates_its_flow",
    // Answers counted once where stacked devices send them twice.
    "flows::answers_are_counted_once_through_a_stacked_uplink",
    // Shedding new connections reads the ring buffer's fill (5.8+).
    "watch::new_connections_are_shed_while_behind_and_traced_again_after",
    "diagnose::node_refusing_its_local_lb_ip",
    // The capture branch of the event path (only loaded with --write).
    "pcap::write_pcapng_read_by_tshark",
    // kube-proxy's IPVS mode (ip_vs, dummy, ipset modules) and uplink kinds
    // (8021q, bonding); on a host without them they skip, here they must run.
    "ipvs::healthy",
    "ipvs::no_real_servers",
    "ipvs::refusing_real_server",
    "ipvs::strict_arp_on_and_off",
    "ipvs::vlan_is_an_uplink",
    "ipvs::bond_is_an_uplink",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// The test target, e.g. "watch".
    pub binary: String,
    /// The exact test name, e.g. "healthy" or "module::name".
    pub test: String,
}

impl Selector {
    pub fn parse(s: &str) -> Result<Self> {
        let Some((binary, test)) = s.split_once("::") else {
            bail!(
                "test selector {s:?} is not binary::test_name (e.g. watch::healthy_iptables_nft)"
            );
        };
        let valid = |w: &str| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-:".contains(c))
        };
        if !valid(binary) || binary.contains(':') || !valid(test) {
            bail!("test selector {s:?} is not binary::test_name (letters, digits, _ and -)");
        }
        Ok(Self {
            binary: binary.to_string(),
            test: test.to_string(),
        })
    }

    /// A file-name-safe id, numbered to keep the run order: "02-watch-healthy".
    pub fn id(&self, index: usize) -> String {
        format!(
            "{:02}-{}-{}",
            index + 1,
            self.binary,
            self.test.replace("::", "-")
        )
    }

    /// libtest's arguments for running this test alone.
    pub fn libtest_args(&self) -> Vec<String> {
        [
            self.test.as_str(),
            "--exact",
            "--test-threads=1",
            "--nocapture",
        ]
        .map(str::to_string)
        .to_vec()
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}::{}", self.binary, self.test)
    }
}

/// The caller's selectors if any, else [`KERNEL_TESTS`].
pub fn selected(args: &[String]) -> Result<Vec<Selector>> {
    if args.is_empty() {
        KERNEL_TESTS.iter().map(|s| Selector::parse(s)).collect()
    } else {
        args.iter().map(|s| Selector::parse(s)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_list_parses() {
        let sel = selected(&[]).unwrap();
        assert_eq!(sel.len(), KERNEL_TESTS.len());
        assert_eq!(sel[0].binary, "watch");
        assert_eq!(sel[3].to_string(), "diagnose::healthy");
    }

    #[test]
    fn callers_selectors_replace_the_list() {
        let sel = selected(&["cli::bad_address".into(), "watch::a::b".into()]).unwrap();
        assert_eq!(sel.len(), 2);
        assert_eq!(
            (sel[1].binary.as_str(), sel[1].test.as_str()),
            ("watch", "a::b")
        );
        assert_eq!(sel[1].id(1), "02-watch-a-b");
        assert_eq!(
            sel[0].libtest_args(),
            ["bad_address", "--exact", "--test-threads=1", "--nocapture"]
        );
    }

    #[test]
    fn rejects_malformed_selectors() {
        for bad in [
            "healthy",
            "::x",
            "watch::",
            "wa tch::x",
            "watch::x y",
            "a:b::c",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }
}
