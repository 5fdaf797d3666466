#!/usr/bin/env bash
# The main job on an embedded default, no camera needed: sets everything up (idempotent), starts inspect3d_node
# with the bundled model (models/featuretype) and replays the bundled recorded scans of a part
# (tests/data/cell_scans: simulated depth-camera frames of a real CAD part, 2 good and 4 with defects) to it as
# sensor_msgs/PointCloud2 over DDS. Prints a live table of verdicts and writes one heatmap per scan to out/demo/
# (PLY coloured by anomaly score: open it in MeshLab, CloudCompare or Open3D).
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/prepare.sh"
# The same build as scripts/test.sh (--all-targets): with --bins alone cargo resolves the dependencies' features
# differently and rebuilds the whole tree when switching between the two commands.
cargo build --release --all-targets
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$((RANDOM % 100 + 1))}"
mkdir -p out/demo
./target/release/inspect3d_node --ros-args --params-file config/inspector.yaml \
  -p model_path:=models/featuretype -p input_topic:=/demo/camera/points >out/demo/node.log 2>&1 &
node_pid=$!
trap 'kill -INT $node_pid 2>/dev/null || true' EXIT
echo "inspect3d_node started (pid $node_pid, ROS_DOMAIN_ID=$ROS_DOMAIN_ID, log out/demo/node.log); replaying scans:"
./target/release/inspect3d replay --scans tests/data/cell_scans --topic /demo/camera/points --heatmaps out/demo
kill -INT $node_pid
wait $node_pid
trap - EXIT
echo "node stopped cleanly; its log: out/demo/node.log"
