//! Mutation fuzzing with a fixed budget, in the test suite: the bundled clouds (PCD in every encoding, PLY
//! written from them, PointCloud2 layouts, CDR bytes as rmw serialises them) are mutated — bytes flipped,
//! overwritten, cut, repeated, header numbers changed — and every reader must answer with a value or an error,
//! never a panic, a hang or an allocation it cannot make. The generator is seeded, so a failure reproduces;
//! every crash found becomes a case in `regressions` below.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use inspect3d::cloud::pcd::{self, PcdEncoding};
use inspect3d::cloud::ply::{self, PlyEncoding};
use inspect3d::cloud::pointcloud2::{self, PointCloud2Layout};
use inspect3d::cloud::{PointCloud, check_plausible, read_cloud};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Cases per reader in the suite (about a second each on two cores); `INSPECT3D_FUZZ_CASES` sets more for a
/// longer hunt.
const CASES: u32 = 2000;

fn cases() -> u32 {
    std::env::var("INSPECT3D_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES)
}

fn runner(seed: u8) -> TestRunner {
    let config = Config { cases: cases(), failure_persistence: None, ..Config::default() };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]))
}

fn scans() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/scans")
}

/// Small bundled clouds (every point kept) and a slice of a real depth-camera frame (organised).
fn corpus_clouds() -> Vec<PointCloud> {
    let mut clouds: Vec<PointCloud> =
        ["bunny.pcd", "milk_color.pcd"].iter().map(|n| read_cloud(&scans().join(n)).unwrap()).collect();
    let frame = read_cloud(&scans().join("frame_20121214T142255.814212.pcd")).unwrap();
    let rows: Vec<[f32; 3]> = frame.positions().unwrap()[..640 * 8].to_vec();
    let mut slice = PointCloud::from_xyz(&rows);
    slice.width = 640;
    slice.height = 8;
    clouds.push(slice);
    clouds
}

/// One edit of a byte string.
#[derive(Clone, Debug)]
enum Mutation {
    Flip {
        at: f64,
        bit: u8,
    },
    Set {
        at: f64,
        value: u8,
    },
    Cut {
        at: f64,
    },
    Repeat {
        at: f64,
        len: usize,
    },
    /// Replaces a run of ASCII digits (a header number) with another number.
    Number {
        at: f64,
        value: u64,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = 0.0f64..1.0;
    prop_oneof![
        (at.clone(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (at.clone(), any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        at.clone().prop_map(|at| Mutation::Cut { at }),
        (at.clone(), 1usize..64).prop_map(|(at, len)| Mutation::Repeat { at, len }),
        (at, prop_oneof![0u64..4, Just(u32::MAX as u64), Just(u64::MAX), any::<u64>()])
            .prop_map(|(at, value)| Mutation::Number { at, value }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let pos = |at: f64, len: usize| ((at * len as f64) as usize).min(len - 1);
    match *m {
        Mutation::Flip { at, bit } => {
            let i = pos(at, bytes.len());
            bytes[i] ^= 1 << bit;
        }
        Mutation::Set { at, value } => {
            let i = pos(at, bytes.len());
            bytes[i] = value;
        }
        Mutation::Cut { at } => bytes.truncate(pos(at, bytes.len())),
        Mutation::Repeat { at, len } => {
            let i = pos(at, bytes.len());
            let run: Vec<u8> = bytes[i..(i + len).min(bytes.len())].to_vec();
            bytes.splice(i..i, run);
        }
        Mutation::Number { at, value } => {
            // Numbers in the first 2 kB: where PCD and PLY headers are.
            let head = bytes.len().min(2048);
            let start = pos(at, head);
            if let Some(d) = bytes[start..head].iter().position(u8::is_ascii_digit) {
                let from = start + d;
                let to = from + bytes[from..].iter().take_while(|b| b.is_ascii_digit()).count();
                bytes.splice(from..to, value.to_string().into_bytes());
            }
        }
    }
}

/// What a caller does with a cloud a reader accepted: every downstream read must hold too.
fn use_cloud(cloud: &PointCloud) {
    if let Ok(finite) = cloud.finite_points() {
        let _ = check_plausible(&finite.points);
        let _ = finite.scatter(&vec![0.5; finite.points.len()], f32::NAN);
    }
    let msg = pointcloud2::encode(cloud);
    let _ = pointcloud2::with_f32_fields(&msg, &[("anomaly_score", &vec![0.0; cloud.len()])]);
}

/// Counts accepted and refused inputs: a harness whose mutations never reach past the first check, or never
/// break anything, would test nothing.
#[derive(Default)]
struct Tally {
    accepted: AtomicU32,
    refused: AtomicU32,
}

impl Tally {
    fn count(&self, accepted: bool) {
        let which = if accepted { &self.accepted } else { &self.refused };
        which.fetch_add(1, Ordering::Relaxed);
    }

    fn check(&self, what: &str) {
        let (a, r) = (self.accepted.load(Ordering::Relaxed), self.refused.load(Ordering::Relaxed));
        println!("{what}: {a} mutated inputs accepted, {r} refused");
        assert!(a > 0 && r > 0, "{what}: the mutations should both break and spare inputs ({a} accepted, {r} refused)");
    }
}

fn fuzz_bytes(what: &str, seed: u8, corpus: Vec<Vec<u8>>, decode: impl Fn(&[u8]) -> Option<PointCloud>) {
    let strategy = (0..corpus.len(), proptest::collection::vec(mutation(), 1..6));
    let tally = Tally::default();
    runner(seed)
        .run(&strategy, |(k, mutations)| {
            let mut bytes = corpus[k].clone();
            for m in &mutations {
                apply(&mut bytes, m);
            }
            let decoded = decode(&bytes);
            tally.count(decoded.is_some());
            if let Some(cloud) = decoded {
                use_cloud(&cloud);
            }
            Ok(())
        })
        .unwrap();
    tally.check(what);
}

#[test]
fn pcd_reader_survives_mutated_bundled_files() {
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(scans())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcd"))
        .filter(|p| std::fs::metadata(p).unwrap().len() < 2_000_000)
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    for cloud in corpus_clouds() {
        for encoding in [PcdEncoding::Ascii, PcdEncoding::Binary, PcdEncoding::BinaryCompressed] {
            corpus.push(pcd::encode(&cloud, encoding));
        }
    }
    fuzz_bytes("PCD", 1, corpus, |b| pcd::decode(b).ok());
}

#[test]
fn ply_reader_survives_mutated_files() {
    let mut corpus = Vec::new();
    for cloud in corpus_clouds() {
        for encoding in [PlyEncoding::Ascii, PlyEncoding::BinaryLittleEndian, PlyEncoding::BinaryBigEndian] {
            corpus.push(ply::encode(&cloud, encoding));
        }
    }
    fuzz_bytes("PLY", 2, corpus, |b| {
        let _ = ply::decode_mesh(b);
        ply::decode(b).ok()
    });
}

/// A layout edit: the numbers a publisher can get wrong, and the data.
fn layout_mutation() -> impl Strategy<Value = (u8, u32, Vec<Mutation>)> {
    (0u8..10, prop_oneof![0u32..64, Just(u32::MAX), any::<u32>()], proptest::collection::vec(mutation(), 0..3))
}

fn mutate_layout(msg: &mut PointCloud2Layout, (what, value, data): &(u8, u32, Vec<Mutation>)) {
    let field = (*value as usize) % msg.fields.len().max(1);
    match what {
        0 => msg.width = *value,
        1 => msg.height = *value,
        2 => msg.point_step = *value,
        3 => msg.row_step = *value,
        4 => msg.is_bigendian = !msg.is_bigendian,
        5 if !msg.fields.is_empty() => msg.fields[field].offset = *value,
        6 if !msg.fields.is_empty() => msg.fields[field].datatype = *value as u8,
        7 if !msg.fields.is_empty() => msg.fields[field].count = *value,
        8 if !msg.fields.is_empty() => msg.fields[field].name = ["x", "y", "z", "", "rgb"][field % 5].into(),
        _ => {}
    }
    for m in data {
        apply(&mut msg.data, m);
    }
}

#[test]
fn pointcloud2_decoder_survives_mutated_layouts() {
    let corpus: Vec<PointCloud2Layout> = corpus_clouds().iter().map(pointcloud2::encode).collect();
    let strategy = (0..corpus.len(), proptest::collection::vec(layout_mutation(), 1..4));
    let tally = Tally::default();
    runner(3)
        .run(&strategy, |(k, edits)| {
            let mut msg = corpus[k].clone();
            for edit in &edits {
                mutate_layout(&mut msg, edit);
            }
            let decoded = pointcloud2::decode(&msg);
            tally.count(decoded.is_ok());
            if let Ok(cloud) = decoded {
                use_cloud(&cloud);
                let scores = vec![0.25f32; cloud.len()];
                let _ = pointcloud2::with_f32_fields(&msg, &[("anomaly_score", &scores)]);
            }
            Ok(())
        })
        .unwrap();
    tally.check("PointCloud2");
}

#[cfg(feature = "ros")]
#[test]
fn cdr_reader_survives_mutated_messages_as_rmw_serialises_them() {
    use r2r::WrappedTypesupport;
    let corpus: Vec<Vec<u8>> = corpus_clouds()
        .iter()
        .map(|cloud| {
            let header = r2r::std_msgs::msg::Header { frame_id: "camera".into(), ..Default::default() };
            inspect3d::ros::msg_from_layout(header, pointcloud2::encode(cloud)).to_serialized_bytes().unwrap()
        })
        .collect();
    fuzz_bytes("CDR", 4, corpus, |b| {
        let stamped = inspect3d::cloud::cdr::decode_point_cloud(b).ok()?;
        pointcloud2::decode(&stamped.layout).ok()
    });
}

/// Inputs the fuzzing found that once crashed or misbehaved, kept as fixed cases.
mod regressions {
    use super::*;

    fn pcd_header(fields: &str, count: &str, width: &str, data: &str) -> Vec<u8> {
        format!("FIELDS {fields}\nSIZE 4 4 4\nTYPE F F F\nCOUNT {count}\nWIDTH {width}\nHEIGHT 1\nDATA {data}\n")
            .into_bytes()
    }

    /// Aborted the process: a WIDTH of 10^18 was allocated for before the data was looked at.
    #[test]
    fn a_pcd_width_the_data_cannot_hold_is_an_error() {
        for data in ["ascii", "binary", "binary_compressed"] {
            let mut bytes = pcd_header("x y z", "1 1 1", "4809246512637706240", data);
            bytes.extend([0u8; 64]);
            let e = pcd::decode(&bytes).unwrap_err().to_string();
            assert!(e.contains("cannot hold") || e.contains("overflows"), "{data}: {e}");
        }
    }

    /// Panicked with "capacity overflow": COUNT × size overflowed.
    #[test]
    fn a_pcd_count_beyond_any_field_is_an_error() {
        let bytes = pcd_header("x y z", "1 18446744073709551615 1", "2", "binary");
        assert!(pcd::decode(&bytes).unwrap_err().to_string().contains("COUNT"));
    }

    /// A compressed size claim no LZF stream of that length can meet is refused before allocating.
    #[test]
    fn an_lzf_size_claim_beyond_the_format_is_an_error() {
        let mut bytes = pcd_header("x y z", "1 1 1", "300000000", "binary_compressed");
        bytes.extend(8u32.to_le_bytes());
        bytes.extend(3_600_000_000u32.to_le_bytes());
        bytes.extend([0u8; 8]);
        assert!(pcd::decode(&bytes).is_err());
    }

    /// An element without properties that claims 10^18 records held the reader in a loop reading nothing.
    #[test]
    fn a_ply_element_without_properties_is_not_iterated() {
        let text = "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\n\
                    element junk 1000000000000000000\nend_header\n1 2 3\n";
        let cloud = ply::decode(text.as_bytes()).unwrap();
        assert_eq!(cloud.positions().unwrap(), vec![[1.0, 2.0, 3.0]]);
    }
}
