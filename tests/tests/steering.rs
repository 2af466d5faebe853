//! Steering modes, with the real program in the running kernel: round-robin is exact and the
//! program's own counters agree with what the workers answered; sticky keeps every client
//! address on one worker, also across a worker's replacement; hash and shared serve.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use cluster_tests::{
    Cluster, NetNs, PYTHON_SERVER, assert_counters_match, assert_exact_rotation,
    assert_no_fallback, cluster_command, cluster_run, get, require_root, steering_stats, tally,
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
    assert_counters_match(&log, &counts);
    assert_no_fallback(&log);
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

/// SIGKILLs worker `pid` of `slot` and waits for the supervisor to start its replacement.
fn kill_and_await_replacement(cluster: &Cluster, slot: u32, pid: i32) -> Option<nix::unistd::Pid> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    cluster.wait_for_log(Duration::from_secs(10), |_| cluster.started_pid(slot, 1))
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
    let new_pid = kill_and_await_replacement(&cluster, victim_slot, victim_pid)
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

/// A namespace with `2001:db8::1` for the server and `count` client addresses on loopback.
fn ipv6_namespace(count: u16, client: impl Fn(u16) -> Ipv6Addr) -> (NetNs, Vec<IpAddr>) {
    let ns = NetNs::new();
    let clients: Vec<IpAddr> = (0..count).map(|i| IpAddr::V6(client(i))).collect();
    let mut batch = String::from("addr add 2001:db8::1/128 dev lo nodad\n");
    for client in &clients {
        batch.push_str(&format!("addr add {client}/128 dev lo nodad\n"));
    }
    ns.ip_batch(&batch);
    (ns, clients)
}

#[test]
fn sticky_over_ipv6_keeps_each_address_on_one_worker() {
    require_root();
    // 40 IPv6 client addresses, each in a /64 of its own (the default prefix keeps one /64
    // together), need a namespace of our own: loopback has only ::1.
    let (ns, clients) = ipv6_namespace(40, |i| {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0x100 + i, 0, 0, 0, 1)
    });
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
    let port = cluster.addr().port();
    let listening = cluster_tests::listening_sockets()
        .into_iter()
        .filter(|(_, p)| *p == port)
        .count();
    assert_eq!(listening, 1, "shared mode has exactly one listening socket");
    // The one socket is exclusive: nobody else can bind the port, SO_REUSEPORT or not.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other.set_reuse_port(true).unwrap();
    assert!(other.bind(&cluster.addr().into()).is_err());
    let (status, log) = cluster.stop();
    assert!(status.success(), "{log}");
}

/// Kill the worker of one client's slot, with a replacement that never reports ready: that
/// slot's clients move to other workers, every other client stays where it was.
#[test]
fn sticky_moves_only_the_clients_of_an_empty_slot() {
    require_root();
    let clients = ipv4_clients();
    let marker = std::env::temp_dir().join(format!("cluster-test-sticky-{}", std::process::id()));
    // The demo worker on its first start in a slot; later starts never report ready.
    let script =
        r#"m="$1.$CLUSTER_WORKER_ID"; [ -e "$m" ] && exec sleep 600; touch "$m"; exec "$0" worker"#;
    let mut command = cluster_run(&["--workers", "4", "--steering", "sticky", "--wait-ready"]);
    command.args(["--ready-timeout", "600", "--", "sh", "-c", script]);
    command.arg(cluster_tests::cluster_binary()).arg(&marker);
    let cluster = Cluster::start_command(command);
    let before = sticky_map(cluster.addr(), &clients, 3);
    let (victim_slot, victim_pid) = before[&clients[0]];
    let replaced = kill_and_await_replacement(&cluster, victim_slot, victim_pid);
    assert!(replaced.is_some(), "{}", cluster.log());
    let after = sticky_map(cluster.addr(), &clients, 3);
    for slot in 0..4 {
        let _ = std::fs::remove_file(format!("{}.{slot}", marker.display()));
    }
    for client in &clients {
        let (was, _) = before[client];
        let (now, _) = after[client];
        if was == victim_slot {
            assert_ne!(now, victim_slot, "{client} reached the empty slot");
        } else {
            assert_eq!(now, was, "{client} moved although its slot {was} serves");
        }
    }
    let (_, log) = cluster.stop();
    let events = cluster_tests::steering_events(&log);
    assert!(events["sticky_moved"] > 0, "{events:?}");
}

#[test]
fn two_pools_map_the_same_addresses_differently() {
    require_root();
    let clients = ipv4_clients();
    let slots_of = |map: &BTreeMap<IpAddr, (u32, i32)>| -> Vec<u32> {
        clients.iter().map(|c| map[c].0).collect()
    };
    let first = Cluster::start(&["--workers", "4", "--steering", "sticky"]);
    let a = slots_of(&sticky_map(first.addr(), &clients, 1));
    drop(first);
    let second = Cluster::start(&["--workers", "4", "--steering", "sticky"]);
    let b = slots_of(&sticky_map(second.addr(), &clients, 1));
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    // Independent keys: about 3 in 4 addresses land elsewhere; fewer than 10 of 40 has odds
    // below 1e-9.
    assert!(
        differ >= 10,
        "only {differ} of 40 addresses mapped differently: {a:?} {b:?}"
    );
}

#[test]
fn the_sticky_prefix_keeps_a_network_together() {
    require_root();
    // 16 privacy addresses in one /64, as a client whose address rotates would use.
    let (ns, clients) = ipv6_namespace(16, |i| {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 7, i * 977, 0x1234, i, 0x100 + i)
    });
    let run = |prefix: &str| {
        let mut command =
            cluster_command(&["run", "--listen", "[2001:db8::1]:0", "--workers", "4"]);
        command.args(["--steering", "sticky", "--sticky-prefix", prefix]);
        ns.enter(&mut command);
        let cluster = Cluster::start_command(command);
        let addr = cluster.addr();
        let map = ns.run(|| sticky_map(addr, &clients, 2));
        slots_used(&map)
    };
    assert_eq!(run("32,64").len(), 1, "one /64, one worker");
    assert!(run("32,128").len() >= 2, "whole addresses spread");
}

/// Starting and draining sockets are members of the group; while any worker serves, one that
/// never reports ready gets no connection. Slot 0's worker accepts but never says READY=1.
#[test]
fn a_worker_that_never_reports_ready_gets_no_connection() {
    require_root();
    let addr = cluster_tests::free_local_addr();
    let mut command = cluster_command(&["run", "--listen", &addr.to_string(), "--workers", "3"]);
    command.args(["--wait-ready", "--ready-timeout", "60", "--", "sh", "-c"]);
    command.arg(r#"if [ "$CLUSTER_WORKER_ID" = 0 ]; then exec python3 -c "$0"; fi; exec python3 -c "$0" notify"#);
    command.arg(PYTHON_SERVER);
    let cluster = Cluster::spawn_command(command);
    let serving = cluster.wait_for_log(Duration::from_secs(20), |log| {
        (1..3)
            .all(|slot| log.contains(&format!("worker ready slot={slot} ")))
            .then_some(())
    });
    assert!(serving.is_some(), "{}", cluster.log());
    let counts = tally(addr, "/", 60, 2);
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        vec![1, 2],
        "{counts:?}"
    );
    assert!(!cluster.log().contains("worker ready slot=0 "));
}
