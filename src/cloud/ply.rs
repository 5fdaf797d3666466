//! PLY files: the `vertex` element read into a [`PointCloud`] (ascii, binary little- and big-endian; other
//! elements such as faces are skipped), and clouds written with every field as a vertex property — with
//! [`heatmap_colours`] a score opens coloured in any viewer.

use std::fmt::Write as _;
use std::path::Path;

use super::{CloudError, Field, PointCloud, Result, ScalarType, io_error};

const FORMAT: &str = "PLY";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlyEncoding {
    Ascii,
    BinaryLittleEndian,
    BinaryBigEndian,
}

enum Property {
    Scalar { name: String, scalar: ScalarType },
    List { name: String, count: ScalarType, item: ScalarType },
}

struct Element {
    name: String,
    count: usize,
    properties: Vec<Property>,
}

fn header_error(problem: impl Into<String>) -> CloudError {
    CloudError::BadHeader { format: FORMAT, problem: problem.into() }
}

fn data_error(problem: impl Into<String>) -> CloudError {
    CloudError::BadData { format: FORMAT, problem: problem.into() }
}

fn scalar_from_ply(name: &str) -> Result<ScalarType> {
    Ok(match name {
        "char" | "int8" => ScalarType::I8,
        "uchar" | "uint8" => ScalarType::U8,
        "short" | "int16" => ScalarType::I16,
        "ushort" | "uint16" => ScalarType::U16,
        "int" | "int32" => ScalarType::I32,
        "uint" | "uint32" => ScalarType::U32,
        "float" | "float32" => ScalarType::F32,
        "double" | "float64" => ScalarType::F64,
        other => return Err(header_error(format!("unknown property type '{other}'"))),
    })
}

fn scalar_to_ply(t: ScalarType) -> &'static str {
    match t {
        ScalarType::I8 => "char",
        ScalarType::U8 => "uchar",
        ScalarType::I16 => "short",
        ScalarType::U16 => "ushort",
        ScalarType::I32 => "int",
        ScalarType::U32 => "uint",
        ScalarType::F32 => "float",
        ScalarType::F64 => "double",
    }
}

fn parse_header(bytes: &[u8]) -> Result<(PlyEncoding, Vec<Element>, &[u8])> {
    let mut pos = 0;
    let mut encoding = None;
    let mut elements: Vec<Element> = Vec::new();
    let mut first = true;
    loop {
        let rest = &bytes[pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| header_error("no end_header line"))?;
        let line = std::str::from_utf8(&rest[..end]).map_err(|_| header_error("is not text"))?.trim();
        pos += end + 1;
        if first {
            if line != "ply" {
                return Err(header_error("does not start with 'ply'"));
            }
            first = false;
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] | ["comment", ..] | ["obj_info", ..] => {}
            ["format", kind, _version] => {
                encoding = Some(match *kind {
                    "ascii" => PlyEncoding::Ascii,
                    "binary_little_endian" => PlyEncoding::BinaryLittleEndian,
                    "binary_big_endian" => PlyEncoding::BinaryBigEndian,
                    other => return Err(header_error(format!("unknown format '{other}'"))),
                })
            }
            ["element", name, count] => elements.push(Element {
                name: name.to_string(),
                count: count.parse().map_err(|_| header_error(format!("bad element count in '{line}'")))?,
                properties: Vec::new(),
            }),
            ["property", "list", count, item, name] => {
                elements.last_mut().ok_or_else(|| header_error("property before any element"))?.properties.push(
                    Property::List {
                        name: name.to_string(),
                        count: scalar_from_ply(count)?,
                        item: scalar_from_ply(item)?,
                    },
                )
            }
            ["property", kind, name] => elements
                .last_mut()
                .ok_or_else(|| header_error("property before any element"))?
                .properties
                .push(Property::Scalar { name: name.to_string(), scalar: scalar_from_ply(kind)? }),
            ["end_header"] => {
                let encoding = encoding.ok_or_else(|| header_error("no format line"))?;
                return Ok((encoding, elements, &bytes[pos..]));
            }
            _ => return Err(header_error(format!("unknown line '{line}'"))),
        }
    }
}

/// Reads values one at a time from the body in the file's encoding, checking bounds.
struct Reader<'a> {
    body: &'a [u8],
    pos: usize,
    encoding: PlyEncoding,
    tokens: std::str::SplitAsciiWhitespace<'a>,
}

impl<'a> Reader<'a> {
    fn new(body: &'a [u8], encoding: PlyEncoding) -> Result<Self> {
        let text = if encoding == PlyEncoding::Ascii {
            std::str::from_utf8(body).map_err(|_| data_error("ascii data is not text"))?
        } else {
            ""
        };
        Ok(Self { body, pos: 0, encoding, tokens: text.split_ascii_whitespace() })
    }

    /// One value, appended little-endian to `out`.
    fn read_into(&mut self, scalar: ScalarType, out: &mut Vec<u8>) -> Result<()> {
        if self.encoding == PlyEncoding::Ascii {
            let token = self.tokens.next().ok_or_else(|| data_error("ascii data ends early"))?;
            let bad = || data_error(format!("'{token}' is not a {scalar:?}"));
            match scalar {
                ScalarType::F32 => out.extend(token.parse::<f32>().map_err(|_| bad())?.to_le_bytes()),
                ScalarType::F64 => out.extend(token.parse::<f64>().map_err(|_| bad())?.to_le_bytes()),
                _ => {
                    let v: i64 = token.parse().map_err(|_| bad())?;
                    let le = v.to_le_bytes();
                    // Range check by round trip through the target type's width.
                    let size = scalar.size();
                    out.extend_from_slice(&le[..size]);
                    let start = out.len() - size;
                    if scalar.read_le(&out[start..]) as i64 != v {
                        return Err(bad());
                    }
                }
            }
            return Ok(());
        }
        let size = scalar.size();
        let bytes = self
            .body
            .get(self.pos..self.pos + size)
            .ok_or_else(|| data_error(format!("binary data ends at byte {}", self.pos)))?;
        self.pos += size;
        if self.encoding == PlyEncoding::BinaryBigEndian {
            out.extend(bytes.iter().rev());
        } else {
            out.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn read_f64(&mut self, scalar: ScalarType) -> Result<f64> {
        let mut tmp = Vec::with_capacity(8);
        self.read_into(scalar, &mut tmp)?;
        Ok(scalar.read_le(&tmp))
    }
}

pub fn decode(bytes: &[u8]) -> Result<PointCloud> {
    Ok(read_elements(bytes, false)?.0)
}

/// A PLY mesh: its vertices as a cloud and its faces as vertex-index polygons.
pub fn decode_mesh(bytes: &[u8]) -> Result<(PointCloud, Vec<Vec<u32>>)> {
    read_elements(bytes, true)
}

/// Reads the `vertex` element into a cloud and, with `faces`, the `face` element's vertex-index lists; other
/// elements are skipped (and with `faces` false, nothing after the vertices is read).
fn read_elements(bytes: &[u8], faces: bool) -> Result<(PointCloud, Vec<Vec<u32>>)> {
    let (encoding, elements, body) = parse_header(bytes)?;
    if !elements.iter().any(|e| e.name == "vertex") {
        return Err(header_error("no vertex element"));
    }
    let mut reader = Reader::new(body, encoding)?;
    let mut cloud = None;
    let mut polygons = Vec::new();
    for element in elements {
        let is_vertex = element.name == "vertex";
        let is_face = faces && element.name == "face";
        let mut buffers: Vec<Vec<u8>> = element.properties.iter().map(|_| Vec::new()).collect();
        let mut scratch = Vec::new();
        // An element without properties holds no bytes, whatever count it claims: nothing to read.
        let records = if element.properties.is_empty() { 0 } else { element.count };
        for _ in 0..records {
            for (k, property) in element.properties.iter().enumerate() {
                match property {
                    Property::Scalar { scalar, .. } => {
                        let out = if is_vertex { &mut buffers[k] } else { &mut scratch };
                        reader.read_into(*scalar, out)?;
                    }
                    Property::List { name, count, item } => {
                        let len = reader.read_f64(*count)?;
                        if !(0.0..=1e6).contains(&len) {
                            return Err(data_error(format!("list length {len} in element '{}'", element.name)));
                        }
                        let mut indices = Vec::with_capacity(len as usize);
                        for _ in 0..len as usize {
                            scratch.clear();
                            reader.read_into(*item, &mut scratch)?;
                            indices.push(item.read_le(&scratch));
                        }
                        if is_face && (name == "vertex_indices" || name == "vertex_index") {
                            let valid = indices.iter().all(|i| *i >= 0.0 && i.fract() == 0.0 && *i < u32::MAX as f64);
                            if !valid {
                                return Err(data_error(format!("face with a bad vertex index: {indices:?}")));
                            }
                            polygons.push(indices.iter().map(|&i| i as u32).collect());
                        }
                    }
                }
                scratch.clear();
            }
        }
        if is_vertex {
            if element.count == 0 {
                return Err(CloudError::Empty);
            }
            let fields = element
                .properties
                .iter()
                .zip(buffers)
                .filter_map(|(p, data)| match p {
                    Property::Scalar { name, scalar } => Some(Field::from_le_bytes(name.clone(), *scalar, 1, data)),
                    Property::List { .. } => None,
                })
                .collect::<Result<Vec<_>>>()?;
            cloud = Some(PointCloud::new(element.count, 1, fields)?);
            if !faces {
                break;
            }
        }
    }
    let cloud = cloud.ok_or_else(|| header_error("no vertex element"))?;
    Ok((cloud, polygons))
}

pub fn read(path: &Path) -> Result<PointCloud> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    decode(&bytes).map_err(|e| e.in_file(path))
}

/// Writes every field as a vertex property; a field with `count > 1` becomes `name_0`, `name_1`, ….
pub fn encode(cloud: &PointCloud, encoding: PlyEncoding) -> Vec<u8> {
    let format = match encoding {
        PlyEncoding::Ascii => "ascii",
        PlyEncoding::BinaryLittleEndian => "binary_little_endian",
        PlyEncoding::BinaryBigEndian => "binary_big_endian",
    };
    let mut header =
        format!("ply\nformat {format} 1.0\ncomment written by inspect3d\nelement vertex {}\n", cloud.len());
    for f in cloud.fields() {
        for e in 0..f.count {
            let name = if f.count == 1 { f.name.clone() } else { format!("{}_{e}", f.name) };
            let _ = writeln!(header, "property {} {name}", scalar_to_ply(f.scalar));
        }
    }
    header.push_str("end_header\n");
    let mut out = header.into_bytes();
    let mut line = String::new();
    for i in 0..cloud.len() {
        line.clear();
        for f in cloud.fields() {
            let size = f.scalar.size();
            for (e, value) in f.point_bytes(i).chunks_exact(size).enumerate() {
                match encoding {
                    PlyEncoding::Ascii => {
                        if !line.is_empty() || e > 0 {
                            line.push(' ');
                        }
                        let v = f.scalar.read_le(value);
                        let _ = if f.scalar == ScalarType::F32 {
                            write!(line, "{}", v as f32)
                        } else {
                            write!(line, "{v}")
                        };
                    }
                    PlyEncoding::BinaryLittleEndian => out.extend_from_slice(value),
                    PlyEncoding::BinaryBigEndian => out.extend(value.iter().rev()),
                }
            }
        }
        if encoding == PlyEncoding::Ascii {
            line.push('\n');
            out.extend_from_slice(line.as_bytes());
        }
    }
    out
}

pub fn write(path: &Path, cloud: &PointCloud, encoding: PlyEncoding) -> Result<()> {
    std::fs::write(path, encode(cloud, encoding)).map_err(io_error(path))
}

/// A blue → green → yellow → red ramp over `[low, high]`; non-finite scores are grey.
pub fn heatmap_colours(scores: &[f32], low: f32, high: f32) -> [Vec<u8>; 3] {
    const STOPS: [[f32; 3]; 5] =
        [[0.19, 0.21, 0.58], [0.13, 0.57, 0.55], [0.36, 0.78, 0.38], [0.99, 0.91, 0.15], [0.85, 0.10, 0.10]];
    let span = (high - low).max(f32::EPSILON);
    let mut rgb =
        [Vec::with_capacity(scores.len()), Vec::with_capacity(scores.len()), Vec::with_capacity(scores.len())];
    for &s in scores {
        let c = if s.is_finite() {
            let t = ((s - low) / span).clamp(0.0, 1.0) * (STOPS.len() - 1) as f32;
            let k = (t.floor() as usize).min(STOPS.len() - 2);
            let w = t - k as f32;
            [0, 1, 2].map(|a| STOPS[k][a] * (1.0 - w) + STOPS[k + 1][a] * w)
        } else {
            [0.5; 3]
        };
        for a in 0..3 {
            rgb[a].push((c[a] * 255.0).round() as u8);
        }
    }
    rgb
}

/// The cloud's x, y, z, the score as a FLOAT32 property and its heatmap as red/green/blue: opens coloured in
/// MeshLab, CloudCompare or Open3D.
pub fn heatmap_cloud(points: &[[f32; 3]], score_name: &str, scores: &[f32], low: f32, high: f32) -> Result<PointCloud> {
    let mut cloud = PointCloud::from_xyz(points);
    cloud.set_field(Field::from_f32(score_name, scores))?;
    let [r, g, b] = heatmap_colours(scores, low, high);
    for (name, channel) in [("red", r), ("green", g), ("blue", b)] {
        cloud.set_field(Field::from_u8(name, &channel))?;
    }
    Ok(cloud)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn heatmap_round_trips_in_every_encoding() {
        let points = [[0.0f32, 1.0, 2.0], [3.5, -4.0, 5.25], [1e-3, 0.0, -7.0]];
        let cloud = heatmap_cloud(&points, "anomaly_score", &[0.0, 0.5, 1.0], 0.0, 1.0).unwrap();
        for enc in [PlyEncoding::Ascii, PlyEncoding::BinaryLittleEndian, PlyEncoding::BinaryBigEndian] {
            let back = decode(&encode(&cloud, enc)).unwrap();
            assert_eq!(back, cloud, "{enc:?}");
        }
        let red = cloud.field("red").unwrap();
        assert!(red.value(2, 0) > red.value(0, 0), "high scores are redder");
    }

    #[test]
    fn mesh_faces_are_skipped_or_read() {
        let text = "ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n\
                    element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n1 1 0\n4 0 1 3 2\n";
        let cloud = decode(text.as_bytes()).unwrap();
        assert_eq!(cloud.positions().unwrap()[1], [1.0, 0.0, 0.0]);
        let (vertices, faces) = decode_mesh(text.as_bytes()).unwrap();
        assert_eq!((vertices.len(), faces), (4, vec![vec![0, 1, 3, 2]]));
        assert!(decode_mesh(text.replace("4 0 1 3 2", "3 0 1 -2").as_bytes()).is_err());
    }

    #[test]
    fn bad_files_name_the_problem() {
        assert!(
            decode(b"ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nend_header\n1\n")
                .unwrap_err()
                .to_string()
                .contains("ends early")
        );
        assert!(
            decode(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty quad x\nend_header\n1\n")
                .unwrap_err()
                .to_string()
                .contains("quad")
        );
        assert!(decode(b"PLY\n").is_err());
        assert!(decode(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty uchar x\nend_header\n300\n").is_err());
    }

    proptest! {
        #[test]
        fn decoder_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300), big in any::<bool>()) {
            let format = if big { "binary_big_endian" } else { "binary_little_endian" };
            let mut bytes = format!("ply\nformat {format} 1.0\nelement vertex 4\nproperty float x\nproperty float y\n\
                                    property float z\nelement face 2\nproperty list uchar int vertex_indices\nend_header\n").into_bytes();
            bytes.extend(body);
            let _ = decode(&bytes);
        }
    }
}
