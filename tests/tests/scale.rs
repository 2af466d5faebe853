//! Scaling by one slot at a time with SIGTTIN and SIGTTOU, under load: a new slot takes its share
//! of connections once its worker is ready, a removed slot leaves the selection at once and its
//! worker drains, and no request fails on the way (2 → 4 → 1 workers). In sticky mode, with 1000
//! client addresses from 127.0.0.0/8, a third slot takes addresses only from the other two (none
//! moves between old slots, and at most 1.5/3 of them move: the share is about 1/3), and removing
//! it again moves only the addresses it had. Each pool runs in a private network namespace, alone
//! on its port.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use cluster_tests::{
    Cluster, NetNs, all_gone, assert_no_fallback, field, get, load::Load, load::Reuse,
    require_root, steering_events,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// How long a scale step may take to show on a saturated 2-core machine.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends SIGTTIN or SIGTTOU and waits until the supervisor took it (its `scale requested` line
/// with `to=TARGET`): two signals of one kind sent back to back would merge into one.
fn scale(cluster: &Cluster, signal: Signal, target: u32) {
    kill(cluster.pid(), signal).expect("signal the supervisor");
    let wanted = target.to_string();
    let taken = cluster.wait_for_log(STEP_TIMEOUT, |log| {
        assert!(!log.contains("scale refused"), "{log}");
        log.lines()
            .any(|l| l.contains("scale requested") && field(l, "to") == Some(&wanted))
            .then_some(())
    });
    assert!(taken.is_some(), "{signal} was not taken\n{}", cluster.log());
}

/// One request from `source`; panics with the log if it fails.
fn ask(cluster: &Cluster, source: Option<IpAddr>) -> (u32, i32) {
    let reply = get(cluster.addr(), "/", source)
        .unwrap_or_else(|f| panic!("request from {source:?} failed: {f:?}\n{}", cluster.log()));
    assert_eq!(reply.status, 200, "{reply:?}");
    (
        reply.slot.expect("x-worker-slot"),
        reply.pid.expect("x-worker-pid"),
    )
}

/// Waits for a log line saying `event` about `slot`.
fn wait_for_line(cluster: &Cluster, event: &str, slot: u32) {
    let slot = slot.to_string();
    let seen = cluster.wait_for_log(STEP_TIMEOUT, |log| {
        log.lines()
            .any(|l| l.contains(event) && field(l, "slot") == Some(&slot))
            .then_some(())
    });
    assert!(
        seen.is_some(),
        "no `{event}` for slot {slot}\n{}",
        cluster.log()
    );
}

/// Sends bursts of new connections until the answering slots are exactly `slots` (every one of
/// them answering within a burst); returns slot → pid.
fn wait_for_slots(cluster: &Cluster, slots: u32) -> BTreeMap<u32, i32> {
    let wanted: BTreeSet<u32> = (0..slots).collect();
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let burst: BTreeMap<u32, i32> = (0..4 * slots.max(2)).map(|_| ask(cluster, None)).collect();
        if burst.keys().copied().collect::<BTreeSet<_>>() == wanted {
            return burst;
        }
        assert!(
            Instant::now() < deadline,
            "the answering slots did not become {wanted:?} (last burst {burst:?})\n{}",
            cluster.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn scaling_up_and_down_under_load_fails_no_request() {
    require_root();
    NetNs::isolated(scaling_up_and_down_under_load_fails_no_request_in);
}

fn scaling_up_and_down_under_load_fails_no_request_in(ns: &NetNs) {
    let cluster = ns.start_cluster(&["--workers", "2"]);
    let first = wait_for_slots(&cluster, 2);
    let load = Load::start(cluster.addr(), "/", 4, Reuse::NewConnection);
    assert!(
        load.wait_for_answers(200, STEP_TIMEOUT),
        "{}",
        cluster.log()
    );

    scale(&cluster, Signal::SIGTTIN, 3);
    wait_for_slots(&cluster, 3);
    scale(&cluster, Signal::SIGTTIN, 4);
    let four = wait_for_slots(&cluster, 4);
    assert_eq!(four[&0], first[&0], "scaling up left slot 0's worker alone");
    assert_eq!(four[&1], first[&1], "scaling up left slot 1's worker alone");
    // A stretch at four slots: round-robin gives each about a quarter of it.
    const AT_FOUR: u64 = 800;
    assert!(
        load.wait_for_answers(AT_FOUR, STEP_TIMEOUT),
        "{}",
        cluster.log()
    );

    let mut removed = Vec::new();
    for target in [3, 2, 1] {
        scale(&cluster, Signal::SIGTTOU, target);
        wait_for_slots(&cluster, target);
        removed.push(Pid::from_raw(four[&target]));
        assert!(
            load.wait_for_answers(200, STEP_TIMEOUT),
            "{}",
            cluster.log()
        );
    }
    let tally = load.stop();

    // Only slot 0's first worker answers now.
    let last: BTreeSet<i32> = (0..40).map(|_| ask(&cluster, None).1).collect();
    assert_eq!(last, BTreeSet::from([first[&0]]), "{}", cluster.log());
    assert!(
        all_gone(&removed, STEP_TIMEOUT),
        "the workers of removed slots did not exit\n{}",
        cluster.log()
    );
    let (status, log) = cluster.stop();
    eprintln!("load through 2 → 4 → 1: {tally:?}");

    assert_eq!(
        tally.failed, 0,
        "failed requests: {:?}\n{log}",
        tally.failures
    );
    for slot in [2, 3] {
        let got = tally.by_pid.get(&four[&slot]).copied().unwrap_or(0);
        assert!(
            got >= AT_FOUR / 4 / 2,
            "new slot {slot} (pid {}) answered only {got} requests: {tally:?}\n{log}",
            four[&slot]
        );
    }
    assert_eq!(
        log.matches("worker of a removed slot exited").count(),
        3,
        "{log}"
    );
    assert!(status.success(), "{status}\n{log}");
    // A removed slot's socket leaves the program's map a moment before the slot leaves the live
    // table, so a connection in between may be `probed` on to the next live slot (served all
    // the same). None may go unsteered.
    let events = steering_events(&log);
    eprintln!("steering events: {events:?}");
    assert_eq!(events.get("last_resort"), Some(&0), "{events:?}\n{log}");
}

/// Client addresses 127.1.x.y: every one is a loopback address, bindable as a source.
fn clients(count: u16) -> Vec<IpAddr> {
    (0..count)
        .map(|i| {
            let [high, low] = i.to_be_bytes();
            IpAddr::V4(Ipv4Addr::new(127, 1, high, low))
        })
        .collect()
}

/// The slot each address lands on now, from one new connection each (four client threads).
fn slots_by_address(cluster: &Cluster, addresses: &[IpAddr]) -> BTreeMap<IpAddr, u32> {
    let addr: SocketAddr = cluster.addr();
    let chunks: Vec<Vec<IpAddr>> = addresses
        .chunks(addresses.len().div_ceil(4))
        .map(<[_]>::to_vec)
        .collect();
    let threads: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            thread::spawn(move || {
                chunk
                    .into_iter()
                    .map(|ip| {
                        let reply = get(addr, "/", Some(ip));
                        (ip, reply)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seen = BTreeMap::new();
    for thread in threads {
        for (ip, reply) in thread.join().unwrap() {
            let reply = reply
                .unwrap_or_else(|f| panic!("request from {ip} failed: {f:?}\n{}", cluster.log()));
            assert_eq!(reply.status, 200, "{reply:?}");
            seen.insert(ip, reply.slot.expect("x-worker-slot"));
        }
    }
    seen
}

/// Addresses whose slot differs between two maps: address → (before, after).
fn moves(
    before: &BTreeMap<IpAddr, u32>,
    after: &BTreeMap<IpAddr, u32>,
) -> BTreeMap<IpAddr, (u32, u32)> {
    before
        .iter()
        .filter_map(|(ip, &was)| {
            let now = after[ip];
            (now != was).then_some((*ip, (was, now)))
        })
        .collect()
}

#[test]
fn sticky_scaling_moves_only_the_addresses_it_must() {
    require_root();
    NetNs::isolated(sticky_scaling_moves_only_the_addresses_it_must_in);
}

fn sticky_scaling_moves_only_the_addresses_it_must_in(ns: &NetNs) {
    const ADDRESSES: u16 = 1000;
    let cluster = ns.start_cluster(&["--workers", "2", "--steering", "sticky"]);
    let addresses = clients(ADDRESSES);

    let at_two = slots_by_address(&cluster, &addresses);
    assert_eq!(
        slots_by_address(&cluster, &addresses),
        at_two,
        "sticky is stable while the workers are unchanged"
    );
    let per_slot = |map: &BTreeMap<IpAddr, u32>| {
        let mut counts = BTreeMap::<u32, usize>::new();
        for slot in map.values() {
            *counts.entry(*slot).or_default() += 1;
        }
        counts
    };
    assert_eq!(per_slot(&at_two).len(), 2, "{:?}", per_slot(&at_two));

    // Up to three slots: only moves to the new slot, about a third of the addresses.
    scale(&cluster, Signal::SIGTTIN, 3);
    wait_for_line(&cluster, "worker ready", 2);
    let at_three = slots_by_address(&cluster, &addresses);
    let up = moves(&at_two, &at_three);
    eprintln!(
        "2 → 3 slots: {} of {ADDRESSES} addresses moved; per slot {:?}",
        up.len(),
        per_slot(&at_three)
    );
    let between_old: Vec<_> = up.iter().filter(|(_, (_, to))| *to != 2).collect();
    assert!(
        between_old.is_empty(),
        "addresses moved between old slots: {between_old:?}"
    );
    assert!(!up.is_empty(), "the new slot took no address");
    assert!(
        up.len() * 2 <= usize::from(ADDRESSES),
        "{} of {ADDRESSES} addresses moved, more than 1.5/3",
        up.len()
    );

    // Down to two: only the removed slot's addresses move.
    scale(&cluster, Signal::SIGTTOU, 2);
    wait_for_line(&cluster, "worker of a removed slot exited", 2);
    let back = slots_by_address(&cluster, &addresses);
    for (ip, &was) in &at_three {
        let now = back[ip];
        if was == 2 {
            assert!(now < 2, "{ip} still on the removed slot");
        } else {
            assert_eq!(
                now, was,
                "{ip} moved from slot {was} though slot 2 was removed"
            );
        }
    }
    let down = moves(&at_three, &back);
    eprintln!(
        "3 → 2 slots: {} addresses moved; per slot {:?}",
        down.len(),
        per_slot(&back)
    );
    assert_eq!(
        down.len(),
        at_three.values().filter(|&&s| s == 2).count(),
        "exactly the removed slot's addresses moved"
    );

    let (status, log) = cluster.stop();
    assert!(status.success(), "{status}\n{log}");
    assert_no_fallback(&log);
    let events = steering_events(&log);
    assert_eq!(events.get("sticky_moved"), Some(&0), "{events:?}\n{log}");
    assert_eq!(events.get("addr_unreadable"), Some(&0), "{events:?}\n{log}");
}
