//! The real scans shipped in tests/data/scans (PCL's test data: depth-camera frames, a stereo scan, object scans)
//! load, and survive PCD → PointCloud2 → PCD in every encoding bit for bit.

use std::path::PathBuf;

use inspect3d::cloud::pcd::{self, PcdEncoding};
use inspect3d::cloud::{PointCloud, pointcloud2, read_cloud};

fn scans() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/scans");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/data/scans")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcd"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 6, "the six PCL scans");
    files
}

fn assert_same(a: &PointCloud, b: &PointCloud, what: &str) {
    assert_eq!((a.width, a.height), (b.width, b.height), "{what}: layout");
    assert_eq!(a.fields().len(), b.fields().len(), "{what}: fields");
    for (fa, fb) in a.fields().iter().zip(b.fields()) {
        assert_eq!((&fa.name, fa.scalar, fa.count), (&fb.name, fb.scalar, fb.count), "{what}");
        assert!(fa.bytes() == fb.bytes(), "{what}: field {} differs", fa.name);
    }
}

#[test]
fn real_scans_round_trip_through_pointcloud2_and_pcd() {
    for path in scans() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let original = read_cloud(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let via_msg = pointcloud2::decode(&pointcloud2::encode(&original)).unwrap();
        assert_same(&original, &via_msg, &format!("{name} via PointCloud2"));
        for encoding in [PcdEncoding::BinaryCompressed, PcdEncoding::Binary, PcdEncoding::Ascii] {
            let back = pcd::decode(&pcd::encode(&via_msg, encoding)).unwrap();
            if encoding == PcdEncoding::Ascii {
                // Text cannot carry NaN payload bits; every other bit must survive.
                let canonical = |c: &PointCloud| {
                    c.positions()
                        .unwrap()
                        .iter()
                        .map(|p| p.map(|v| if v.is_nan() { f32::NAN.to_bits() } else { v.to_bits() }))
                        .collect::<Vec<_>>()
                };
                assert_eq!(canonical(&back), canonical(&original), "{name} ascii");
            } else {
                assert_same(&original, &back, &format!("{name} {encoding:?}"));
            }
        }
    }
}

#[test]
fn real_scans_have_the_expected_contents() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/scans");
    let frame = read_cloud(&dir.join("frame_20121214T142255.814212.pcd")).unwrap();
    assert_eq!((frame.width, frame.height), (640, 480));
    assert!(frame.is_organised() && !frame.is_dense());
    let finite = frame.finite_points().unwrap();
    // A Kinect-class frame: most pixels have a return, some do not, and the holes keep their pixel index.
    assert!(finite.points.len() > 200_000 && finite.points.len() < 307_200, "{}", finite.points.len());
    let all = frame.positions().unwrap();
    assert!(finite.source_index.iter().all(|&i| all[i as usize][2].is_finite()));
    assert!(finite.points.iter().all(|p| p[2] > 0.3 && p[2] < 5.0), "depths in metres in front of the camera");

    let bunny = read_cloud(&dir.join("bunny.pcd")).unwrap();
    assert_eq!(bunny.len(), 397);
    assert_eq!(bunny.positions().unwrap()[0], [0.0054216, 0.11349, 0.040749]);
    let milk = read_cloud(&dir.join("milk_color.pcd")).unwrap();
    assert_eq!(milk.field("rgba").map(|f| f.len()), Some(13704));
}
