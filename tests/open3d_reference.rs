//! Normals and FPFH checked against an independent implementation, Open3D (open3d-cpu from PyPI), on a real
//! scan: the same points and neighbourhoods must give the same numbers within tolerance. The Python side is
//! tests/peers/open3d_reference.py; it prints its statistics and fails on a mismatch.

use std::path::{Path, PathBuf};
use std::process::Command;

use inspect3d::cloud::read_cloud;
use inspect3d::geometry::{self, Neighborhood, NormalOrientation};

fn write_f32(path: &Path, rows: impl IntoIterator<Item = impl IntoIterator<Item = f32>>) {
    let bytes: Vec<u8> = rows.into_iter().flatten().flat_map(f32::to_le_bytes).collect();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn normals_and_fpfh_match_open3d_on_a_real_scan() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // A depth-camera frame: real noise, real edges. Voxelised as the detector would.
    let cloud = read_cloud(&root.join("tests/data/scans/frame_20121214T142256.068683.pcd")).unwrap();
    let finite = cloud.finite_points().unwrap();
    let voxel = 0.01;
    let grid = geometry::voxel_downsample(&finite.points, voxel).unwrap();
    let points = grid.points;
    let index = geometry::NeighborIndex::new(&points).unwrap();
    let (normal_radius, max_nn, fpfh_radius) = (3.0 * voxel, 30, 5.0 * voxel);
    let normals = geometry::estimate_normals(
        &points,
        &index,
        Neighborhood::Hybrid { radius: normal_radius, max_nn },
        NormalOrientation::TowardsViewpoint([0.0; 3]),
    );
    let all: Vec<u32> = (0..points.len() as u32).collect();
    let fpfh = geometry::fpfh_at(&points, &normals, &index, fpfh_radius, &all).unwrap();
    let spfh = geometry::spfh_at(&points, &normals, &index, fpfh_radius, &all).unwrap();

    let dir = tempfile::tempdir().unwrap();
    write_f32(&dir.path().join("points.f32"), points.iter().copied());
    write_f32(&dir.path().join("normals.f32"), normals.iter().copied());
    write_f32(&dir.path().join("fpfh.f32"), fpfh.iter().copied());
    write_f32(&dir.path().join("spfh.f32"), spfh.iter().copied());
    let out = Command::new("python3")
        .arg(root.join("tests/peers/open3d_reference.py"))
        .arg(dir.path())
        .args([normal_radius.to_string(), max_nn.to_string(), fpfh_radius.to_string()])
        .output()
        .expect("python3 with open3d (run scripts/setup.sh and source .deps/env.sh)");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "Open3D disagrees:\n{report}");
    assert!(report.contains("points compared"), "the reference script did not run its comparison:\n{report}");
}
