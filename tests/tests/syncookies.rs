//! Under SYN cookies the program runs twice per connection: for the SYN, and again for the ACK
//! that completes the handshake, whose choice gets the connection. Round-robin and least-conn
//! stay exact, sticky keeps each address on its worker, and the counters count connections, not
//! packets.
//! Each test runs in a private network namespace with `net.ipv4.tcp_syncookies=2` (cookies for
//! every connection), which the kernel otherwise turns on by itself when a listen queue
//! overflows.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use cluster_tests::{
    Cluster, NetNs, assert_counters_match, assert_exact_rotation, assert_no_fallback,
    cluster_command, get, require_root, steering_stats, tally,
};

fn pool_with_cookies(args: &[&str]) -> (NetNs, Cluster) {
    let ns = NetNs::new();
    ns.sysctl("net.ipv4.tcp_syncookies", "2");
    let mut command = cluster_command(&["run", "--listen", "127.0.0.1:8080"]);
    command.args(args);
    ns.enter(&mut command);
    let cluster = Cluster::start_command(command);
    (ns, cluster)
}

fn rotation_with_cookies(workers: u32, steering: &str) {
    require_root();
    let (ns, cluster) =
        pool_with_cookies(&["--workers", &workers.to_string(), "--steering", steering]);
    let addr = cluster.addr();
    let counts = ns.run(|| tally(addr, "/", 40, 1));
    eprintln!("{steering} under SYN cookies, {workers} workers, 40 connections: {counts:?}");
    assert_exact_rotation(&counts, workers);
    let (status, log) = cluster.stop();
    assert!(status.success(), "{log}");
    assert_counters_match(&log, &counts);
    assert_no_fallback(&log);
}

#[test]
fn round_robin_stays_exact_with_two_workers() {
    rotation_with_cookies(2, "round-robin");
}

#[test]
fn round_robin_stays_exact_with_four_workers() {
    rotation_with_cookies(4, "round-robin");
}

/// One connection at a time: every worker has none open at each new one, so least-conn's ties
/// follow the rotation, which the cookie ACKs turn on their own counter, exactly.
#[test]
fn least_conn_stays_exact_with_four_workers() {
    rotation_with_cookies(4, "least-conn");
}

#[test]
fn sticky_keeps_each_address_on_its_worker() {
    require_root();
    let (ns, cluster) = pool_with_cookies(&["--workers", "4", "--steering", "sticky"]);
    let addr = cluster.addr();
    let clients: Vec<IpAddr> = (0..20)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + i)))
        .collect();
    let seen: BTreeMap<IpAddr, Vec<u32>> = ns.run(|| {
        clients
            .iter()
            .map(|&client| {
                let slots = (0..3)
                    .map(|_| {
                        let reply = get(addr, "/", Some(client))
                            .unwrap_or_else(|f| panic!("request from {client}: {f:?}"));
                        reply.slot.unwrap()
                    })
                    .collect();
                (client, slots)
            })
            .collect()
    });
    for (client, slots) in &seen {
        assert!(
            slots.windows(2).all(|w| w[0] == w[1]),
            "{client}: {slots:?}"
        );
    }
    let used: std::collections::BTreeSet<u32> = seen.values().map(|s| s[0]).collect();
    assert!(used.len() >= 2, "all clients on {used:?}");
    let (status, log) = cluster.stop();
    assert!(status.success(), "{log}");
    let total: u64 = steering_stats(&log).values().map(|(c, _)| c).sum();
    assert_eq!(total, 60, "60 connections, each counted once\n{log}");
}
