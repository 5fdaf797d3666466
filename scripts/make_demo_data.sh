#!/usr/bin/env bash
# Rebuilds the demo's bundled files: simulated depth-camera frames of the real CAD part featuretype.STL, in metres
# in the camera's optical frame (x right, y down, z forward) as a depth camera's driver publishes them
# (tests/data/cell_scans: 2 good, 4 defective, with each defect's labelled points in
# tests/data/cell_scans/defects/<scan>.xyz) and the model trained on 20 other good frames of it with the shipped
# default configuration (config/detector.json) into models/featuretype. Deterministic for the seed. Run after
# `source scripts/prepare.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet --bin inspect3d
bin=target/release/inspect3d
echo '{"train": 20, "test_good": 3, "test_defective": 4, "defects": ["bulge", "missing_chunk", "sink", "dent"],
       "modes": ["camera"], "radius": [7.0, 10.0], "height": [2.0, 3.0], "seed": 7, "unit_scale": 0.001}' \
  >"$work/synth.json"
"$bin" synth --meshes tests/data/meshes/featuretype.STL --out "$work/bench" --config "$work/synth.json"
"$bin" train --data "$work/bench/featuretype_camera/train" --out models/featuretype \
  --config config/detector.json --device cpu
rm -rf tests/data/cell_scans
mkdir -p tests/data/cell_scans/defects
for scan in 000_good 001_good 000_bulge 001_missing 002_sink 003_dent; do
  cp "$work/bench/featuretype_camera/test/$scan.pcd" tests/data/cell_scans/
  gt="$work/bench/featuretype_camera/gt/$scan.txt"
  if [ -f "$gt" ]; then awk '$4 != 0 { print $1, $2, $3 }' "$gt" >"tests/data/cell_scans/defects/$scan.xyz"; fi
done
