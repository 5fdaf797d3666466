#!/usr/bin/env bash
# One command for the benchmark: sets up, generates the default benchmark from the bundled real parts (every
# part, full scans and depth-camera frames), evaluates ours against the baselines, then the ablations.
# Reports (Markdown tables, JSON, PNG figures) go to out/benchmark/report and out/benchmark/ablations.
#
# Environment: DETECTOR_CONFIG (ours' JSON configuration; default: the method's defaults), BENCH_CONFIG (synth's
# JSON configuration), DEVICE (auto|cpu|cuda), SKIP_ABLATIONS=1.
# Cost: with the method's defaults (n = 1024, 100 epochs) ours trains once per class and the ablations ten times;
# on two CPU cores that is hours. docs/evaluation.md shows a reduced configuration that runs in minutes.
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/prepare.sh"
cargo build --release
bin=./target/release/inspect3d
out=out/benchmark
config=(); [ -n "${DETECTOR_CONFIG:-}" ] && config=(--config "$DETECTOR_CONFIG")
bench=(); [ -n "${BENCH_CONFIG:-}" ] && bench=(--config "$BENCH_CONFIG")
rm -rf "$out/data"
"$bin" synth --out "$out/data" "${bench[@]}"
"$bin" eval --data "$out/data" "${config[@]}" --device "${DEVICE:-auto}" --report "$out/report"
if [ -z "${SKIP_ABLATIONS:-}" ]; then
  "$bin" eval --data "$out/data" "${config[@]}" --device "${DEVICE:-auto}" --ablations --report "$out/ablations"
fi
echo "reports: $out/report/report.md $out/ablations/report.md"
