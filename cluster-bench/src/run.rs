//! One run: a fresh pool for the case, the load against it, the CPU the pool and the generator
//! used meanwhile, then the pool stopped.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use cluster_load::{Config, LatencySummary, PathMix, Target};

use crate::{
    cpu::{self, Placement},
    kills::KillAccount,
    lifecycle::{self, Clock, Lifecycle, LifecycleRun},
    matrix::{Iterations, Mode, Pattern, Scenario, Step},
    pool::{Pool, PoolTicks},
    progress::Progress,
    results::{Calibration, CpuSeconds, Run},
};

/// What every run shares.
#[derive(Debug)]
pub struct Runner<'a> {
    pub binary: &'a Path,
    pub runtime: &'a tokio::runtime::Runtime,
    pub placement: &'a Placement,
    pub progress: &'a Progress,
    pub workers: u32,
    pub concurrency: usize,
    pub duration: Duration,
    pub iterations: Iterations,
}

impl Runner<'_> {
    /// Runs `step` on a pool of its own.
    pub fn run(&self, step: Step) -> Result<Run> {
        let case = step.case;
        let what = format!(
            "{} {} {} (round {})",
            case.scenario, case.pattern, case.mode, step.round
        );
        self.progress.start_run(&what);
        let workers = case.mode.workers(self.workers);
        let pool = self.pool(case.mode.steering(), workers)?;
        let mut config = self.load_config(
            pool.addr,
            &case.scenario.mix(&self.iterations),
            case.pattern,
        )?;
        config.spread_sources = case.mode.spread_sources();
        let run = self.measure(&what, step.round, config, workers, &|| pool.ticks())?;
        pool.stop()?;
        self.progress.run_done();
        Ok(run)
    }

    /// The bench's load against `addr`: the weighted paths `mix`, in `pattern`.
    pub fn load_config(&self, addr: SocketAddr, mix: &str, pattern: Pattern) -> Result<Config> {
        let mut config = Config::new(Target::from_addr(addr));
        config.paths = PathMix::parse(mix)?;
        config.concurrency = self.concurrency;
        config.duration = self.duration;
        config.mode = pattern.connection_mode();
        Ok(config)
    }

    /// Runs the load of `config` against a server of `slots` workers started for the run
    /// `what`, and the CPU its processes (`ticks`) and the generator used meanwhile.
    pub fn measure(
        &self,
        what: &str,
        round: usize,
        config: Config,
        slots: u32,
        ticks: &dyn Fn() -> Result<PoolTicks>,
    ) -> Result<Run> {
        let pool_before = ticks()?;
        let generator_before = cpu::ticks("self")?;
        let report = self
            .runtime
            .block_on(async { self.follow(what, cluster_load::start(config)?).await })?;
        let generator_after = cpu::ticks("self")?;
        let pool_after = ticks()?;

        #[expect(clippy::cast_precision_loss, reason = "clock ticks far below 2^52")]
        let seconds = |ticks: u64| ticks as f64 / cpu::ticks_per_second() as f64;
        Ok(Run {
            round,
            elapsed_seconds: report.elapsed_seconds,
            requests: report.requests,
            ok: report.ok,
            failed: report.failed,
            requests_per_second: report.requests_per_second,
            latency: report.latency,
            errors: report.errors,
            by_slot: report.by_slot.with_values(0..u64::from(slots)),
            cpu: CpuSeconds {
                workers: seconds(pool_after.workers.saturating_sub(pool_before.workers)),
                supervisor: seconds(pool_after.supervisor.saturating_sub(pool_before.supervisor)),
                generator: seconds(generator_after.own.saturating_sub(generator_before.own)),
            },
        })
    }

    /// Waits for `running` to finish while the progress display follows it as `what`.
    pub async fn follow(
        &self,
        what: &str,
        running: cluster_load::Running,
    ) -> Result<cluster_load::Report, cluster_load::LoadError> {
        let follow = tokio::spawn(
            self.progress
                .clone()
                .follow(what.to_owned(), running.live()),
        );
        let report = running.finish().await;
        follow.abort();
        report
    }

    /// Runs lifecycle `scenario` on a pool in `mode`: the light handler under load, recorded
    /// as a time series, while the pool is disturbed.
    pub fn lifecycle(
        &self,
        scenario: Lifecycle,
        mode: Mode,
        pattern: Pattern,
    ) -> Result<LifecycleRun> {
        let what = format!("{} {pattern} {mode}", scenario.name());
        self.progress.start_run(&what);
        let options = scenario.pool_options();
        let pool = self.pool_with(mode.steering(), mode.workers(self.workers), options)?;
        let mut config =
            self.load_config(pool.addr, &Scenario::Light.mix(&self.iterations), pattern)?;
        config.spread_sources = mode.spread_sources();
        config.timeout = scenario.request_timeout();
        config.timeline = Some(lifecycle::timeline_bucket(self.duration));
        let timeout_seconds = config.timeout.as_secs_f64();
        // Started outside the runtime's loop, so the disturbing thread shares its clock; its
        // clients run once `block_on` drives the runtime.
        let running = {
            let _runtime = self.runtime.enter();
            cluster_load::start(config)?
        };
        let clock = Clock {
            started: running.started(),
            duration: self.duration,
        };
        let live = running.live();
        let (report, disturbed) = std::thread::scope(|scope| {
            let disturber = scope.spawn(|| lifecycle::disturb(&pool, scenario, mode, clock, &live));
            let report = self.runtime.block_on(self.follow(&what, running));
            let disturbed = disturber
                .join()
                .map_err(|_| anyhow::anyhow!("the disturbing thread panicked"))?;
            anyhow::Ok((report?, disturbed?))
        })?;
        pool.stop()?;
        self.progress.run_done();
        Ok(LifecycleRun {
            scenario,
            mode,
            pattern,
            pool_options: options.iter().map(|o| (*o).to_owned()).collect(),
            timeout_seconds,
            disturbances: disturbed.made,
            requests: report.requests,
            failed: report.failed,
            kill: (scenario == Lifecycle::Kill).then(|| {
                KillAccount::of(disturbed.kills, report.failed, &report.kept_alive_failures)
            }),
            errors: report.errors,
            events: disturbed.events,
            timeline: report.timeline.unwrap_or_default(),
        })
    }

    /// Measures what the uniform handler's loop costs: one worker, one client, requests one
    /// after another, the median of `/work` less the median of `GET /` (`calibrate_on`).
    pub fn calibrate(&self) -> Result<Calibration> {
        self.progress.start_run("calibrating the /work loop");
        let pool = self.pool(Mode::Single.steering(), 1)?;
        let calibration = self.calibrate_on(pool.addr, self.iterations.uniform)?;
        pool.stop()?;
        Ok(calibration)
    }

    /// Measures what `/work?iterations=N` costs the one worker serving at `addr`.
    pub fn calibrate_on(&self, addr: SocketAddr, iterations: u64) -> Result<Calibration> {
        let median = |path: String| -> Result<LatencySummary> {
            let mut config = Config::new(Target::from_addr(addr));
            config.paths = PathMix::single(&path)?;
            config.concurrency = 1;
            config.duration = Duration::from_secs(1);
            config.mode = cluster_load::ConnectionMode::KeepAlive;
            Ok(self.runtime.block_on(cluster_load::run(config))?.latency)
        };
        let light = median("/".to_owned())?;
        let work = median(format!("/work?iterations={iterations}"))?;
        #[expect(clippy::cast_precision_loss, reason = "microseconds far below 2^52")]
        let loop_ms = work.p50_us.saturating_sub(light.p50_us) as f64 / 1000.0;
        #[expect(clippy::cast_precision_loss, reason = "iterations far below 2^52")]
        let ns_per_iteration = loop_ms * 1e6 / iterations as f64;
        Ok(Calibration {
            iterations,
            loop_ms,
            ns_per_iteration,
        })
    }

    fn pool(&self, steering: &str, workers: u32) -> Result<Pool> {
        self.pool_with(steering, workers, &[])
    }

    /// A pool placed as the bench's placement says, with `extra` options for `cluster run`.
    pub fn pool_with(&self, steering: &str, workers: u32, extra: &[&str]) -> Result<Pool> {
        Pool::start(
            self.binary,
            steering,
            workers,
            self.placement.pool_restriction(),
            extra,
        )
        .with_context(|| format!("a pool for {steering}"))
    }
}
