#!/usr/bin/env bash
# Builds this repository as a colcon workspace the way a ROS 2 user would (colcon-ros-cargo + cargo-ament-build,
# on the environment scripts/setup.sh made), then checks the install layout: both packages, both binaries, the
# launch/config/models share folders found through the ament index, and the installed node validating the
# installed configuration and loading the installed model. Not part of CI (it builds everything a second time,
# ~3 min); `ros2 launch` itself is not on PyPI, so it is not run. Usage: scripts/colcon_check.sh [workspace dir]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ws="${1:-$root/out/colcon_ws}"
bash "$root/scripts/setup.sh"
tools="$root/.deps/colcon-venv"
[ -x "$tools/bin/colcon" ] || {
  python3.11 -m venv "$tools"
  "$tools/bin/pip" install -q colcon-core==0.21.3 colcon-cargo==0.2.0 colcon-ros-cargo==0.2.0 colcon-ros==0.5.0 \
    colcon-cmake==0.2.30 colcon-library-path==0.2.1 colcon-package-selection==0.2.10
}
command -v cargo-ament-build >/dev/null || cargo install --locked cargo-ament-build@0.1.11
mkdir -p "$ws/src"
ln -sfn "$root" "$ws/src/inspect3d"
set +u
# shellcheck disable=SC1091
source "$root/.deps/env.sh"
set -u
cd "$ws"
# colcon stops at the first package.xml it finds, so the interface package inside this one is named explicitly.
"$tools/bin/colcon" build --base-paths src/inspect3d/msg/inspect3d_msgs src/inspect3d
set +u
# shellcheck disable=SC1091
source install/local_setup.sh
set -u
share=$(python3 -c "from ament_index_python.packages import get_package_share_directory as g; print(g('inspect3d'))")
for path in lib/inspect3d/inspect3d_node lib/inspect3d/inspect3d share/inspect3d/launch/inspector.launch.py \
  share/inspect3d/launch/inspector.launch.xml share/inspect3d/config/inspector.yaml share/inspect3d/models/featuretype; do
  test -e "install/inspect3d/$path" || { echo "missing: install/inspect3d/$path"; exit 1; }
done
install/inspect3d/lib/inspect3d/inspect3d_node --check-config --ros-args --params-file "$share/config/inspector.yaml" \
  -p model_path:="$share/models/featuretype" -p training_config:="$share/config/detector.json" >/dev/null
echo "colcon workspace OK: $ws (share: $share)"
