//! `inspect3d bench node`: the node end to end over DDS. Starts an inspect3d_node (the binary beside this one)
//! with the bundled model and measures, per input: round-trip latency (scan published → result received, one
//! scan at a time), the node's own latency (receipt → scored), sustained scans per second when scans arrive
//! faster than it can score them (newest-wins queue), and the node's peak memory.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use r2r::inspect3d_msgs::msg::InspectionResult;

use super::client::{InspectorClient, unique_stamp};
use crate::bench::{cpu_seconds_of, peak_memory_mib_of};
use crate::cloud::PointCloud;
use crate::cloud::pointcloud2::{self, PointCloud2Layout};
use crate::inspector::median_and_p95;

pub struct NodeBenchInput {
    pub name: String,
    pub cloud: PointCloud,
}

/// An inspect3d_node (the binary beside this one) started for a benchmark, with its own name and input topic;
/// stopped when dropped.
pub(crate) struct BenchNode {
    process: Child,
    name: String,
    topic: String,
}

impl BenchNode {
    /// Starts the node with `model` (and `params`, `name:=value` each) and connects a client to it.
    pub(crate) fn start(
        repo: &Path,
        model: &Path,
        params: &[String],
        timeout: Duration,
    ) -> Result<(Self, InspectorClient)> {
        let exe = std::env::current_exe()?.with_file_name("inspect3d_node");
        if !exe.exists() {
            bail!("{} not found: build it with `cargo build --release --bins`", exe.display());
        }
        let name = format!("inspect3d_bench_{}", std::process::id());
        let topic = format!("/{name}/points");
        let child = Command::new(&exe)
            .args(["--ros-args", "--params-file"])
            .arg(repo.join("config/inspector.yaml"))
            .args(["-r", &format!("__node:={name}"), "-p", &format!("input_topic:={topic}"), "-p"])
            .arg(format!("model_path:={}", model.display()))
            .args(params.iter().flat_map(|p| ["-p", p.as_str()]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let node = Self { process: child, name: format!("/{name}"), topic };
        let client = InspectorClient::connect(&node.name, &node.topic, timeout)?;
        Ok((node, client))
    }

    /// Another client of this node, for results only: no anomaly-cloud subscriber.
    fn connect_for_results(&self, timeout: Duration) -> Result<InspectorClient> {
        InspectorClient::connect_for_results(&self.name, &self.topic, timeout)
    }

    pub(crate) fn pid(&self) -> String {
        self.process.id().to_string()
    }

    /// Whether the process is still running (false once it exited or crashed).
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.process.try_wait(), Ok(None))
    }
}

impl Drop for BenchNode {
    fn drop(&mut self) {
        super::stop_child(&mut self.process, Duration::from_secs(10));
    }
}

/// The queue depth of the node that measures batched throughput.
const BATCHING_QUEUE_DEPTH: usize = 4;

/// What a flood measured.
struct Flood {
    /// Scored results (PASS or REJECT, not the DROPPED answers) per second.
    scored_per_second: f64,
    offered_per_second: f64,
    /// The node's CPU time (all its threads) per scored scan, ms: what a scan costs whatever else shares the
    /// cores (this client among them); NaN where /proc cannot tell.
    node_cpu_ms: f64,
}

impl Flood {
    /// The table's cell: the rate, and the CPU per scan in brackets.
    fn cell(&self) -> String {
        format!("{:.1} ({:.0} ms)", self.scored_per_second, self.node_cpu_ms)
    }
}

/// Offers `layout` at `hz` for `seconds` to the node with process id `pid` and collects every result.
fn flood(client: &mut InspectorClient, pid: &str, layout: &PointCloud2Layout, hz: f64, seconds: f64) -> Result<Flood> {
    let period = Duration::from_secs_f64(1.0 / hz);
    let cpu_before = cpu_seconds_of(pid);
    let start = Instant::now();
    let mut next = start;
    let mut sent = 0usize;
    let mut stamp = client.last_stamp().clone();
    while start.elapsed().as_secs_f64() < seconds {
        client.send(layout, "camera", unique_stamp(&mut stamp))?;
        sent += 1;
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    // Results of the flood arrive until the node has worked through what it kept.
    let mut scored = 0usize;
    let mut last = start;
    while let Some((result, at)) = client.next_result(Duration::from_secs(5)) {
        if result.status <= InspectionResult::REJECT as u8 {
            scored += 1;
            last = at;
        }
    }
    let busy = (last - start).as_secs_f64().max(1e-9);
    let node_cpu_ms = match (cpu_before, cpu_seconds_of(pid)) {
        (Some(before), Some(after)) if scored > 0 => (after - before) * 1e3 / scored as f64,
        _ => f64::NAN,
    };
    Ok(Flood { scored_per_second: scored as f64 / busy, offered_per_second: sent as f64 / seconds, node_cpu_ms })
}

/// Runs the benchmark; `repeats` sequential scans and `flood_seconds` of scans at `flood_hz` per input.
pub fn node(
    repo: &Path,
    model: &Path,
    inputs: &[NodeBenchInput],
    repeats: usize,
    flood_hz: f64,
    flood_seconds: f64,
) -> Result<String> {
    let timeout = Duration::from_secs(60);
    let (node, mut client) = BenchNode::start(repo, model, &[], timeout)?;
    let pid = node.pid();
    let mut table = String::from(
        "| input | points (finite) | round trip p50 / p95 ms | node latency p50 / p95 ms | sustained scans/s (node CPU \
         ms per scan) | sustained, no cloud subscriber | sustained, batched | offered scans/s |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let (mut rows, mut offered_rates) = (Vec::new(), Vec::new());
    let layouts: Vec<PointCloud2Layout> = inputs.iter().map(|input| pointcloud2::encode(&input.cloud)).collect();
    for (input, layout) in inputs.iter().zip(&layouts) {
        let finite = input.cloud.finite_points()?.points.len();
        client.inspect(layout, timeout)?; // warm-up: the first scan pays one-off start-up costs
        let (mut round_trips, mut node_latencies) = (Vec::new(), Vec::new());
        for k in 0..repeats.max(1) {
            let (result, round_trip) = client.inspect(layout, timeout)?;
            if result.status > 1 {
                bail!("{}: scan {k} was not scored: {}", input.name, result.message);
            }
            round_trips.push(round_trip.as_secs_f64() * 1e3);
            node_latencies.push(f64::from(result.latency_ms));
        }
        tracing::info!(input = input.name, "sequential done; flooding");
        let sustained = flood(&mut client, &pid, layout, flood_hz, flood_seconds)?;
        offered_rates.push(sustained.offered_per_second);
        let (rt50, rt95) = median_and_p95(round_trips);
        let (n50, n95) = median_and_p95(node_latencies);
        rows.push(format!(
            "| {} | {} ({finite}) | {rt50:.0} / {rt95:.0} | {n50:.0} / {n95:.0} | {}",
            input.name,
            input.cloud.len(),
            sustained.cell(),
        ));
    }
    // The same floods with results the only output anyone receives, as at a cell without RViz.
    drop(client);
    let mut client = node.connect_for_results(timeout)?;
    for (row, layout) in rows.iter_mut().zip(&layouts) {
        client.inspect(layout, timeout)?;
        let sustained = flood(&mut client, &pid, layout, flood_hz, flood_seconds)?;
        row.push_str(&format!(" | {}", sustained.cell()));
    }
    let memory = peak_memory_mib_of(&pid).map_or("unknown".into(), |m| format!("{m:.0} MiB"));
    drop((client, node));
    // The same floods into a node that lets scans wait: it scores the waiting ones as one batch.
    let depth = format!("queue_depth:={BATCHING_QUEUE_DEPTH}");
    let (batching, mut client) = BenchNode::start(repo, model, &[depth], timeout)?;
    for ((row, layout), offered) in rows.iter().zip(&layouts).zip(offered_rates) {
        client.inspect(layout, timeout)?;
        let batched = flood(&mut client, &batching.pid(), layout, flood_hz, flood_seconds)?;
        table.push_str(&format!("{row} | {} | {offered:.1} |\n", batched.cell()));
    }
    table.push_str(&format!(
        "\nNode peak memory (VmHWM): {memory}. Round trip = publish → result received by this process; node \
         latency = receipt → scored, as in InspectionResult.latency_ms; sustained = scored results per second while \
         scans were offered at the last column's rate (queue_depth 1: the newest waits, older ones are dropped), \
         received with the node's anomaly clouds, or without (then the node does not build them); \
         batched = the same into a node with queue_depth {BATCHING_QUEUE_DEPTH}, which scores the scans waiting \
         together as one batch (each waits longer). In brackets: the node's CPU time (all its threads) per scored \
         scan during that flood, what a scan costs whatever else shares the cores (this client does).\n"
    ));
    Ok(table)
}
