//! The command-line forms people type: `--listen 8080` and `:8080` (every interface, IPv4 and
//! IPv6 clients alike), `--listen localhost:PORT`, `--workers -1`, and `--version`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::Command,
};

use cluster_tests::{
    Cluster, NetNs, assert_exact_rotation, cluster_command, cluster_run, field, get, on_one_cpu,
    ready_line, require_root, without_ipv6,
};

/// A namespace whose loopback has extra client addresses: 127.0.0.0/8 is all local already;
/// IPv6 gets 2001:db8:0:100::1 … 2001:db8:0:10f::1, each in a /64 of its own (sticky keeps a
/// /64 together by default).
fn namespace_with_clients() -> (NetNs, Vec<IpAddr>) {
    let ns = NetNs::new();
    let v6: Vec<IpAddr> = (0..16u16)
        .map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0x100 + i, 0, 0, 0, 1)))
        .collect();
    let batch: String = v6
        .iter()
        .map(|a| format!("addr add {a}/128 dev lo nodad\n"))
        .collect();
    ns.ip_batch(&batch);
    let v4 = (0..16).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + i)));
    (ns, v4.chain(v6).collect())
}

fn pool_in(ns: &NetNs, args: &[&str]) -> Cluster {
    let mut command = cluster_command(&["run"]);
    command.args(args);
    ns.enter(&mut command);
    Cluster::start_command(command)
}

/// One request from each client address to `port` on the loopback address of its family.
fn request_from_each(port: u16, clients: &[IpAddr]) -> BTreeMap<IpAddr, u32> {
    clients
        .iter()
        .map(|&client| {
            let server = match client {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            let reply = get(SocketAddr::new(server, port), "/", Some(client))
                .unwrap_or_else(|f| panic!("request from {client} failed: {f:?}"));
            (client, reply.slot.expect("x-worker-slot"))
        })
        .collect()
}

#[test]
fn a_bare_port_listens_on_every_interface_for_ipv4_and_ipv6_clients() {
    require_root();
    for listen in ["8080", ":8080"] {
        let (ns, clients) = namespace_with_clients();
        // The sysctl that would make `[::]` IPv6-only: the pool sets IPV6_V6ONLY=0 itself.
        ns.sysctl("net.ipv6.bindv6only", "1");
        let cluster = pool_in(&ns, &["--listen", listen, "--workers", "2"]);
        assert_eq!(cluster.addr(), "[::]:8080".parse().unwrap(), "{listen}");
        // 32 connections, half IPv4 and half IPv6, rotate over both workers exactly.
        let slots = ns.run(|| request_from_each(8080, &clients));
        let mut counts = BTreeMap::new();
        for slot in slots.values() {
            *counts.entry(*slot).or_insert(0u64) += 1;
        }
        assert_exact_rotation(&counts, 2);
        let (status, log) = cluster.stop();
        assert!(status.success(), "{log}");
    }
}

#[test]
fn sticky_on_every_interface_keeps_ipv4_and_ipv6_clients_in_place() {
    require_root();
    let (ns, clients) = namespace_with_clients();
    let cluster = pool_in(
        &ns,
        &["--listen", "8080", "--workers", "4", "--steering", "sticky"],
    );
    let first = ns.run(|| request_from_each(8080, &clients));
    let second = ns.run(|| request_from_each(8080, &clients));
    assert_eq!(first, second, "a client changed worker");
    for family_is_v4 in [true, false] {
        let used: std::collections::BTreeSet<u32> = first
            .iter()
            .filter(|(client, _)| client.is_ipv4() == family_is_v4)
            .map(|(_, slot)| *slot)
            .collect();
        assert!(used.len() >= 2, "v4={family_is_v4}: all on {used:?}");
    }
    let (status, log) = cluster.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("addr_unreadable=0"), "{log}");
}

#[test]
fn without_ipv6_a_bare_port_listens_on_ipv4_any() {
    let port = cluster_tests::free_local_addr().port().to_string();
    let mut command = cluster_command(&["run", "--listen", &port, "--workers", "1"]);
    command.args(["--steering", "hash"]);
    without_ipv6(&mut command);
    let cluster = Cluster::start_command(command);
    assert_eq!(cluster.addr().to_string(), format!("0.0.0.0:{port}"));
    let local = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), cluster.addr().port());
    assert_eq!(get(local, "/", None).map(|r| r.status), Ok(200));
}

#[test]
fn localhost_binds_127_0_0_1_and_the_ready_line_says_so() {
    let mut command = cluster_command(&["run", "--listen", "localhost:0", "--workers", "1"]);
    command.args(["--steering", "hash"]);
    let cluster = Cluster::start_command(command);
    assert_eq!(cluster.addr().ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(get(cluster.addr(), "/", None).map(|r| r.status), Ok(200));
}

fn worker_count(mut command: Command) -> String {
    let cluster = Cluster::start_command({
        command.args(["--steering", "hash"]);
        command
    });
    let ready = ready_line(&cluster.log()).unwrap();
    field(&ready, "workers").unwrap().to_owned()
}

#[test]
fn workers_minus_n_leaves_n_cpus_and_keeps_the_command() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    let expected = cpus.saturating_sub(1).max(1).to_string();
    assert_eq!(worker_count(cluster_run(&["--workers", "-1"])), expected);
    assert_eq!(worker_count(cluster_run(&["--workers=-1"])), expected);

    let mut one_cpu = cluster_run(&["--workers", "-1"]);
    on_one_cpu(&mut one_cpu);
    assert_eq!(worker_count(one_cpu), "1", "at least one worker");

    // `-- COMMAND` after `--workers -1` is still the COMMAND, its own `-1` included.
    let mut command = cluster_run(&["--workers", "-1", "--steering", "hash", "--"]);
    command.args(["sh", "-c", r#"[ "$1" = "-1" ] && exec "$0" worker"#]);
    command.arg(cluster_tests::cluster_binary()).arg("-1");
    let cluster = Cluster::start_command(command);
    assert_eq!(get(cluster.addr(), "/", None).map(|r| r.status), Ok(200));
}

#[test]
fn version_names_the_program() {
    for args in [&["--version"][..], &["run", "--version"]] {
        let output = cluster_command(args).output().unwrap();
        assert!(output.status.success());
        let expected = format!("cluster {}\n", env!("CARGO_PKG_VERSION"));
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            expected,
            "{args:?}"
        );
    }
}
