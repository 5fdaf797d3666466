#!/usr/bin/env bash
# One command for the benchmark of docs/evaluation.md: sets up, generates the benchmark from the bundled real parts
# (six parts, full scans and depth-camera frames, config/benchmark.json), evaluates ours against the baselines
# with one process per class (finished classes survive an interrupted run; a class with a report is skipped when
# the script is run again), merges the tables, then the ablations on two classes with a reduced training budget.
#
# Environment: DETECTOR_CONFIG (ours' configuration; default: the shipped default), METHODS (default: ours, the
# same trained model under its other scoring choices, and the three baselines), ABLATION_CONFIG (the
# ablations' base; default config/ablation_budget.json: 1 view per cloud, 6 epochs), ABLATION_CLASSES
# (default: featuretype_camera), DEVICE (auto|cpu|cuda), SKIP_ABLATIONS=1, OUT (default out/benchmark).
# Cost on two CPU cores: 4 to 10 minutes per class for the table (about 80 in all; the baselines' FPFH of every
# point dominates on full scans), then about 40 seconds per ablation row (26 rows).
set -euo pipefail
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/prepare.sh"
cargo build --release --bins
out=${OUT:-out/benchmark}
mkdir -p "$out"
# A copy of the binary, so that rebuilding during a long run does not change the program mid-table.
bin="$out/inspect3d"
cp ./target/release/inspect3d "$bin"
# Which source the binary was built from, so a table can be traced to a commit (and to uncommitted changes).
{
  echo "built $(date -u +%FT%TZ) from commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  git status --porcelain --untracked-files=no 2>/dev/null | sed 's/^/uncommitted: /'
} >"$out/build.txt"
config=(); [ -n "${DETECTOR_CONFIG:-}" ] && config=(--config "$DETECTOR_CONFIG")
parts=(angle_block.STL busted.STL featuretype.STL idler_riser.STL octagonal_pocket.stl plate_holes.STL)
if [ ! -d "$out/data" ]; then
  meshes=(); for part in "${parts[@]}"; do meshes+=(--meshes "tests/data/meshes/$part"); done
  "$bin" synth "${meshes[@]}" --out "$out/data" --config config/benchmark.json
fi
for data in "$out"/data/*/; do
  class=$(basename "$data")
  dir="$out/classes/$class"
  [ -f "$dir/report/report.json" ] && continue
  mkdir -p "$dir/data"
  ln -sfn "$(realpath "$data")" "$dir/data/$class"
  echo "$(date +%T) $class"
  RUST_LOG=inspect3d=info "$bin" eval --data "$dir/data" "${config[@]}" --device "${DEVICE:-auto}" \
    --methods "${METHODS:-ours,ours-scoring,btf-raw,btf-fpfh,patchcore}" \
    --report "$dir/report" > "$dir/table.md" 2> "$dir/eval.log"
done
"$bin" report --merge "$out"/classes/*/report/report.json --out "$out" > /dev/null
echo "table: $out/table.md, chart: $out/summary.png"
if [ -z "${SKIP_ABLATIONS:-}" ]; then
  mkdir -p "$out/ablation_data"
  for class in ${ABLATION_CLASSES:-featuretype_camera}; do
    ln -sfn "$(realpath "$out/data/$class")" "$out/ablation_data/$class"
  done
  RUST_LOG=inspect3d=info "$bin" eval --data "$out/ablation_data" --config "${ABLATION_CONFIG:-config/ablation_budget.json}" \
    --device "${DEVICE:-auto}" --ablations --report "$out/ablations" > "$out/ablations.md" 2> "$out/ablations.log"
  echo "ablations: $out/ablations.md"
fi
