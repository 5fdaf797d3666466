#!/usr/bin/env python3
"""Times Open3D's equivalents of inspect3d's geometry stages on the same points, for `inspect3d bench geometry
--compare open3d` (which runs this script with OMP_NUM_THREADS set to its own thread count).

    python3 scripts/open3d_stages.py POINTS.f32 '{"voxel": 0.005, "centres": 1024, "group_size": 32,
        "normal_radius": 0.02, "normal_max_nn": 30, "fpfh_radius": 0.025, "repeats": 5}'

POINTS.f32 holds the finite points as little-endian float32 x, y, z. Prints one JSON object: stage name → list
of wall times in milliseconds, and the sizes each stage worked on.
"""
import json
import sys
import time

import numpy as np
import open3d as o3d


def timed(repeats, work):
    """Runs `work` `repeats` times; returns the wall times (ms) and the last result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = work()
        times.append((time.perf_counter() - start) * 1e3)
    return times, out


def main(points_path, params):
    p = json.loads(params)
    r = int(p["repeats"])
    xyz = np.fromfile(points_path, dtype="<f4").reshape(-1, 3).astype(np.float64)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    stages, sizes = {}, {}
    stages["voxel grid"], down = timed(r, lambda: cloud.voxel_down_sample(p["voxel"]))
    sizes["voxel grid"] = len(down.points)
    stages["k-d tree"], _ = timed(r, lambda: o3d.geometry.KDTreeFlann(down))
    stages["FPS"], sampled = timed(r, lambda: down.farthest_point_down_sample(int(p["centres"])))
    # The tensor API's batched search: one call for every centre, as the Rust side groups them.
    points = o3d.core.Tensor(np.asarray(down.points, dtype=np.float32))
    centres = o3d.core.Tensor(np.asarray(sampled.points, dtype=np.float32))

    def knn():
        search = o3d.core.nns.NearestNeighborSearch(points)
        search.knn_index()
        return search.knn_search(centres, int(p["group_size"]))

    stages["kNN grouping"], _ = timed(r, knn)
    hybrid = o3d.geometry.KDTreeSearchParamHybrid(p["normal_radius"], int(p["normal_max_nn"]))
    stages["normals (PCA)"], _ = timed(r, lambda: down.estimate_normals(hybrid))
    radius = o3d.geometry.KDTreeSearchParamRadius(p["fpfh_radius"])
    stages["FPFH, every point"], _ = timed(
        r, lambda: o3d.pipelines.registration.compute_fpfh_feature(down, radius)
    )
    print(json.dumps({"version": o3d.__version__, "stages": stages, "sizes": sizes}))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
