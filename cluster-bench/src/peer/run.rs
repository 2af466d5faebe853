//! One peer run: the Node app started fresh under Node's cluster or under this pool as a
//! COMMAND, the matrix's load with the app's loop lengths, the CPU used meanwhile, then the
//! server stopped; and what the seeds' loop costs one Node worker.

use std::path::Path;

use anyhow::{Context as _, Result};

use super::{
    NODE_ITERATIONS, Server,
    node::{self, NodeCluster},
    plan::{self, PeerStep},
};
use crate::{
    matrix::Mode,
    pool::Pool,
    results::{Calibration, Run},
    run::Runner,
};

/// Runs the peer with what every matrix run shares.
#[derive(Debug)]
pub struct PeerRunner<'a> {
    pub runner: &'a Runner<'a>,
    /// The app (`server.js`).
    pub app: &'a Path,
}

impl PeerRunner<'_> {
    /// Runs `step` on a server of its own.
    pub fn run(&self, step: PeerStep) -> Result<Run> {
        let runner = self.runner;
        let cell = step.cell;
        let what = format!(
            "{} {} node app under {} (round {})",
            cell.scenario, cell.pattern, cell.server, step.round
        );
        runner.progress.start_run(&what);
        let workers = runner.workers;
        let cpus = runner.placement.pool_restriction();
        let load = |addr| runner.load_config(addr, &plan::mix(cell), cell.pattern);
        let run = match cell.server {
            Server::NodeCluster => {
                let cluster = NodeCluster::start(self.app, workers, cpus)?;
                let run =
                    runner.measure(&what, step.round, load(cluster.addr)?, workers, &|| {
                        cluster.ticks()
                    })?;
                cluster.stop()?;
                run
            }
            Server::Pool(mode) => {
                let pool = self.pool(mode, workers)?;
                let run = runner.measure(&what, step.round, load(pool.addr)?, workers, &|| {
                    pool.ticks()
                })?;
                pool.stop()?;
                run
            }
        };
        runner.progress.run_done();
        runner.progress.note_run(
            &format!(
                "node app {} {} {} round {}",
                cell.scenario, cell.pattern, cell.server, step.round
            ),
            &run,
        );
        Ok(run)
    }

    /// What the seeds' loop costs: one Node worker under this pool, as the matrix's calibration
    /// measures the demo worker.
    pub fn calibrate(&self) -> Result<Calibration> {
        self.runner
            .progress
            .start_run("calibrating the Node app's /work loop");
        let pool = self.pool(Mode::Single, 1)?;
        let calibration = self
            .runner
            .calibrate_on(pool.addr, NODE_ITERATIONS.uniform)?;
        pool.stop()?;
        self.runner.progress.run_done();
        Ok(calibration)
    }

    fn pool(&self, mode: Mode, workers: u32) -> Result<Pool> {
        Pool::start_command(
            self.runner.binary,
            mode.steering(),
            workers,
            self.runner.placement.pool_restriction(),
            &[],
            &node::worker_command(self.app),
        )
        .with_context(|| format!("a {mode} pool running the Node app"))
    }
}
