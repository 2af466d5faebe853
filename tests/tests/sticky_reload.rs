//! In sticky mode a reload changes every worker and no client's slot: under a load from many
//! source addresses, every answer for an address comes from the slot it had before the reload,
//! during and after it (pids change, slots don't). Connections migrated from a closing socket
//! land on their own slot's serving socket too: a worker stuck in `GET /work` cannot drain, so
//! the connections queued behind it are still on its socket when it is killed at
//! `--drain-timeout`, and the kernel moves them through the program, which sends each to its
//! address's slot, now served by the replacement. The pool runs in a private network namespace,
//! alone on its port, with client addresses from 127.0.0.0/8.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use cluster_tests::{
    Cluster, Failure, NetNs, Reply, assert_no_fallback, get, process_gone, require_root,
    steering_events, steering_stats,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// How long a condition may take to show on a saturated 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Connections queued behind the stuck worker before the reload.
const QUEUED: usize = 8;

/// `count` loopback addresses `127.N.x.y`, each bindable as a source.
fn addresses(n: u8, count: u16) -> Vec<IpAddr> {
    (1..=count)
        .map(|i| {
            let [high, low] = i.to_be_bytes();
            IpAddr::V4(Ipv4Addr::new(127, n, high, low))
        })
        .collect()
}

/// The slot each address lands on, from one new connection each.
fn slots_of(cluster: &Cluster, addresses: &[IpAddr]) -> BTreeMap<IpAddr, u32> {
    addresses
        .iter()
        .map(|&ip| {
            let reply = get(cluster.addr(), "/", Some(ip))
                .unwrap_or_else(|f| panic!("request from {ip}: {f:?}\n{}", cluster.log()));
            (ip, reply.slot.expect("x-worker-slot"))
        })
        .collect()
}

/// What the sticky load saw.
#[derive(Debug, Default)]
struct Seen {
    /// Answers by (slot, pid).
    by_worker: BTreeMap<(u32, i32), u64>,
    /// Answers from a slot other than the address's own: (address, its slot, answering slot).
    wrong_slot: Vec<(IpAddr, u32, u32)>,
    /// Requests that failed: (address, how).
    failed: Vec<(IpAddr, Failure)>,
}

impl Seen {
    fn merge(&mut self, other: Self) {
        for (worker, n) in other.by_worker {
            *self.by_worker.entry(worker).or_insert(0) += n;
        }
        self.wrong_slot.extend(other.wrong_slot);
        self.failed.extend(other.failed);
    }
}

/// Client threads, each sending `GET /` on a new connection from its addresses in turn.
#[derive(Debug)]
struct StickyLoad {
    stop: Arc<AtomicBool>,
    /// Answers each thread got.
    answered: Vec<Arc<AtomicU64>>,
    threads: Vec<JoinHandle<Seen>>,
}

impl StickyLoad {
    /// One thread per group of addresses; `slots` is each address's slot.
    fn start(addr: SocketAddr, groups: Vec<Vec<IpAddr>>, slots: &BTreeMap<IpAddr, u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered: Vec<Arc<AtomicU64>> =
            groups.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
        let threads = groups
            .into_iter()
            .zip(&answered)
            .map(|(group, answered)| {
                let (stop, answered) = (Arc::clone(&stop), Arc::clone(answered));
                let own: Vec<(IpAddr, u32)> = group.iter().map(|ip| (*ip, slots[ip])).collect();
                thread::spawn(move || {
                    let mut seen = Seen::default();
                    for &(ip, slot) in own.iter().cycle() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match get(addr, "/", Some(ip)) {
                            Ok(Reply {
                                status: 200,
                                slot: Some(got),
                                pid: Some(pid),
                                ..
                            }) => {
                                *seen.by_worker.entry((got, pid)).or_insert(0) += 1;
                                if got != slot {
                                    seen.wrong_slot.push((ip, slot, got));
                                }
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => seen.failed.push((ip, Failure::Other)),
                            Err(failure) => seen.failed.push((ip, failure)),
                        }
                    }
                    seen
                })
            })
            .collect();
        Self {
            stop,
            answered,
            threads,
        }
    }

    /// Waits until every thread got its part of `more` answers, so that every group of
    /// addresses (each slot's) was answered, however the threads were scheduled.
    fn wait_for_answers(&self, more: u64, cluster: &Cluster) {
        let each = more.div_ceil(self.answered.len().max(1) as u64);
        let targets: Vec<u64> = self
            .answered
            .iter()
            .map(|a| a.load(Ordering::Relaxed) + each)
            .collect();
        let deadline = Instant::now() + TIMEOUT;
        while self
            .answered
            .iter()
            .zip(&targets)
            .any(|(a, &target)| a.load(Ordering::Relaxed) < target)
        {
            assert!(
                Instant::now() < deadline,
                "the sticky load got no {more} answers\n{}",
                cluster.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Seen::default();
        for thread in self.threads {
            all.merge(thread.join().expect("load thread"));
        }
        all
    }
}

/// Connections waiting in the accept queues of the sockets listening on `port`, in the calling
/// thread's network namespace (`rx_queue` of a listening socket is its accept queue length).
fn queued(port: u16) -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/tcp").expect("read /proc/net/tcp");
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
            let rx = cols.get(4)?.split(':').nth(1)?;
            (cols.get(3) == Some(&"0A") && local_port == port)
                .then(|| u64::from_str_radix(rx, 16).ok())?
        })
        .sum()
}

/// CPU time a process has used, in clock ticks.
fn cpu_ticks(pid: Pid) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let (_, rest) = stat.rsplit_once(')').expect("stat format");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn a_sticky_reload_keeps_every_address_on_its_slot_even_through_migration() {
    require_root();
    NetNs::isolated(a_sticky_reload_keeps_every_address_on_its_slot_even_through_migration_in);
}

fn a_sticky_reload_keeps_every_address_on_its_slot_even_through_migration_in(ns: &NetNs) {
    let cluster = ns.start_cluster(&[
        "--workers",
        "2",
        "--steering",
        "sticky",
        "--drain-timeout",
        "3",
    ]);
    let addr = cluster.addr();
    let port = addr.port();
    let old: Vec<Pid> = (0..2)
        .map(|slot| cluster.started_pid(slot, 0).expect("worker pid"))
        .collect();

    let load_addresses = addresses(2, 64);
    let slots = slots_of(&cluster, &load_addresses);
    let spare = slots_of(&cluster, &addresses(3, 64));
    let on = |map: &BTreeMap<IpAddr, u32>, slot: u32| -> Vec<IpAddr> {
        map.iter()
            .filter(|&(_, s)| *s == slot)
            .map(|(ip, _)| *ip)
            .collect()
    };
    let (load0, load1) = (on(&slots, 0), on(&slots, 1));
    let spare1 = on(&spare, 1);
    assert!(
        !load0.is_empty() && !load1.is_empty() && spare1.len() > QUEUED,
        "addresses on both slots: {slots:?} {spare:?}"
    );

    // Two load threads per slot, so that slot 0's clients are not held up behind slot 1's.
    let halves = |list: &[IpAddr]| {
        let (a, b) = list.split_at(list.len() / 2);
        vec![a.to_vec(), b.to_vec()]
    };
    let (groups0, groups1) = (halves(&load0), halves(&load1));
    let all_groups: Vec<Vec<IpAddr>> = groups0.iter().chain(&groups1).cloned().collect();
    let non_empty = |groups: Vec<Vec<IpAddr>>| -> Vec<Vec<IpAddr>> {
        groups.into_iter().filter(|g| !g.is_empty()).collect()
    };
    // Before: the load on the old workers. It stops before slot 1's worker gets stuck, because a
    // connection that worker accepted just before it stuck would die with it.
    let load = StickyLoad::start(addr, non_empty(all_groups), &slots);
    load.wait_for_answers(100, &cluster);
    let mut seen = load.stop();

    // Slot 1's worker gets stuck; connections from its addresses then queue on its socket.
    let stuck_from = spare1[0];
    let stuck = thread::spawn(move || get(addr, "/work?iterations=10000000000", Some(stuck_from)));
    let ticks = cpu_ticks(old[1]);
    let deadline = Instant::now() + TIMEOUT;
    while cpu_ticks(old[1]) < ticks + 30 {
        assert!(
            Instant::now() < deadline,
            "slot 1's worker does not burn CPU"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let waiting: Vec<(IpAddr, JoinHandle<Result<Reply, Failure>>)> = spare1[1..=QUEUED]
        .iter()
        .map(|&ip| (ip, thread::spawn(move || get(addr, "/", Some(ip)))))
        .collect();
    let deadline = Instant::now() + TIMEOUT;
    while queued(port) < QUEUED as u64 {
        assert!(
            Instant::now() < deadline,
            "{} of {QUEUED} connections queued\n{}",
            queued(port),
            cluster.log()
        );
        thread::sleep(Duration::from_millis(20));
    }

    // During and after: the load again, and the reload at once, so that the queued connections
    // wait for the replacement and the drain deadline only, well within the client's 20 s
    // timeout. (Not before the accept queue is read: /proc/net/tcp lists every TIME_WAIT socket
    // the load leaves, and reading it then takes seconds.)
    let load_on_0 = StickyLoad::start(addr, non_empty(groups0), &slots);
    let load_on_1 = StickyLoad::start(addr, non_empty(groups1), &slots);
    kill(cluster.pid(), Signal::SIGHUP).expect("signal the supervisor");
    let finished = cluster.wait_for_log(TIMEOUT, |log| {
        assert!(!log.contains("reload failed"), "{log}");
        log.contains("reload finished").then_some(())
    });
    assert!(finished.is_some(), "{}", cluster.log());
    let deadline = Instant::now() + TIMEOUT;
    while !old.iter().all(|p| process_gone(*p)) {
        assert!(
            Instant::now() < deadline,
            "old workers still there\n{}",
            cluster.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
    load_on_0.wait_for_answers(100, &cluster);
    load_on_1.wait_for_answers(100, &cluster);
    seen.merge(load_on_0.stop());
    seen.merge(load_on_1.stop());
    let new: Vec<Pid> = (0..2)
        .map(|slot| cluster.started_pid(slot, 1).expect("replacement pid"))
        .collect();
    let migrated_replies: Vec<(IpAddr, Result<Reply, Failure>)> = waiting
        .into_iter()
        .map(|(ip, t)| (ip, t.join().unwrap()))
        .collect();
    let stuck = stuck.join().unwrap();
    let (status, log) = cluster.stop();
    eprintln!("sticky load before, during and after the reload: {seen:?}");
    eprintln!("old {old:?}, new {new:?}; queued replies {migrated_replies:?}");

    assert!(seen.failed.is_empty(), "failed: {:?}\n{log}", seen.failed);
    assert!(
        seen.wrong_slot.is_empty(),
        "answers from another slot: {:?}\n{log}",
        seen.wrong_slot
    );
    let workers: BTreeSet<(u32, i32)> = seen.by_worker.keys().copied().collect();
    let expected: BTreeSet<(u32, i32)> = [(0, old[0]), (1, old[1]), (0, new[0]), (1, new[1])]
        .into_iter()
        .map(|(slot, pid)| (slot, pid.as_raw()))
        .collect();
    assert_eq!(
        workers, expected,
        "each slot's old worker answered before the reload, its replacement after"
    );

    for (ip, reply) in &migrated_replies {
        let reply = reply
            .as_ref()
            .unwrap_or_else(|f| panic!("the connection queued from {ip} was lost: {f:?}\n{log}"));
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(
            (reply.slot, reply.pid),
            (Some(1), Some(new[1].as_raw())),
            "the connection queued from {ip} was served by its slot's replacement\n{log}"
        );
    }
    assert!(stuck.is_err(), "the stuck request died with its worker");

    let stats = steering_stats(&log);
    let migrated_to_1 = stats.get(&1).map_or(0, |(_, m)| *m);
    assert!(
        migrated_to_1 >= QUEUED as u64,
        "slot 1 got the queued connections by migration: {stats:?}\n{log}"
    );
    let events = steering_events(&log);
    assert_eq!(events.get("sticky_moved"), Some(&0), "{events:?}\n{log}");
    assert_no_fallback(&log);
    assert!(status.success(), "{status}\n{log}");
}
