//! The test network: one Linux network namespace per node, joined by veth pairs to a bridge
//! that lives in a namespace of its own, addresses in 198.18.0.0/24 (the benchmarking range,
//! RFC 2544) with no route to anything else; partitions as `nft` rules in the nodes'
//! namespaces.
//!
//! The driver itself stays in the root namespace, attached to the bridge through one more
//! veth pair (`dchaos-host`, 198.18.0.1): it reaches every node, and partitions (between
//! nodes only) never cut it off. Every name starts with [`PREFIX`] so that
//! [`cleanup_leftovers`] finds what a killed run left behind.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

/// The prefix of every namespace and link the harness creates.
pub(crate) const PREFIX: &str = "dchaos-";
const BRIDGE_NS: &str = "dchaos-br";
const BRIDGE: &str = "dchaos-br0";
const HOST_LINK: &str = "dchaos-host";
/// The driver's address on the test network.
pub(crate) const HOST_ADDR: &str = "198.18.0.1";

/// The namespace of host `host` (1-based).
pub(crate) fn netns(host: usize) -> String {
    format!("{PREFIX}n{host}")
}

/// The address of host `host` (1-based).
pub(crate) fn addr(host: usize) -> String {
    format!("198.18.0.{}", 10 + host)
}

/// Runs `ip`/`nft` style commands; the error carries the command and its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The network of `hosts` node namespaces, torn down on drop.
#[derive(Debug)]
pub(crate) struct Network {
    hosts: usize,
}

impl Network {
    /// Creates the bridge, `hosts` node namespaces and the driver's link. Refuses to start
    /// over leftovers of another run (`--cleanup` removes them).
    pub(crate) fn create(hosts: usize) -> Result<Network, String> {
        let left = leftovers();
        if !left.is_empty() {
            return Err(format!(
                "leftovers of an earlier run exist ({}); remove them with `cargo xtask chaos \
                 --cleanup` (or stop the run that owns them)",
                left.join(", ")
            ));
        }
        // From here on, drop removes whatever part was made.
        let net = Network { hosts };
        run("ip", &["netns", "add", BRIDGE_NS])?;
        run(
            "ip",
            &["-n", BRIDGE_NS, "link", "add", BRIDGE, "type", "bridge"],
        )?;
        run("ip", &["-n", BRIDGE_NS, "link", "set", BRIDGE, "up"])?;
        for host in 1..=hosts {
            let ns = netns(host);
            let inner = ns.clone();
            let outer = format!("{ns}p");
            run("ip", &["netns", "add", &ns])?;
            run(
                "ip",
                &[
                    "link", "add", &inner, "type", "veth", "peer", "name", &outer,
                ],
            )?;
            run("ip", &["link", "set", &inner, "netns", &ns])?;
            attach(&outer)?;
            let cidr = format!("{}/24", addr(host));
            run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", &inner])?;
            run("ip", &["-n", &ns, "link", "set", &inner, "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let outer = format!("{HOST_LINK}p");
        run(
            "ip",
            &[
                "link", "add", HOST_LINK, "type", "veth", "peer", "name", &outer,
            ],
        )?;
        attach(&outer)?;
        let cidr = format!("{HOST_ADDR}/24");
        run("ip", &["addr", "add", &cidr, "dev", HOST_LINK])?;
        run("ip", &["link", "set", HOST_LINK, "up"])?;
        Ok(net)
    }

    /// Installs `rules` (one entry per host, 1-based order) in every node namespace,
    /// replacing the rules in force.
    pub(crate) fn apply(&self, rules: &[HostRules]) -> Result<(), String> {
        for (i, r) in rules.iter().enumerate() {
            nft(&netns(i + 1), &r.nft_script())?;
        }
        Ok(())
    }

    /// Removes every partition rule.
    pub(crate) fn heal(&self) -> Result<(), String> {
        let none = vec![HostRules::default(); self.hosts];
        self.apply(&none)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        cleanup_leftovers();
    }
}

/// Moves `link` (created in the root namespace) into the bridge namespace and attaches it.
fn attach(link: &str) -> Result<(), String> {
    run("ip", &["link", "set", link, "netns", BRIDGE_NS])?;
    run(
        "ip",
        &["-n", BRIDGE_NS, "link", "set", link, "master", BRIDGE, "up"],
    )
}

/// Feeds `script` to `nft -f -` inside namespace `ns`.
fn nft(ns: &str, script: &str) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft in {ns}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("cannot write to nft in {ns}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("nft in {ns}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft in {ns} refused the rules: {}\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// What one host's firewall drops: packets from and to the listed hosts (1-based).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HostRules {
    /// Hosts whose packets this host does not receive.
    pub(crate) drop_from: BTreeSet<usize>,
    /// Hosts this host's packets do not reach.
    pub(crate) drop_to: BTreeSet<usize>,
}

impl HostRules {
    /// The rules for every host when `can_send(a, b)` says whether packets from host `a`
    /// reach host `b` (hosts `1..=hosts`).
    pub(crate) fn from_matrix(
        hosts: usize,
        can_send: impl Fn(usize, usize) -> bool,
    ) -> Vec<HostRules> {
        (1..=hosts)
            .map(|me| HostRules {
                drop_from: (1..=hosts)
                    .filter(|&o| o != me && !can_send(o, me))
                    .collect(),
                drop_to: (1..=hosts)
                    .filter(|&o| o != me && !can_send(me, o))
                    .collect(),
            })
            .collect()
    }

    /// The `nft -f` script that replaces the namespace's ruleset with these rules. Only
    /// traffic between nodes is filtered; the driver (198.18.0.1) always gets through.
    pub(crate) fn nft_script(&self) -> String {
        let set = |hosts: &BTreeSet<usize>| {
            hosts
                .iter()
                .map(|&h| addr(h))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut s = String::from("flush ruleset\n");
        if self.drop_from.is_empty() && self.drop_to.is_empty() {
            return s;
        }
        s.push_str("table inet dchaos {\n");
        s.push_str("  chain input {\n    type filter hook input priority 0; policy accept;\n");
        if !self.drop_from.is_empty() {
            s.push_str(&format!(
                "    ip saddr {{ {} }} drop\n",
                set(&self.drop_from)
            ));
        }
        s.push_str("  }\n");
        s.push_str("  chain output {\n    type filter hook output priority 0; policy accept;\n");
        if !self.drop_to.is_empty() {
            s.push_str(&format!("    ip daddr {{ {} }} drop\n", set(&self.drop_to)));
        }
        s.push_str("  }\n}\n");
        s
    }
}

/// Names of the harness's namespaces and root-namespace links that exist now.
pub(crate) fn leftovers() -> Vec<String> {
    let mut found: Vec<String> = output("ip", &["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(|n| format!("netns {n}"))
        .collect();
    found.extend(root_links().into_iter().map(|l| format!("link {l}")));
    found
}

fn root_links() -> Vec<String> {
    // `ip -o link` lines look like `7: dchaos-host@if6: <BROADCAST,...> ...`.
    output("ip", &["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with(PREFIX))
        .collect()
}

/// Kills every process left in a harness namespace, deletes the namespaces (which removes
/// their links) and the root namespace's harness links. Returns what it removed.
pub(crate) fn cleanup_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    for ns in output("ip", &["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
    {
        for pid in output("ip", &["netns", "pids", ns]).split_whitespace() {
            if run("kill", &["-KILL", pid]).is_ok() {
                removed.push(format!("process {pid} in {ns}"));
            }
        }
        if run("ip", &["netns", "delete", ns]).is_ok() {
            removed.push(format!("netns {ns}"));
        }
    }
    for link in root_links() {
        if run("ip", &["link", "delete", &link]).is_ok() {
            removed.push(format!("link {link}"));
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_way_partition_rules_drop_only_the_cut_direction() {
        // Host 1 cannot send to host 2; everything else flows.
        let rules = HostRules::from_matrix(3, |a, b| !(a == 1 && b == 2));
        assert_eq!(rules[0].drop_to, BTreeSet::from([2]));
        assert!(rules[0].drop_from.is_empty());
        assert_eq!(rules[1].drop_from, BTreeSet::from([1]));
        assert!(rules[1].drop_to.is_empty());
        assert_eq!(rules[2], HostRules::default());
    }

    #[test]
    fn nft_script_is_exact() {
        let r = HostRules {
            drop_from: BTreeSet::from([2, 3]),
            drop_to: BTreeSet::from([3]),
        };
        assert_eq!(
            r.nft_script(),
            "flush ruleset\n\
             table inet dchaos {\n\
            \x20 chain input {\n\
            \x20   type filter hook input priority 0; policy accept;\n\
            \x20   ip saddr { 198.18.0.12, 198.18.0.13 } drop\n\
            \x20 }\n\
            \x20 chain output {\n\
            \x20   type filter hook output priority 0; policy accept;\n\
            \x20   ip daddr { 198.18.0.13 } drop\n\
            \x20 }\n\
             }\n"
        );
        assert_eq!(HostRules::default().nft_script(), "flush ruleset\n");
    }

    #[test]
    fn names_fit_linux_interface_names() {
        // IFNAMSIZ is 16 with the terminating NUL.
        for name in [
            format!("{}p", netns(99)),
            format!("{HOST_LINK}p"),
            BRIDGE.into(),
        ] {
            assert!(name.len() <= 15, "{name}");
        }
    }
}
