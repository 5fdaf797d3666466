//! PCD (Point Cloud Library) files: `ascii`, `binary` and `binary_compressed` (LZF, field-major), read and write.
//! Every PCL field type maps to a [`ScalarType`]; PCL's `_` padding fields are skipped on read.

use std::fmt::Write as _;
use std::path::Path;

use super::{CloudError, Field, PointCloud, Result, ScalarType, io_error, lzf};

const FORMAT: &str = "PCD";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcdEncoding {
    Ascii,
    Binary,
    BinaryCompressed,
}

/// A field as the header declares it.
struct Column {
    name: String,
    scalar: ScalarType,
    count: usize,
}

/// The widest field a header may declare: far above any real descriptor, low enough that sizes cannot overflow.
const MAX_COUNT: usize = 1 << 16;

impl Column {
    fn stride(&self) -> usize {
        self.scalar.size() * self.count
    }
    fn is_padding(&self) -> bool {
        self.name == "_"
    }
}

struct Header {
    columns: Vec<Column>,
    width: usize,
    height: usize,
    encoding: PcdEncoding,
}

fn header_error(problem: impl Into<String>) -> CloudError {
    CloudError::BadHeader { format: FORMAT, problem: problem.into() }
}

fn data_error(problem: impl Into<String>) -> CloudError {
    CloudError::BadData { format: FORMAT, problem: problem.into() }
}

fn scalar_from_pcd(kind: &str, size: &str) -> Result<ScalarType> {
    Ok(match (kind, size) {
        ("I", "1") => ScalarType::I8,
        ("U", "1") => ScalarType::U8,
        ("I", "2") => ScalarType::I16,
        ("U", "2") => ScalarType::U16,
        ("I", "4") => ScalarType::I32,
        ("U", "4") => ScalarType::U32,
        ("F", "4") => ScalarType::F32,
        ("F", "8") => ScalarType::F64,
        (k, s) => return Err(header_error(format!("unsupported TYPE {k} with SIZE {s}"))),
    })
}

fn scalar_to_pcd(t: ScalarType) -> (char, usize) {
    let kind = match t {
        ScalarType::I8 | ScalarType::I16 | ScalarType::I32 => 'I',
        ScalarType::U8 | ScalarType::U16 | ScalarType::U32 => 'U',
        ScalarType::F32 | ScalarType::F64 => 'F',
    };
    (kind, t.size())
}

/// Splits the file into its parsed header and the bytes after the `DATA` line.
fn parse_header(bytes: &[u8]) -> Result<(Header, &[u8])> {
    let mut pos = 0;
    let (mut names, mut sizes, mut types, mut counts) = (None, None, None, None);
    let (mut width, mut height, mut points) = (None, None, None);
    loop {
        let rest = &bytes[pos..];
        if rest.is_empty() {
            return Err(header_error("ends before the DATA line"));
        }
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = std::str::from_utf8(&rest[..end]).map_err(|_| header_error("is not text"))?;
        pos += (end + 1).min(rest.len());
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let key = words.next().unwrap_or_default().to_ascii_uppercase();
        let values: Vec<&str> = words.collect();
        let number = |what: &str| -> Result<usize> {
            values.first().and_then(|v| v.parse().ok()).ok_or_else(|| header_error(format!("bad {what} line '{line}'")))
        };
        match key.as_str() {
            "VERSION" | "VIEWPOINT" => {}
            "FIELDS" | "COLUMNS" => names = Some(values.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            "SIZE" => sizes = Some(values.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            "TYPE" => types = Some(values.iter().map(|s| s.to_ascii_uppercase()).collect::<Vec<_>>()),
            "COUNT" => {
                let parsed: Option<Vec<usize>> = values.iter().map(|v| v.parse().ok()).collect();
                counts = Some(parsed.ok_or_else(|| header_error(format!("bad COUNT line '{line}'")))?);
            }
            "WIDTH" => width = Some(number("WIDTH")?),
            "HEIGHT" => height = Some(number("HEIGHT")?),
            "POINTS" => points = Some(number("POINTS")?),
            "DATA" => {
                let encoding = match values.first().map(|v| v.to_ascii_lowercase()).as_deref() {
                    Some("ascii") => PcdEncoding::Ascii,
                    Some("binary") => PcdEncoding::Binary,
                    Some("binary_compressed") => PcdEncoding::BinaryCompressed,
                    other => return Err(header_error(format!("unknown DATA encoding {other:?}"))),
                };
                let names = names.ok_or_else(|| header_error("no FIELDS line"))?;
                let sizes = sizes.ok_or_else(|| header_error("no SIZE line"))?;
                let types = types.ok_or_else(|| header_error("no TYPE line"))?;
                let counts = counts.unwrap_or_else(|| vec![1; names.len()]);
                if sizes.len() != names.len() || types.len() != names.len() || counts.len() != names.len() {
                    return Err(header_error(format!(
                        "{} FIELDS but {} SIZE, {} TYPE and {} COUNT entries",
                        names.len(),
                        sizes.len(),
                        types.len(),
                        counts.len()
                    )));
                }
                let mut columns = Vec::with_capacity(names.len());
                for (((name, size), kind), count) in names.into_iter().zip(&sizes).zip(&types).zip(&counts) {
                    if *count == 0 || *count > MAX_COUNT {
                        return Err(header_error(format!(
                            "field '{name}' has COUNT {count} (1 to {MAX_COUNT}; PCL's widest descriptors have a few hundred)"
                        )));
                    }
                    columns.push(Column { scalar: scalar_from_pcd(kind, size)?, count: *count, name });
                }
                let height = height.unwrap_or(1);
                let width = match (width, points) {
                    (Some(w), _) => w,
                    (None, Some(p)) if height == 1 => p,
                    _ => return Err(header_error("no WIDTH line")),
                };
                let n = width.checked_mul(height).ok_or_else(|| header_error("WIDTH × HEIGHT overflows"))?;
                if let Some(p) = points
                    && p != n
                {
                    return Err(header_error(format!("POINTS {p} differs from WIDTH {width} × HEIGHT {height}")));
                }
                return Ok((Header { columns, width, height, encoding }, &bytes[pos..]));
            }
            _ => return Err(header_error(format!("unknown line '{line}'"))),
        }
    }
}

fn parse_ascii_value(token: &str, scalar: ScalarType, out: &mut Vec<u8>) -> Option<()> {
    match scalar {
        ScalarType::I8 => out.extend(token.parse::<i8>().ok()?.to_le_bytes()),
        ScalarType::U8 => out.extend(token.parse::<u8>().ok()?.to_le_bytes()),
        ScalarType::I16 => out.extend(token.parse::<i16>().ok()?.to_le_bytes()),
        ScalarType::U16 => out.extend(token.parse::<u16>().ok()?.to_le_bytes()),
        ScalarType::I32 => out.extend(token.parse::<i32>().ok()?.to_le_bytes()),
        ScalarType::U32 => out.extend(token.parse::<u32>().ok()?.to_le_bytes()),
        ScalarType::F32 => out.extend(token.parse::<f32>().ok()?.to_le_bytes()),
        ScalarType::F64 => out.extend(token.parse::<f64>().ok()?.to_le_bytes()),
    }
    Some(())
}

pub fn decode(bytes: &[u8]) -> Result<PointCloud> {
    let (header, body) = parse_header(bytes)?;
    let n = header.width * header.height;
    if n == 0 {
        return Err(CloudError::Empty);
    }
    let record: usize = header.columns.iter().map(Column::stride).sum();
    // Nothing is allocated for points the data cannot hold: a header may claim any WIDTH.
    let total = n.checked_mul(record).ok_or_else(|| header_error("WIDTH × HEIGHT × record size overflows"))?;
    let room = match header.encoding {
        // At least one character and a line break per point.
        PcdEncoding::Ascii => body.len() / 2,
        PcdEncoding::Binary => body.len() / record.max(1),
        PcdEncoding::BinaryCompressed => body.len().saturating_mul(lzf::MAX_EXPANSION) / record.max(1),
    };
    if n > room {
        return Err(data_error(format!(
            "the header declares {n} points ({total} bytes) but the {} bytes of data cannot hold them",
            body.len()
        )));
    }
    let mut buffers: Vec<Vec<u8>> = header.columns.iter().map(|c| Vec::with_capacity(n * c.stride())).collect();
    match header.encoding {
        PcdEncoding::Ascii => {
            let text = std::str::from_utf8(body).map_err(|_| data_error("ascii data is not text"))?;
            let mut lines = text.lines().filter(|l| !l.trim().is_empty());
            for i in 0..n {
                let line =
                    lines.next().ok_or_else(|| data_error(format!("{i} point lines, the header declares {n}")))?;
                let mut tokens = line.split_whitespace();
                for (col, buf) in header.columns.iter().zip(&mut buffers) {
                    for _ in 0..col.count {
                        let token =
                            tokens.next().ok_or_else(|| data_error(format!("line {} has too few values", i + 1)))?;
                        parse_ascii_value(token, col.scalar, buf).ok_or_else(|| {
                            data_error(format!(
                                "line {}: '{token}' is not a {:?} for '{}'",
                                i + 1,
                                col.scalar,
                                col.name
                            ))
                        })?;
                    }
                }
            }
        }
        PcdEncoding::Binary => {
            if body.len() < total {
                return Err(data_error(format!("{} bytes of binary data, {n} points need {total}", body.len())));
            }
            for point in body[..total].chunks_exact(record) {
                let mut at = 0;
                for (col, buf) in header.columns.iter().zip(&mut buffers) {
                    buf.extend_from_slice(&point[at..at + col.stride()]);
                    at += col.stride();
                }
            }
        }
        PcdEncoding::BinaryCompressed => {
            let size = |at: usize| -> Result<usize> {
                let b = body.get(at..at + 4).ok_or_else(|| data_error("truncated compressed-size words"))?;
                Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            };
            let (packed, unpacked) = (size(0)?, size(4)?);
            if unpacked != total {
                return Err(data_error(format!("uncompressed size {unpacked}, {n} points need {total}")));
            }
            let payload = body
                .get(8..8 + packed)
                .ok_or_else(|| data_error(format!("compressed size {packed} runs past the end of the file")))?;
            let raw = lzf::decompress(payload, unpacked)?;
            // Field-major: all points' values of the first field, then the second, ...
            let mut at = 0;
            for (col, buf) in header.columns.iter().zip(&mut buffers) {
                let len = n * col.stride();
                buf.extend_from_slice(&raw[at..at + len]);
                at += len;
            }
        }
    }
    let fields = header
        .columns
        .into_iter()
        .zip(buffers)
        .filter(|(c, _)| !c.is_padding())
        .map(|(c, data)| Field::from_le_bytes(c.name, c.scalar, c.count, data))
        .collect::<Result<Vec<_>>>()?;
    PointCloud::new(header.width, header.height, fields)
}

pub fn read(path: &Path) -> Result<PointCloud> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    decode(&bytes).map_err(|e| e.in_file(path))
}

fn write_ascii_value(out: &mut String, field: &Field, i: usize, element: usize) {
    let size = field.scalar.size();
    let at = i * field.stride() + element * size;
    let b = &field.bytes()[at..at + size];
    let value = field.scalar.read_le(b);
    // PCL writes and reads non-finite values as nan / inf / -inf.
    let _ = if value.is_nan() {
        write!(out, "nan")
    } else if value.is_infinite() {
        write!(out, "{}", if value > 0.0 { "inf" } else { "-inf" })
    } else if field.scalar == ScalarType::F32 {
        // Shortest text that parses back to the same f32 (f64's would print the widened digits).
        write!(out, "{}", value as f32)
    } else {
        write!(out, "{value}")
    };
}

pub fn encode(cloud: &PointCloud, encoding: PcdEncoding) -> Vec<u8> {
    let fields = cloud.fields();
    let n = cloud.len();
    let join = |f: &dyn Fn(&Field) -> String| fields.iter().map(f).collect::<Vec<_>>().join(" ");
    let data_name = match encoding {
        PcdEncoding::Ascii => "ascii",
        PcdEncoding::Binary => "binary",
        PcdEncoding::BinaryCompressed => "binary_compressed",
    };
    let mut out = format!(
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS {}\nSIZE {}\nTYPE {}\nCOUNT {}\nWIDTH {}\n\
         HEIGHT {}\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {data_name}\n",
        join(&|f| f.name.clone()),
        join(&|f| scalar_to_pcd(f.scalar).1.to_string()),
        join(&|f| scalar_to_pcd(f.scalar).0.to_string()),
        join(&|f| f.count.to_string()),
        cloud.width,
        cloud.height,
    )
    .into_bytes();
    match encoding {
        PcdEncoding::Ascii => {
            let mut text = String::new();
            for i in 0..n {
                for (k, f) in fields.iter().enumerate() {
                    for e in 0..f.count {
                        if k + e > 0 {
                            text.push(' ');
                        }
                        write_ascii_value(&mut text, f, i, e);
                    }
                }
                text.push('\n');
            }
            out.extend_from_slice(text.as_bytes());
        }
        PcdEncoding::Binary => {
            for i in 0..n {
                for f in fields {
                    out.extend_from_slice(f.point_bytes(i));
                }
            }
        }
        PcdEncoding::BinaryCompressed => {
            let raw: Vec<u8> = fields.iter().flat_map(|f| f.bytes().iter().copied()).collect();
            let packed = lzf::compress(&raw);
            out.extend_from_slice(&(packed.len() as u32).to_le_bytes());
            out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            out.extend_from_slice(&packed);
        }
    }
    out
}

pub fn write(path: &Path, cloud: &PointCloud, encoding: PcdEncoding) -> Result<()> {
    std::fs::write(path, encode(cloud, encoding)).map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> PointCloud {
        let xyz = [[0.5f32, -1.25, 3.0], [f32::NAN, f32::NAN, f32::NAN], [1e-7, 2e9, -0.0], [7.0, 8.0, 9.0]];
        let mut cloud = PointCloud::from_xyz(&xyz);
        let rgba: Vec<u8> = [0xff00_80ffu32, 0, 1, u32::MAX].iter().flat_map(|v| v.to_le_bytes()).collect();
        cloud.set_field(Field::from_le_bytes("rgba", ScalarType::U32, 1, rgba).unwrap()).unwrap();
        let hist: Vec<u8> = (0..4 * 3).flat_map(|v| (v as i16 - 5).to_le_bytes()).collect();
        cloud.set_field(Field::from_le_bytes("hist", ScalarType::I16, 3, hist).unwrap()).unwrap();
        PointCloud::new(2, 2, cloud.fields().to_vec()).unwrap()
    }

    #[test]
    fn every_encoding_round_trips_bit_exact() {
        let cloud = sample();
        for enc in [PcdEncoding::Ascii, PcdEncoding::Binary, PcdEncoding::BinaryCompressed] {
            let back = decode(&encode(&cloud, enc)).unwrap();
            assert_eq!((back.width, back.height), (2, 2), "{enc:?}");
            for (a, b) in back.fields().iter().zip(cloud.fields()) {
                // NaN != NaN, so compare bits (ascii writes the canonical NaN, which is what we store too).
                assert_eq!(a.bytes(), b.bytes(), "{enc:?} field {}", a.name);
            }
        }
    }

    #[test]
    fn padding_fields_are_skipped() {
        let text =
            "FIELDS x y z _\nSIZE 4 4 4 1\nTYPE F F F U\nCOUNT 1 1 1 4\nWIDTH 1\nPOINTS 1\nDATA ascii\n1 2 3 0 0 0 0\n";
        let cloud = decode(text.as_bytes()).unwrap();
        assert_eq!(cloud.fields().len(), 3);
        assert_eq!(cloud.positions().unwrap(), vec![[1.0, 2.0, 3.0]]);
    }

    #[test]
    fn bad_files_name_the_problem() {
        let base = "FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 2\nPOINTS 2\nDATA ascii\n1 2 3\n";
        assert!(decode(base.as_bytes()).unwrap_err().to_string().contains("1 point lines"));
        let mismatch = base.replace("POINTS 2", "POINTS 3");
        assert!(decode(mismatch.as_bytes()).unwrap_err().to_string().contains("POINTS 3"));
        let bad_type = base.replace("TYPE F F F", "TYPE F F Q");
        assert!(decode(bad_type.as_bytes()).unwrap_err().to_string().contains("TYPE Q"));
        let not_a_number = "FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 1\nDATA ascii\n1 2 pear\n";
        assert!(decode(not_a_number.as_bytes()).unwrap_err().to_string().contains("'pear'"));
        let short_binary = "FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 10\nDATA binary\nabc";
        assert!(matches!(decode(short_binary.as_bytes()), Err(CloudError::BadData { .. })));
        assert!(decode(b"FIELDS x\n").is_err());
    }

    proptest! {
        #[test]
        fn decoder_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400), enc in 0usize..3, width in 0usize..40) {
            let data = ["ascii", "binary", "binary_compressed"][enc];
            let mut bytes = format!("FIELDS x y z rgb\nSIZE 4 4 4 4\nTYPE F F F U\nCOUNT 1 1 1 1\nWIDTH {width}\nHEIGHT 1\nDATA {data}\n").into_bytes();
            bytes.extend(body);
            let _ = decode(&bytes);
        }

        #[test]
        fn header_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }
    }
}
