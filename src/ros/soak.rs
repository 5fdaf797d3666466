//! `inspect3d bench soak`: hours of a cell in minutes. Starts an inspect3d_node with the bundled model and
//! publishes, at a fixed rate, the bundled cell scans mixed with a catalogue of hostile inputs (an absurd
//! point, a byte-order lie, a flying pixel, the wrong unit, tiny, empty and mis-sized messages); then reports
//! every scan's fate (results per status, how many never reached the node), verdicts that contradict what the
//! case must give, node latency percentiles, the node's resident memory at the start, middle and end, and
//! whether it is still running.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use r2r::inspect3d_msgs::msg::InspectionResult;

use super::bench::BenchNode;
use super::client::{status_name, unique_stamp};
use crate::bench::resident_memory_mib_of;
use crate::cloud::pointcloud2::{self, PointCloud2Layout};
use crate::cloud::{PointCloud, read_cloud};
use crate::geometry::Point;
use crate::inspector::median_and_p95;

/// One kind of scan in the mix, and the statuses its result may have (DROPPED is always allowed: newer scans
/// win when the node is busy).
struct Case {
    name: String,
    message: PointCloud2Layout,
    allowed: Vec<u8>,
}

fn cell_scan(repo: &Path, name: &str) -> Result<Vec<Point>> {
    let path = repo.join("tests/data/cell_scans").join(format!("{name}.pcd"));
    Ok(read_cloud(&path).with_context(|| path.display().to_string())?.finite_points()?.points)
}

/// The bundled scans (good: PASS, defective: REJECT) and the hostile catalogue.
fn catalogue(repo: &Path) -> Result<Vec<Case>> {
    let (pass, reject, invalid) =
        (InspectionResult::PASS as u8, InspectionResult::REJECT as u8, InspectionResult::INVALID_INPUT as u8);
    let encode = |points: &[Point]| pointcloud2::encode(&PointCloud::from_xyz(points));
    let case = |name: &str, message: PointCloud2Layout, allowed: &[u8]| Case {
        name: name.into(),
        message,
        allowed: allowed.to_vec(),
    };
    let mut cases = Vec::new();
    for name in ["000_good", "001_good", "000_bulge", "001_missing", "002_sink", "003_dent"] {
        let expected = if name.ends_with("good") { pass } else { reject };
        let path = repo.join("tests/data/cell_scans").join(format!("{name}.pcd"));
        cases.push(case(name, pointcloud2::encode(&read_cloud(&path)?), &[expected]));
    }
    let good = cell_scan(repo, "000_good")?;
    let mut sink = cell_scan(repo, "002_sink")?;
    sink.push([0.0, 0.0, 1e30]);
    cases.push(case("002_sink + a point at z = 1e30", encode(&sink), &[reject]));
    let centre = good[good.len() / 2];
    let mut flying = good.clone();
    flying.push([centre[0], centre[1], centre[2] + 2.0]);
    cases.push(case("000_good + a flying pixel 2 m behind", encode(&flying), &[pass]));
    let mut lie = encode(&good);
    lie.is_bigendian = true;
    cases.push(case("000_good with is_bigendian lying", lie, &[invalid]));
    // The bundled scans and model are in metres.
    let millimetres: Vec<Point> = good.iter().map(|p| p.map(|c| c * 1000.0)).collect();
    cases.push(case("000_good in millimetres", encode(&millimetres), &[invalid]));
    cases.push(case("one point", encode(&good[..1]), &[invalid]));
    cases.push(case("all NaN", encode(&[[f32::NAN; 3]; 100]), &[invalid]));
    let mut long = encode(&good[..5000]);
    long.data.extend([0u8; 7]);
    cases.push(case("data longer than row_step × height", long, &[invalid]));
    let mut no_z = encode(&good[..5000]);
    no_z.fields.retain(|f| f.name != "z");
    cases.push(case("no z field", no_z, &[invalid]));
    Ok(cases)
}

#[derive(Default)]
struct Fate {
    sent: usize,
    by_status: HashMap<&'static str, usize>,
    wrong: usize,
    first_wrong: Option<String>,
}

/// Runs the soak for `minutes` at `rate_hz`; returns the report (Markdown).
pub fn soak(repo: &Path, model: &Path, minutes: f64, rate_hz: f64) -> Result<String> {
    let cases = catalogue(repo)?;
    let timeout = Duration::from_secs(60);
    let (mut node, mut client) = BenchNode::start(repo, model, &[], timeout)?;
    let pid = node.pid();
    // One scored scan first: model loading and LibTorch's first call are start-up, not steady state.
    client.inspect(&cases[0].message, timeout)?;
    let first_rss = resident_memory_mib_of(&pid);
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let period = Duration::from_secs_f64(1.0 / rate_hz);
    let mut fates: Vec<Fate> = cases.iter().map(|_| Fate::default()).collect();
    let mut case_of_stamp: HashMap<(i32, u32), usize> = HashMap::new();
    let mut latencies = Vec::new();
    let mut results = 0usize;
    let mut stamp = client.last_stamp().clone();
    let began = Instant::now();
    let (mut next, mut sent) = (began, 0usize);
    // Memory is compared from the end of a warm-up (a tenth of the run) on: allocator pools fill at first.
    let (mut warm_rss, mut middle_rss) = (None, None);
    tracing::info!(minutes, rate_hz, cases = cases.len(), "soak started");
    while began.elapsed() < duration {
        let k = sent % cases.len();
        let s = unique_stamp(&mut stamp);
        case_of_stamp.insert((s.sec, s.nanosec), k);
        client.send(&cases[k].message, "camera", s)?;
        fates[k].sent += 1;
        sent += 1;
        while let Some((result, _)) = client.next_result(Duration::ZERO) {
            results += record(result, &case_of_stamp, &cases, &mut fates, &mut latencies);
        }
        if warm_rss.is_none() && began.elapsed() >= duration / 10 {
            warm_rss = resident_memory_mib_of(&pid);
        }
        if middle_rss.is_none() && began.elapsed() >= duration / 2 {
            middle_rss = resident_memory_mib_of(&pid);
            tracing::info!(sent, results, rss_mib = middle_rss, "soak half-way");
        }
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    // What the node still holds arrives within a scoring time or two.
    while let Some((result, _)) = client.next_result(Duration::from_secs(15)) {
        results += record(result, &case_of_stamp, &cases, &mut fates, &mut latencies);
    }
    let end_rss = resident_memory_mib_of(&pid);
    let alive = node.is_running();
    let rss = [first_rss, warm_rss, middle_rss, end_rss];
    Ok(report(&cases, &fates, sent, results, &latencies, rss, alive, minutes, rate_hz))
}

/// Books one result against the case its stamp was sent as; returns 1 when the result is one of ours.
fn record(
    result: InspectionResult,
    case_of_stamp: &HashMap<(i32, u32), usize>,
    cases: &[Case],
    fates: &mut [Fate],
    latencies: &mut Vec<f64>,
) -> usize {
    let Some(&k) = case_of_stamp.get(&(result.header.stamp.sec, result.header.stamp.nanosec)) else {
        return 0;
    };
    let fate = &mut fates[k];
    *fate.by_status.entry(status_name(result.status)).or_default() += 1;
    if result.status == InspectionResult::DROPPED as u8 {
        return 1;
    }
    if result.status <= InspectionResult::REJECT as u8 {
        latencies.push(f64::from(result.latency_ms));
    }
    if !cases[k].allowed.contains(&result.status) {
        fate.wrong += 1;
        fate.first_wrong.get_or_insert(format!("{}: {}", status_name(result.status), result.message));
    }
    1
}

#[allow(clippy::too_many_arguments)]
fn report(
    cases: &[Case],
    fates: &[Fate],
    sent: usize,
    results: usize,
    latencies: &[f64],
    rss: [Option<f64>; 4],
    alive: bool,
    minutes: f64,
    rate_hz: f64,
) -> String {
    const STATUSES: [&str; 6] = ["PASS", "REJECT", "INVALID_INPUT", "ERROR", "NO_MODEL", "DROPPED"];
    let mut out = format!("Soak: {minutes} min at {rate_hz} Hz, {} kinds of scan in turn.\n\n", cases.len());
    out.push_str("| scan | sent | PASS | REJECT | INVALID_INPUT | ERROR | NO_MODEL | DROPPED | no result | wrong |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (case, fate) in cases.iter().zip(fates) {
        let counts: Vec<String> =
            STATUSES.iter().map(|s| fate.by_status.get(s).copied().unwrap_or(0).to_string()).collect();
        let answered: usize = fate.by_status.values().sum();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            case.name,
            fate.sent,
            counts.join(" | "),
            fate.sent.saturating_sub(answered),
            fate.wrong
        ));
    }
    let wrong: usize = fates.iter().map(|f| f.wrong).sum();
    let dropped: usize = fates.iter().map(|f| f.by_status.get("DROPPED").copied().unwrap_or(0)).sum();
    let (p50, p95) = median_and_p95(latencies.to_vec());
    let mib = |m: Option<f64>| m.map_or("unknown".into(), |m| format!("{m:.0} MiB"));
    let growth = match (rss[1], rss[3]) {
        (Some(a), Some(b)) if a > 0.0 => format!("{:+.1} %", 100.0 * (b - a) / a),
        _ => "unknown".into(),
    };
    out.push_str(&format!(
        "\nSent {sent}; results {results} (scored or refused {}, DROPPED {dropped}); no result {} (lost before \
         the node: scans travel best-effort). Verdicts contradicting the case: {wrong}. Node latency of scored \
         scans p50 {p50:.0} ms, p95 {p95:.0} ms ({} scored). Node RSS after the first scan {}, after warm-up (a \
         tenth of the run) {}, half-way {}, end {} (growth after warm-up {growth}). Node {} at the end.\n",
        results - dropped,
        sent.saturating_sub(results),
        latencies.len(),
        mib(rss[0]),
        mib(rss[1]),
        mib(rss[2]),
        mib(rss[3]),
        if alive { "still running" } else { "NOT RUNNING (crashed)" },
    ));
    for (case, fate) in cases.iter().zip(fates) {
        if let Some(first) = &fate.first_wrong {
            out.push_str(&format!("- {}: first wrong result {first}\n", case.name));
        }
    }
    out
}
