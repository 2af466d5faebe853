//! Steering modes, with the real program in the running kernel: round-robin is exact and the
//! program's own counters agree with what the workers answered; sticky keeps every client
//! address on one worker, also across a worker's replacement; hash and shared serve.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use cluster_tests::{
    Cluster, NetNs, assert_exact_rotation, cluster_command, get, require_root, steering_stats,
    tally,
};

fn round_robin(workers: u32) {
    require_root();
    let cluster = Cluster::start(&[
        "--workers",
        &workers.to_string(),
        "--steering",
        "round-robin",
    ]);
    let counts = tally(cluster.addr(), "/", 2000, 4);
    eprintln!("round-robin, {workers} workers, 2000 connections: {counts:?}");
    assert_exact_rotation(&counts, workers);

    let (status, log) = cluster.stop();
    assert!(status.success(), "{status}\n{log}");
    let stats = steering_stats(&log);
    let connections: BTreeMap<u32, u64> = stats.iter().map(|(s, (c, _))| (*s, *c)).collect();
    assert_eq!(
        connections, counts,
        "the program's counters disagree with the workers\n{log}"
    );
}

#[test]
fn round_robin_two_workers_is_exact() {
    round_robin(2);
}

#[test]
fn round_robin_four_workers_is_exact() {
    round_robin(4);
}

#[test]
fn round_robin_over_ipv6() {
    require_root();
    let cluster = Cluster::start_listening("[::1]:0", &["--workers", "3"]);
    assert!(cluster.addr().is_ipv6());
    let counts = tally(cluster.addr(), "/", 300, 3);
    assert_exact_rotation(&counts, 3);
}

/// 40 IPv4 client addresses on loopback (all of 127.0.0.0/8 is local).
fn ipv4_clients() -> Vec<IpAddr> {
    (0..40)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + i)))
        .collect()
}

/// Which slot and pid every client address reaches, asserting each address always reaches the
/// same one over `repeats` new connections.
fn sticky_map(
    addr: SocketAddr,
    clients: &[IpAddr],
    repeats: usize,
) -> BTreeMap<IpAddr, (u32, i32)> {
    clients
        .iter()
        .map(|&client| {
            let seen: Vec<(u32, i32)> = (0..repeats)
                .map(|_| {
                    let reply = get(addr, "/", Some(client))
                        .unwrap_or_else(|f| panic!("request from {client} failed: {f:?}"));
                    (reply.slot.unwrap(), reply.pid.unwrap())
                })
                .collect();
            assert!(
                seen.windows(2).all(|w| w[0] == w[1]),
                "{client} was not sticky: {seen:?}"
            );
            (client, seen[0])
        })
        .collect()
}

fn slots_used(map: &BTreeMap<IpAddr, (u32, i32)>) -> BTreeSet<u32> {
    map.values().map(|(slot, _)| *slot).collect()
}

#[test]
fn sticky_keeps_each_address_on_one_worker_across_a_replacement() {
    require_root();
    let cluster = Cluster::start(&["--workers", "4", "--steering", "sticky"]);
    let clients = ipv4_clients();
    let before = sticky_map(cluster.addr(), &clients, 5);
    assert!(
        slots_used(&before).len() >= 2,
        "sticky used fewer than 2 workers: {before:?}"
    );

    // Kill the worker of the first client's slot; wait for its replacement to serve.
    let (victim_slot, victim_pid) = before[&clients[0]];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim_pid),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    let replaced = cluster.wait_for_log(Duration::from_secs(10), |_| {
        cluster.started_pid(victim_slot, 1)
    });
    let new_pid = replaced
        .unwrap_or_else(|| panic!("slot {victim_slot} was not refilled\n{}", cluster.log()));
    let ready = format!("worker ready slot={victim_slot} pid={new_pid}");
    let joined = cluster.wait_for_log(Duration::from_secs(10), |log| {
        log.contains(&ready).then_some(())
    });
    assert!(joined.is_some(), "{}", cluster.log());

    let after = sticky_map(cluster.addr(), &clients, 5);
    for (client, (slot, pid)) in &before {
        let (slot_after, pid_after) = after[client];
        assert_eq!(
            slot_after, *slot,
            "{client} moved from slot {slot} to {slot_after}"
        );
        if *slot == victim_slot {
            assert_eq!(
                pid_after,
                new_pid.as_raw(),
                "{client} is not on the replacement"
            );
        } else {
            assert_eq!(pid_after, *pid, "{client} changed worker");
        }
    }
}

#[test]
fn sticky_over_ipv6_keeps_each_address_on_one_worker() {
    require_root();
    // 40 IPv6 client addresses need a namespace of our own: loopback has only ::1.
    let ns = NetNs::new();
    let clients: Vec<IpAddr> = (0..40u16)
        .map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100 + i)))
        .collect();
    let mut batch = String::from("addr add 2001:db8::1/128 dev lo nodad\n");
    for client in &clients {
        batch.push_str(&format!("addr add {client}/128 dev lo nodad\n"));
    }
    ns.ip_batch(&batch);
    let mut command = cluster_command(&["run", "--listen", "[2001:db8::1]:0", "--workers", "4"]);
    command.args(["--steering", "sticky"]);
    ns.enter(&mut command);
    let cluster = Cluster::start_command(command);
    let addr = cluster.addr();
    let map = ns.run(|| sticky_map(addr, &clients, 5));
    assert!(
        slots_used(&map).len() >= 2,
        "sticky used fewer than 2 workers: {map:?}"
    );
    let (status, log) = cluster.stop();
    assert!(status.success(), "{log}");
    let events = log
        .lines()
        .find(|l| l.contains("steering events"))
        .unwrap_or_default();
    assert!(
        events.contains("addr_unreadable=0"),
        "the program could not read IPv6 sources: {events}"
    );
}

#[test]
fn hash_mode_serves_without_a_program() {
    let cluster = Cluster::start(&["--workers", "2", "--steering", "hash"]);
    let counts = tally(cluster.addr(), "/", 200, 2);
    eprintln!("hash, 2 workers, 200 connections: {counts:?}");
    assert_eq!(counts.values().sum::<u64>(), 200);
    // 200 connections from random ports: all on one of 2 sockets has probability 2^-199.
    assert_eq!(counts.len(), 2, "{counts:?}");
    let (status, log) = cluster.stop();
    assert!(status.success(), "{log}");
    assert!(
        steering_stats(&log).is_empty(),
        "hash mode must not load the program\n{log}"
    );
}

#[test]
fn shared_mode_serves_from_one_socket() {
    let cluster = Cluster::start(&["--workers", "2", "--steering", "shared"]);
    let counts = tally(cluster.addr(), "/", 200, 2);
    eprintln!("shared, 2 workers, 200 connections: {counts:?}");
    assert_eq!(counts.values().sum::<u64>(), 200);
    assert!(counts.keys().all(|slot| *slot < 2), "{counts:?}");
    // The one socket is exclusive: nobody else can bind the port, SO_REUSEPORT or not.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other.set_reuse_port(true).unwrap();
    assert!(other.bind(&cluster.addr().into()).is_err());
    let (status, log) = cluster.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn sticky_moves_only_the_clients_of_an_empty_slot() {
    require_root();
    let clients = ipv4_clients();
    let healthy = Cluster::start(&["--workers", "4", "--steering", "sticky"]);
    let baseline = sticky_map(healthy.addr(), &clients, 3);
    drop(healthy);
    let on_slot_0 = baseline.values().filter(|(slot, _)| *slot == 0).count();
    assert!(on_slot_0 > 0, "no client on slot 0 to move: {baseline:?}");

    // Same pool, but slot 0's worker exits at once: it never reports ready, so slot 0 stays
    // out of the selection. The other slots run the demo worker (`cluster worker`) as COMMAND.
    let addr = cluster_tests::free_local_addr();
    let mut command = cluster_command(&["run", "--listen", &addr.to_string(), "--workers", "4"]);
    command.args(["--steering", "sticky", "--wait-ready", "--", "sh", "-c"]);
    command.arg(r#"[ "$CLUSTER_WORKER_ID" = 0 ] && exit 1; exec "$0" worker"#);
    command.arg(cluster_tests::cluster_binary());
    let degraded = Cluster::spawn_command(command);
    // The pool never reports ready (slot 0 never is); wait for the other three.
    let serving = degraded.wait_for_log(Duration::from_secs(20), |log| {
        (1..4)
            .all(|slot| log.contains(&format!("worker ready slot={slot} ")))
            .then_some(())
    });
    assert!(serving.is_some(), "{}", degraded.log());
    let moved = sticky_map(addr, &clients, 3);
    for client in &clients {
        let (before, _) = baseline[client];
        let (after, _) = moved[client];
        if before == 0 {
            assert_ne!(after, 0, "{client} reached the empty slot");
        } else {
            assert_eq!(
                after, before,
                "{client} moved although its slot {before} serves"
            );
        }
    }
}
