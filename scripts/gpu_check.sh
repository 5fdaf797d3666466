#!/usr/bin/env bash
# The GPU check (docs/toolchain.md, "GPU check"): run on a machine with an NVIDIA GPU and PyTorch's LibTorch,
# with .gpu/inspect3d built for that LibTorch by scripts/build_gpu_check.sh. Compares CPU and CUDA
# verdicts and per-point scores of the bundled model on the bundled scans (CUDA with the host's geometry and with
# the device geometry, `--device-geometry`), runs the detector benchmark on both (with the device geometry, also
# each geometry stage back on the host in turn) and the geometry benchmark's device table, and times training on
# both: the issue's numbers first, so a run cut short keeps them. Writes everything to ${OUT:-out/gpu}/log.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out/gpu}
mkdir -p "$out/work"
exec > >(tee "$out/log.txt") 2>&1
torch_lib=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
bin=${INSPECT3D_BIN:-.gpu/inspect3d}
# scripts/build_gpu_check.sh puts the libraries the binary needs beyond LibTorch's beside it, in lib/.
# Each bench stage's median is logged as it is measured, so a table cut short by its cap still shows its rows.
export LD_LIBRARY_PATH="$torch_lib:$(dirname "$bin")/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUST_LOG=warn,inspect3d::bench=info
if ldd "$bin" | grep "not found"; then echo "$bin: libraries not found (above)"; exit 1; fi
"$bin" --version
gpu=${GPU_DEVICE:-cuda}  # cpu for a dry run without a GPU
# A command given more than its share of the device machine's time (the whole check has ~10 minutes) is stopped,
# so the ones after it still run.
capped() {
  local seconds=$1
  shift
  timeout "$seconds" "$@" || echo "(stopped after ${seconds} s, or failed: $*)"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
nproc

echo "== 1. bundled model, bundled scans: CPU vs CUDA (host geometry), CPU vs CUDA (device geometry)"
for scan in tests/data/cell_scans/*.pcd; do
  name=$(basename "$scan" .pcd)
  for device in cpu "$gpu"; do
    timeout 30 "$bin" infer --model models/featuretype --input "$scan" --device "$device" \
      --out "$out/work/${name}_$device.ply" >"$out/work/${name}_$device.json" || echo "infer $name $device failed"
  done
  timeout 30 "$bin" infer --model models/featuretype --input "$scan" --device "$gpu" --device-geometry \
    --out "$out/work/${name}_${gpu}geometry.ply" >"$out/work/${name}_${gpu}geometry.json" || echo "infer $name geometry failed"
done
for variant in "$gpu" "${gpu}geometry"; do
python3 - "$out/work" "$variant" <<'PY'
import json, sys, pathlib
import numpy as np
work = pathlib.Path(sys.argv[1])
def scores(path):
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    props = [l.split() for l in data[:end].decode().splitlines() if l.startswith("property")]
    dtype = np.dtype([(p[2], {"float": "<f4", "uchar": "u1"}[p[1]]) for p in props])
    return np.frombuffer(data[end:], dtype=dtype)["anomaly_score"]
print(f"CPU against {sys.argv[2]}")
print("| scan | verdict CPU / CUDA | cloud score CPU / CUDA | max abs point-score diff | points | latency ms CPU / CUDA |")
print("|---|---|---|---:|---:|---|")
for cpu_json in sorted(work.glob("*_cpu.json")):
    name = cpu_json.name[:-len("_cpu.json")]
    a, b = json.loads(cpu_json.read_text()), json.loads((work / f"{name}_{sys.argv[2]}.json").read_text())
    sa, sb = scores(work / f"{name}_cpu.ply"), scores(work / f"{name}_{sys.argv[2]}.ply")
    diff = float(np.max(np.abs(sa - sb))) if sa.shape == sb.shape else float("nan")
    print(f"| {name} | {a['passed']} / {b['passed']} | {a['cloud_score']:.6f} / {b['cloud_score']:.6f} | {diff:.2e} | {sa.size} | {a['latency_ms']:.0f} / {b['latency_ms']:.0f} |")
PY
done

echo "== 2. detector benchmark on CUDA (host geometry, then device geometry), then on CPU (CUDA hidden):"
echo "   the bundled 640x480 frame (issue 11: <= 10 ms a frame, >= 100 scans/s batched; 32 a batch), the 60k scan"
frame=tests/data/cell_scans/000_good.pcd
capped 60 "$bin" bench detector --repeats 5 --input "$frame" --batch 32
capped 100 "$bin" bench detector --repeats 5 --input "$frame" --batch 32 --device-geometry
CUDA_VISIBLE_DEVICES= capped 60 "$bin" bench detector --repeats 5 --input "$frame" --batch 32
capped 45 "$bin" bench detector --repeats 7
capped 60 "$bin" bench detector --repeats 3 --device-geometry
CUDA_VISIBLE_DEVICES= capped 45 "$bin" bench detector --repeats 7
echo "== 3. geometry stages: host, and as tensor code on CUDA"
capped 90 "$bin" bench geometry --repeats 7 --device-geometry
echo "== 4. training (config/detector.json, 10 simulated frames): CPU vs CUDA"
"$bin" synth --meshes tests/data/meshes/featuretype.STL --out "$out/work/bench" \
  --config <(echo '{"train": 10, "test_good": 1, "test_defective": 1, "modes": ["camera"], "seed": 7}') >/dev/null
for device in cpu "$gpu"; do
  start=$EPOCHREALTIME
  capped 60 "$bin" train --data "$out/work/bench/featuretype_camera/train" --out "$out/work/model_$device" \
    --config config/detector.json --device "$device" | tr -d '\n '
  echo " | $device wall $(python3 -c "print(round($EPOCHREALTIME - $start, 1))") s"
done

echo "== done"
