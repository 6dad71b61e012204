//! Free loopback ports for test members, shared by the cluster tests of `dengine`,
//! `dengine-client` and `dengine-kv` (the other two include this file with `#[path]`).

/// Free loopback ports for members to bind, each checked free and none handed out twice by
/// this process. They are taken below the kernel's ephemeral range (32768 and up by default),
/// from a start that differs per process: a port released after the check cannot be taken
/// meanwhile by an outgoing connection of a concurrent test, which gets an ephemeral port.
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let _ = NEXT.compare_exchange(u32::MAX, seed % SPAN, Ordering::Relaxed, Ordering::Relaxed);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..SPAN {
        if ports.len() == n {
            break;
        }
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), n, "no {n} free loopback ports below 32000");
    ports
}
