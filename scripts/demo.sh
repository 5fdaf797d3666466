#!/usr/bin/env bash
# Sets up everything (idempotent) and runs the main job on an embedded default, no camera needed: the bundled
# 640×480 depth-camera frame goes through the geometry pipeline; its summary is printed and a heatmap written to
# out/frame_surface_variation.ply (open it in MeshLab, CloudCompare or Open3D).
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/prepare.sh"
cargo build --release
mkdir -p out
./target/release/inspect3d describe --input tests/data/scans/frame_20121214T142255.814212.pcd \
  --heatmap out/frame_surface_variation.ply
