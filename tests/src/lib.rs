//! lbpath's integration-test support: the network-namespace lab (shared with
//! the demo), kube-proxy-style rules for it, and a runner for the binary.

pub mod bpf;
pub mod ipvs_lab;
pub mod kernel;
pub mod kubeproxy_rules;
pub mod lab;
pub mod netns;
pub mod run;
