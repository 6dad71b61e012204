//! etcd's command-line flags for `dengine-kv serve`, for operators who know etcd: the same
//! names with the same meanings, mapped onto dengine's settings. What cannot mean the same
//! here is refused with the reason (several listen URLs, a joining member without its id).
//!
//! Member ids: etcd derives them from URLs; dengine numbers members. A member started with
//! `--initial-cluster` is the member at its `--name`'s position in that list, counted from 1,
//! so every member must be given the same list in the same order (as etcd requires anyway). A
//! member joining a running cluster (`--initial-cluster-state existing`) takes the id that
//! `etcdctl member add` assigned and printed, with `--id`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use dengine::Settings;
use dengine::grpc::TlsConfig;
use dengine::settings::ClusterState;
use std::time::Duration;

use dengine_kv::{AutoCompaction, DEFAULT_AUTO_COMPACTION, KvConfig};

/// etcd's flags (`dengine-kv serve --help`, "etcd's flags").
#[derive(clap::Args, Default)]
#[command(next_help_heading = "etcd's flags (same meanings as etcd's)")]
pub(crate) struct EtcdFlags {
    /// This member's name in --initial-cluster; its id is its position there, from 1.
    #[arg(long)]
    name: Option<String>,
    /// The URL the etcd API listens on (one: http://HOST:PORT, or https:// with --cert-file,
    /// --key-file and --trusted-ca-file); as --listen-client.
    #[arg(long, value_name = "URL", conflicts_with = "listen_client")]
    listen_client_urls: Option<String>,
    /// The client URLs this member reports to clients (`member list`), comma-separated.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    advertise_client_urls: Vec<String>,
    /// The URL the peer listener listens on (one); as --listen-peer.
    #[arg(long, value_name = "URL", conflicts_with = "listen_peer")]
    listen_peer_urls: Option<String>,
    /// The peer URL the other members reach this one at (node.advertise_addr); it must be
    /// this member's entry in --initial-cluster.
    #[arg(long, value_name = "URL")]
    initial_advertise_peer_urls: Option<String>,
    /// The members of a new cluster, NAME=PEER-URL,... (this member included, every member
    /// given the same list); as --initial-members, with ids by position from 1.
    #[arg(long, value_name = "NAME=URL,...", conflicts_with = "initial_members")]
    initial_cluster: Option<String>,
    /// A name for the cluster: members started with different tokens refuse each other (the
    /// cluster id is derived from it); as --cluster-id.
    #[arg(long, value_name = "TOKEN", conflicts_with = "cluster_id")]
    initial_cluster_token: Option<String>,
    /// The client listener's certificate (PEM), for https:// client URLs.
    #[arg(long, value_name = "FILE")]
    cert_file: Option<PathBuf>,
    /// The client listener's private key (PEM).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// The CA (PEM) whose client certificates the client listener accepts.
    #[arg(long, value_name = "FILE")]
    trusted_ca_file: Option<PathBuf>,
    /// The peer listener's and peer client's certificate (PEM); with --peer-key-file and
    /// --peer-trusted-ca-file, peers talk TLS.
    #[arg(long, value_name = "FILE")]
    peer_cert_file: Option<PathBuf>,
    /// The peer certificate's private key (PEM).
    #[arg(long, value_name = "FILE")]
    peer_key_file: Option<PathBuf>,
    /// The CA (PEM) that signed the peers' certificates.
    #[arg(long, value_name = "FILE")]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Peers must present a certificate of --peer-trusted-ca-file that names the member they
    /// claim to be (`member-<id>`, or network.member_names).
    #[arg(long)]
    peer_client_cert_auth: bool,
    /// How the leader compacts the MVCC history: `revision` (keep the last
    /// --auto-compaction-retention revisions) or `periodic` (keep that long). Without these
    /// two flags: revision mode, 10000 revisions (etcd: off).
    #[arg(long, value_name = "revision|periodic")]
    auto_compaction_mode: Option<String>,
    /// What --auto-compaction-mode keeps: a revision count, or a duration such as 1h, 30m or
    /// 90s (a bare number in periodic mode is hours, as in etcd); 0 turns auto-compaction off.
    /// Without it: 10000 revisions, or 1h in periodic mode.
    #[arg(long, value_name = "N|DURATION")]
    auto_compaction_retention: Option<String>,
}

impl EtcdFlags {
    /// Applies the flags that were given to `s` (whose `node.id` is the one from --id or the
    /// settings, 0 if none, and whose `initial_cluster_state` is already final) and `kv`.
    pub(crate) fn apply(&self, s: &mut Settings, kv: &mut KvConfig) -> Result<(), String> {
        let mut client_https = false;
        if let Some(url) = &self.listen_client_urls {
            let (scheme, addr) = one_url("--listen-client-urls", url)?;
            client_https = scheme == "https";
            s.node.client_addr = Some(addr);
        }
        if !self.advertise_client_urls.is_empty() {
            for url in &self.advertise_client_urls {
                one_url("--advertise-client-urls", url)?;
            }
            kv.advertise_client_urls = self.advertise_client_urls.clone();
        }
        if let Some(url) = &self.listen_peer_urls {
            s.node.listen_addr = one_url("--listen-peer-urls", url)?.1;
        }
        if let Some(url) = &self.initial_advertise_peer_urls {
            s.node.advertise_addr = Some(one_url("--initial-advertise-peer-urls", url)?.1);
        }
        if let Some(token) = &self.initial_cluster_token {
            s.node.cluster_id = cluster_id_of(token);
        }
        if let Some(name) = &self.name {
            kv.name = name.clone();
        }
        if let Some(list) = &self.initial_cluster {
            let members = parse_initial_cluster(list)?;
            let name = self.name.as_deref().unwrap_or("default");
            let position = members.iter().position(|(n, _)| n == name);
            let joining = s.node.initial_cluster_state == ClusterState::Existing;
            match (position, joining) {
                (_, true) if s.node.id == 0 => {
                    return Err(
                        "--initial-cluster-state existing: pass the id `etcdctl member add` \
                         printed for this member with --id (in decimal); ids by position in \
                         --initial-cluster are for new clusters only"
                            .into(),
                    );
                }
                (_, true) => {
                    // Joining: the id was given; the list only says where the others are.
                    let own = s
                        .node
                        .advertise_addr
                        .clone()
                        .unwrap_or(s.node.listen_addr.clone());
                    s.node.initial_members = BTreeMap::from([(s.node.id, own)]);
                }
                (None, false) => {
                    let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
                    return Err(format!(
                        "--name {name:?} is not in --initial-cluster (names: {}); pass this \
                         member's --name",
                        names.join(", ")
                    ));
                }
                (Some(i), false) => {
                    let id = i as u64 + 1;
                    if s.node.id != 0 && s.node.id != id {
                        return Err(format!(
                            "--id {} disagrees with --name {name:?}, which is member {id} (its \
                             position in --initial-cluster); give one or the other",
                            s.node.id
                        ));
                    }
                    s.node.id = id;
                    s.node.initial_members = members
                        .into_iter()
                        .enumerate()
                        .map(|(i, (_, addr))| (i as u64 + 1, addr))
                        .collect();
                }
            }
        }
        if self.auto_compaction_mode.is_some() || self.auto_compaction_retention.is_some() {
            kv.auto_compaction = auto_compaction(
                self.auto_compaction_mode.as_deref().unwrap_or("revision"),
                self.auto_compaction_retention.as_deref(),
            )?;
        }
        if client_https
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.trusted_ca_file.is_some()
        {
            s.client_api.tls = Some(tls(
                "client",
                (&self.cert_file, &self.key_file, &self.trusted_ca_file),
                false,
            )?);
        }
        if self.peer_cert_file.is_some()
            || self.peer_key_file.is_some()
            || self.peer_trusted_ca_file.is_some()
            || self.peer_client_cert_auth
        {
            s.network.tls = Some(tls(
                "peer",
                (
                    &self.peer_cert_file,
                    &self.peer_key_file,
                    &self.peer_trusted_ca_file,
                ),
                self.peer_client_cert_auth,
            )?);
        }
        Ok(())
    }
}

/// etcd's auto-compaction flags as an [`AutoCompaction`].
fn auto_compaction(mode: &str, retention: Option<&str>) -> Result<AutoCompaction, String> {
    match mode {
        "revision" => match retention.map(str::parse::<u64>) {
            None => Ok(DEFAULT_AUTO_COMPACTION),
            Some(Ok(0)) => Ok(AutoCompaction::Off),
            Some(Ok(n)) => Ok(AutoCompaction::Revisions(n)),
            Some(Err(_)) => Err(format!(
                "--auto-compaction-retention {:?}: in revision mode, give a number of revisions \
                 (e.g. 10000), or 0 for no auto-compaction",
                retention.unwrap_or_default()
            )),
        },
        "periodic" => match retention.map(parse_go_duration) {
            None => Ok(AutoCompaction::Periodic(Duration::from_secs(3600))),
            Some(Ok(d)) if d.is_zero() => Ok(AutoCompaction::Off),
            Some(Ok(d)) => Ok(AutoCompaction::Periodic(d)),
            Some(Err(e)) => Err(format!("--auto-compaction-retention: {e}")),
        },
        other => Err(format!(
            "--auto-compaction-mode {other:?}: give `revision` or `periodic`"
        )),
    }
}

/// A duration as etcd's flags take it: Go's format (`1h`, `30m`, `1h30m`, `90s`, `500ms`), or a
/// bare number of hours.
fn parse_go_duration(text: &str) -> Result<Duration, String> {
    if let Ok(hours) = text.parse::<u64>() {
        return Ok(Duration::from_secs(hours.saturating_mul(3600)));
    }
    let bad = || {
        format!(
            "{text:?} is not a duration: give a number with a unit, h, m, s or ms (e.g. 1h, \
             30m, 1h30m), or a bare number of hours"
        )
    };
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => Duration::from_secs(3600),
            "m" => Duration::from_secs(60),
            "s" => Duration::from_secs(1),
            "ms" => Duration::from_millis(1),
            _ => return Err(bad()),
        };
        total = total.saturating_add(unit.saturating_mul(u32::try_from(n).map_err(|_| bad())?));
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// The TLS settings of the client or peer flags: all three files are needed.
fn tls(
    which: &str,
    (cert, key, ca): (&Option<PathBuf>, &Option<PathBuf>, &Option<PathBuf>),
    require_client_cert: bool,
) -> Result<TlsConfig, String> {
    let prefix = if which == "peer" { "peer-" } else { "" };
    match (cert, key, ca) {
        (Some(cert), Some(key), Some(ca)) => Ok(TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
            require_client_cert,
            server_name: None,
        }),
        _ => Err(format!(
            "{which} TLS needs --{prefix}cert-file, --{prefix}key-file and \
             --{prefix}trusted-ca-file together (an https:// client URL needs them too)"
        )),
    }
}

/// One `http://HOST:PORT` or `https://HOST:PORT` URL (a trailing `/` allowed) as its scheme and
/// `HOST:PORT`.
fn one_url(flag: &str, url: &str) -> Result<(&'static str, String), String> {
    if url.contains(',') {
        return Err(format!(
            "{flag} {url:?}: dengine-kv listens on one address per listener; give one URL"
        ));
    }
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        ("http", rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        ("https", rest)
    } else {
        return Err(format!(
            "{flag} {url:?}: expected http://HOST:PORT or https://HOST:PORT"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let port_ok = rest
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
    if !port_ok || rest.contains('/') {
        return Err(format!(
            "{flag} {url:?}: expected http://HOST:PORT or https://HOST:PORT (a port, no path)"
        ));
    }
    Ok((scheme, rest.to_string()))
}

/// `NAME=URL,NAME=URL,...` in order; names unique.
fn parse_initial_cluster(list: &str) -> Result<Vec<(String, String)>, String> {
    let mut members: Vec<(String, String)> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((name, url)) = item.split_once('=') else {
            return Err(format!("--initial-cluster: {item:?} is not NAME=URL"));
        };
        if members.iter().any(|(n, _)| n == name) {
            return Err(format!(
                "--initial-cluster: the name {name:?} appears twice; every member needs its own"
            ));
        }
        members.push((name.to_string(), one_url("--initial-cluster", url)?.1));
    }
    if members.is_empty() {
        return Err("--initial-cluster is empty: list NAME=PEER-URL for every member".into());
    }
    Ok(members)
}

/// The cluster id of `--initial-cluster-token`: its 64-bit FNV-1a hash (never 0).
fn cluster_id_of(token: &str) -> u64 {
    let hash = token.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    hash.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(name: &str, cluster: &str) -> EtcdFlags {
        EtcdFlags {
            name: Some(name.into()),
            initial_cluster: Some(cluster.into()),
            ..EtcdFlags::default()
        }
    }

    const CLUSTER: &str =
        "infra0=http://10.0.0.1:2380,infra1=http://10.0.0.2:2380,infra2=http://10.0.0.3:2380";

    #[test]
    fn auto_compaction_flags_mean_what_they_mean_in_etcd() {
        let apply = |mode: Option<&str>, retention: Option<&str>| {
            let flags = EtcdFlags {
                auto_compaction_mode: mode.map(Into::into),
                auto_compaction_retention: retention.map(Into::into),
                ..EtcdFlags::default()
            };
            let mut kv = KvConfig::default();
            flags
                .apply(&mut Settings::default(), &mut kv)
                .map(|()| kv.auto_compaction)
        };
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(apply(None, None), Ok(DEFAULT_AUTO_COMPACTION));
        assert_eq!(apply(None, Some("500")), Ok(AutoCompaction::Revisions(500)));
        assert_eq!(apply(Some("revision"), Some("0")), Ok(AutoCompaction::Off));
        assert_eq!(
            apply(Some("periodic"), Some("2")),
            Ok(AutoCompaction::Periodic(h(2)))
        );
        assert_eq!(
            apply(Some("periodic"), Some("1h30m")),
            Ok(AutoCompaction::Periodic(Duration::from_secs(5400)))
        );
        assert_eq!(
            apply(Some("periodic"), Some("90s")),
            Ok(AutoCompaction::Periodic(Duration::from_secs(90)))
        );
        assert_eq!(
            apply(Some("periodic"), None),
            Ok(AutoCompaction::Periodic(h(1)))
        );
        assert_eq!(apply(Some("periodic"), Some("0")), Ok(AutoCompaction::Off));
        let err = apply(Some("revision"), Some("1h")).unwrap_err();
        assert!(err.contains("number of revisions"), "{err}");
        let err = apply(Some("periodic"), Some("1d")).unwrap_err();
        assert!(err.contains("not a duration"), "{err}");
        let err = apply(Some("weekly"), None).unwrap_err();
        assert!(err.contains("`revision` or `periodic`"), "{err}");
    }

    #[test]
    fn initial_cluster_gives_ids_by_position() {
        let mut s = Settings::default();
        let mut kv = KvConfig::default();
        flags("infra1", CLUSTER).apply(&mut s, &mut kv).unwrap();
        assert_eq!(s.node.id, 2);
        assert_eq!(s.node.initial_members.len(), 3);
        assert_eq!(s.node.initial_members[&3], "10.0.0.3:2380");
    }

    #[test]
    fn mistakes_are_refused_with_the_way_out() {
        let mut s = Settings::default();
        let mut kv = KvConfig::default();
        let err = flags("infra9", CLUSTER).apply(&mut s, &mut kv).unwrap_err();
        assert!(err.contains("names: infra0, infra1, infra2"), "{err}");
        s.node.id = 3;
        let err = flags("infra1", CLUSTER).apply(&mut s, &mut kv).unwrap_err();
        assert!(err.contains("--id 3 disagrees"), "{err}");
        let mut s = Settings::default();
        s.node.initial_cluster_state = ClusterState::Existing;
        let err = flags("infra1", CLUSTER).apply(&mut s, &mut kv).unwrap_err();
        assert!(err.contains("etcdctl member add"), "{err}");
        let dup = "a=http://10.0.0.1:2380,a=http://10.0.0.2:2380";
        assert!(
            flags("a", dup)
                .apply(&mut Settings::default(), &mut kv)
                .is_err()
        );
        let two = EtcdFlags {
            listen_client_urls: Some("http://127.0.0.1:2379,http://10.0.0.1:2379".into()),
            ..EtcdFlags::default()
        };
        let err = two.apply(&mut Settings::default(), &mut kv).unwrap_err();
        assert!(err.contains("one URL"), "{err}");
        let https = EtcdFlags {
            listen_client_urls: Some("https://127.0.0.1:2379".into()),
            ..EtcdFlags::default()
        };
        let err = https.apply(&mut Settings::default(), &mut kv).unwrap_err();
        assert!(
            err.contains("--cert-file, --key-file and --trusted-ca-file"),
            "{err}"
        );
    }

    #[test]
    fn urls_are_host_and_port() {
        assert_eq!(
            one_url("f", "http://127.0.0.1:2379/").unwrap(),
            ("http", "127.0.0.1:2379".into())
        );
        assert_eq!(
            one_url("f", "https://node1:2379").unwrap(),
            ("https", "node1:2379".into())
        );
        for bad in [
            "127.0.0.1:2379",
            "http://127.0.0.1",
            "http://h:0",
            "http://h:1/x",
            "unix://s",
        ] {
            assert!(one_url("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_name_clusters() {
        assert_eq!(
            cluster_id_of("etcd-cluster-1"),
            cluster_id_of("etcd-cluster-1")
        );
        assert_ne!(
            cluster_id_of("etcd-cluster-1"),
            cluster_id_of("etcd-cluster-2")
        );
        assert_ne!(cluster_id_of(""), 0);
    }
}
