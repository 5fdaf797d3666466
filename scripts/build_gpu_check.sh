#!/usr/bin/env bash
# Builds .gpu/inspect3d, the binary that scripts/gpu_check.sh runs on the device machine (docs/toolchain.md,
# "GPU check"). That machine has PyTorch 2.11.0 (CUDA 13) and no Rust, so the binary is built here against the
# LibTorch of the same torch wheel from PyPI and, on the device, loads the device's own torch/lib. tch 0.26 is
# made for LibTorch 2.13: its C++ glue calls a few functions that 2.11 lacks, so a copy of torch-sys drops them
# (none is used by inspect3d). Needs scripts/setup.sh first (cargo, the venv's pip); ~1 GB of disk under .gpu/.
# Then, on the device: `bash scripts/gpu_check.sh` with `.gpu/inspect3d` and `.gpu/lib` carried along.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
gpu=$root/.gpu
torch_version=${GPU_TORCH_VERSION:-2.11.0}
[ -f .deps/env.sh ] || { echo "build_gpu_check.sh: run scripts/setup.sh first (no .deps/env.sh)" >&2; exit 1; }
mkdir -p "$gpu"
# shellcheck disable=SC1091
source .deps/env.sh

# --- 1. the torch wheel's LibTorch (headers, libraries, version.py) ---------------------------------------
if [ ! -f "$gpu/torch/lib/libtorch_cuda.so" ] || ! grep -q "__version__ = '$torch_version" "$gpu/torch/version.py"; then
  rm -rf "$gpu/wheel" "$gpu/torch"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 -d "$gpu/wheel" "torch==$torch_version"
  python3 - "$gpu" <<'PY'
import pathlib, sys, zipfile
gpu = pathlib.Path(sys.argv[1])
wheel = next((gpu / "wheel").glob("torch-*.whl"))
with zipfile.ZipFile(wheel) as z:
    wanted = [n for n in z.namelist() if n.startswith(("torch/lib/", "torch/include/")) or n == "torch/version.py"]
    z.extractall(gpu, wanted)
PY
  rm -rf "$gpu/wheel"
fi

# --- 2. torch-sys 0.26.0 without the functions LibTorch 2.11 lacks ------------------------------------------
registry_copy=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/torch-sys-0.26.0 | head -1)
rm -rf "$gpu/torch-sys"
cp -r "$registry_copy" "$gpu/torch-sys"
python3 - "$gpu/torch-sys/libtch" <<'PY'
import pathlib, re, sys
# The generated C functions whose LibTorch function 2.11 lacks (14) or declares with fewer arguments (1).
missing = re.compile(
    r"atg__(philox_\w+|upsample_lanczos2d_aa\w*|flash_attention_forward_no_dropout_inplace"
    r"|scaled_dot_product_attention_math_for_mps)\("
)
glue = pathlib.Path(sys.argv[1])
for name in ["torch_api_generated.cpp", "torch_api_generated.h"]:
    path = glue / name
    kept, skipping, depth, dropped = [], False, 0, 0
    for line in path.read_text().splitlines(keepends=True):
        if not skipping and missing.search(line):
            dropped += 1
            if line.rstrip().endswith(";"):  # a declaration: one line
                continue
            skipping, depth = True, 0
        if skipping:
            depth += line.count("{") - line.count("}")
            if depth == 0 and "}" in line:
                skipping = False
            continue
        kept.append(line)
    path.write_text("".join(kept))
    print(f"{name}: dropped {dropped}")
PY

# --- 3. the binary (CUDA linked, no ROS layer: the check needs neither a node nor DDS) -----------------------
# The patch rewrites Cargo.lock's torch-sys entry: the project's lock is put back however the build ends.
cp Cargo.lock "$gpu/Cargo.lock.project"
trap 'cp "$gpu/Cargo.lock.project" "$root/Cargo.lock"' EXIT
LIBTORCH="$gpu/torch" LIBTORCH_BYPASS_VERSION_CHECK=1 cargo build --release --no-default-features --features cuda \
  --bin inspect3d --target-dir "$gpu/target" --config "patch.crates-io.torch-sys.path=\"$gpu/torch-sys\""
cp "$gpu/target/release/inspect3d" "$gpu/inspect3d"
# The system libraries it needs beyond LibTorch's and glibc's travel beside it (the device may lack SQLite, which
# the bag reader links): scripts/gpu_check.sh puts .gpu/lib on the library path.
mkdir -p "$gpu/lib"
ldd "$gpu/inspect3d" | awk '/libsqlite3/ { print $3 }' | xargs -r -I{} cp -L {} "$gpu/lib/"
echo "built $gpu/inspect3d against LibTorch $torch_version ($(du -h "$gpu/inspect3d" | cut -f1))"
