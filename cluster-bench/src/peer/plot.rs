//! The peer's plot: the Node app's requests per second under each server, one panel per
//! handler and pattern (written only when the peer ran).

use std::path::Path;

use anyhow::{Context as _, Result};

use super::{Peer, handler_name};
use crate::{plots, stats::Spread};

/// The plot's file, beside the report.
pub const FILE: &str = "node-peer.svg";
pub const TITLE: &str = "Node app: requests per second under Node's cluster and this pool";

/// Writes the plot into `dir` when the peer ran.
///
/// # Errors
///
/// The SVG cannot be drawn or written.
pub fn write(peer: &Peer, dir: &Path) -> Result<()> {
    if peer.cases.is_empty() {
        return Ok(());
    }
    let path = dir.join(FILE);
    let groups = peer.groups();
    plots::panels(&path, TITLE, groups.len(), |area, i| {
        let (scenario, pattern, cases) = &groups[i];
        let labels: Vec<String> = cases.iter().map(|c| c.cell.server.to_string()).collect();
        let values: Vec<Option<Spread>> = cases
            .iter()
            .map(|c| Some(c.summary.requests_per_second))
            .collect();
        let name = format!("{} handler, {pattern}", handler_name(*scenario));
        plots::bars(area, &name, &labels, &values, "req/s")
    })
    .with_context(|| format!("drawing {}", path.display()))
}
