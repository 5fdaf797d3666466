//! `sensor_msgs/PointCloud2` byte layouts ↔ [`PointCloud`], without ROS types: the ROS layer moves a message's
//! fields into a [`PointCloud2Layout`] and back. Decoding accepts every layout the message allows: the eight
//! datatypes, either endianness, padding inside a point (`point_step`) and after a row (`row_step`), `count > 1`,
//! organised clouds. Anything inconsistent is a [`CloudError`] naming the problem, never a panic.

use super::{CloudError, Field, PointCloud, Result, ScalarType};

/// `sensor_msgs/PointField`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointFieldLayout {
    pub name: String,
    pub offset: u32,
    pub datatype: u8,
    pub count: u32,
}

/// The body of a `sensor_msgs/PointCloud2` (everything but the header).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PointCloud2Layout {
    pub height: u32,
    pub width: u32,
    pub fields: Vec<PointFieldLayout>,
    pub is_bigendian: bool,
    pub point_step: u32,
    pub row_step: u32,
    pub data: Vec<u8>,
    pub is_dense: bool,
}

/// A field's place inside a point record, checked against the layout.
struct Slot {
    scalar: ScalarType,
    count: usize,
    offset: usize,
}

impl PointCloud2Layout {
    /// Checks every size and offset; returns the slot of each field.
    fn validate(&self) -> Result<Vec<Slot>> {
        let (width, height) = (self.width as usize, self.height as usize);
        let (point_step, row_step) = (self.point_step as usize, self.row_step as usize);
        if width == 0 || height == 0 {
            return Err(CloudError::Empty);
        }
        if point_step == 0 {
            return Err(CloudError::BadLayout("point_step is 0".into()));
        }
        if self.fields.is_empty() {
            return Err(CloudError::BadLayout("the message declares no fields".into()));
        }
        let min_row = width
            .checked_mul(point_step)
            .ok_or_else(|| CloudError::BadLayout("width × point_step overflows".into()))?;
        if row_step < min_row {
            return Err(CloudError::BadLayout(format!(
                "row_step {row_step} is less than width {width} × point_step {point_step}"
            )));
        }
        let expected =
            row_step.checked_mul(height).ok_or_else(|| CloudError::BadLayout("row_step × height overflows".into()))?;
        if self.data.len() < expected {
            return Err(CloudError::DataTooShort { actual: self.data.len(), expected, row_step, height });
        }
        if self.data.len() > expected {
            return Err(CloudError::DataTooLong { actual: self.data.len(), expected, row_step, height });
        }
        let mut slots = Vec::with_capacity(self.fields.len());
        for (i, f) in self.fields.iter().enumerate() {
            let bad = |problem: String| CloudError::BadField { name: f.name.clone(), problem };
            let scalar = ScalarType::from_datatype(f.datatype)
                .ok_or_else(|| CloudError::UnknownDatatype { name: f.name.clone(), datatype: f.datatype })?;
            if f.count == 0 {
                return Err(bad("count is 0".into()));
            }
            if self.fields[..i].iter().any(|g| g.name == f.name) {
                return Err(bad("appears twice".into()));
            }
            let end = (f.offset as usize).checked_add(scalar.size() * f.count as usize);
            if end.is_none_or(|end| end > point_step) {
                return Err(bad(format!(
                    "offset {} + {} × {} bytes runs past point_step {point_step}",
                    f.offset,
                    f.count,
                    scalar.size()
                )));
            }
            slots.push(Slot { scalar, count: f.count as usize, offset: f.offset as usize });
        }
        Ok(slots)
    }
}

/// Decodes every field of a message into a [`PointCloud`] (little-endian, organised layout kept).
pub fn decode(msg: &PointCloud2Layout) -> Result<PointCloud> {
    let slots = msg.validate()?;
    let n = msg.width as usize * msg.height as usize;
    let (point_step, row_step) = (msg.point_step as usize, msg.row_step as usize);
    // Each row's points (validate checked that every row's points lie inside the data).
    let points = || {
        (0..msg.height as usize).flat_map(move |row| {
            let start = row * row_step;
            msg.data[start..start + msg.width as usize * point_step].chunks_exact(point_step)
        })
    };
    let mut fields = Vec::with_capacity(slots.len());
    for (slot, f) in slots.iter().zip(&msg.fields) {
        let size = slot.scalar.size();
        let stride = size * slot.count;
        let mut out = Vec::with_capacity(n * stride);
        let values = points().map(|point| &point[slot.offset..slot.offset + stride]);
        match (msg.is_bigendian && size > 1, stride) {
            (true, _) => values.for_each(|src| src.chunks_exact(size).for_each(|v| out.extend(v.iter().rev()))),
            // The usual field, one 4-byte value: a fixed-size copy, not a call to memcpy.
            (false, 4) => values.for_each(|src| out.extend_from_slice(&<[u8; 4]>::try_from(src).unwrap_or_default())),
            (false, _) => values.for_each(|src| out.extend_from_slice(src)),
        }
        fields.push(Field::from_le_bytes(f.name.clone(), slot.scalar, slot.count, out)?);
    }
    PointCloud::new(msg.width as usize, msg.height as usize, fields)
}

/// Encodes a cloud densely packed, little-endian, fields in the cloud's order.
pub fn encode(cloud: &PointCloud) -> PointCloud2Layout {
    let mut layout_fields = Vec::with_capacity(cloud.fields().len());
    let mut offset = 0usize;
    for f in cloud.fields() {
        layout_fields.push(PointFieldLayout {
            name: f.name.clone(),
            offset: offset as u32,
            datatype: f.scalar.datatype(),
            count: f.count as u32,
        });
        offset += f.stride();
    }
    let point_step = offset;
    let mut data = Vec::with_capacity(point_step * cloud.len());
    for i in 0..cloud.len() {
        for f in cloud.fields() {
            data.extend_from_slice(f.point_bytes(i));
        }
    }
    PointCloud2Layout {
        height: cloud.height as u32,
        width: cloud.width as u32,
        fields: layout_fields,
        is_bigendian: false,
        point_step: point_step as u32,
        row_step: (point_step * cloud.width) as u32,
        data,
        is_dense: cloud.is_dense(),
    }
}

/// `msg`'s layout with FLOAT32 fields added (e.g. `anomaly_score`), before any data is written: every original
/// field keeps its offset, type and endianness, the new ones go after the old point record (4-byte aligned), each
/// row keeps its padding. A field of the same name that is already FLOAT32 × 1 is overwritten in place instead.
#[derive(Clone, Debug)]
pub struct AddedF32Fields {
    /// The new message's fields, flags and steps; its `data` stays empty.
    pub head: PointCloud2Layout,
    /// Per added field, its name and its offset in the new point record.
    added: Vec<(String, usize)>,
    /// The steps of the message the fields are added to.
    source_steps: (usize, usize),
}

impl AddedF32Fields {
    /// Checks `msg` and that FLOAT32 fields `names` can be added to it.
    pub fn plan(msg: &PointCloud2Layout, names: &[&str]) -> Result<Self> {
        msg.validate()?;
        let (fields, point_step, targets) = f32_field_layout(msg, names)?;
        let (old_step, width) = (msg.point_step as usize, msg.width as usize);
        let padding = msg.row_step as usize - width * old_step;
        let head = PointCloud2Layout {
            height: msg.height,
            width: msg.width,
            fields,
            is_bigendian: msg.is_bigendian,
            point_step: point_step as u32,
            row_step: (width * point_step + padding) as u32,
            data: Vec::new(),
            is_dense: msg.is_dense,
        };
        let added = names.iter().map(|n| n.to_string()).zip(targets).collect();
        Ok(Self { head, added, source_steps: (old_step, msg.row_step as usize) })
    }

    /// Appends the new message's data to `out`: `msg`'s (the message planned for) with `values` in the added
    /// fields, one slice per field in the planned order, one value per point.
    pub fn write_data(&self, msg: &PointCloud2Layout, values: &[&[f32]], out: &mut Vec<u8>) -> Result<()> {
        let (old_step, old_row_step) = self.source_steps;
        let (width, height) = (self.head.width as usize, self.head.height as usize);
        if (msg.point_step as usize, msg.row_step as usize) != self.source_steps
            || (msg.width as usize, msg.height as usize) != (width, height)
            || msg.data.len() != old_row_step * height
        {
            return Err(CloudError::BadLayout("not the message these fields were planned for".into()));
        }
        let n = width * height;
        for (k, (name, _)) in self.added.iter().enumerate() {
            let given = values.get(k).map_or(0, |v| v.len());
            if given != n {
                let problem = format!("{given} values for a cloud of {n} points");
                return Err(CloudError::BadField { name: name.clone(), problem });
            }
        }
        let (point_step, row_step) = (self.head.point_step as usize, self.head.row_step as usize);
        let start = out.len();
        out.resize(start + row_step * height, 0);
        let rows = msg.data.chunks_exact(old_row_step).zip(out[start..].chunks_exact_mut(row_step));
        for (row, (src, dst)) in rows.enumerate() {
            let (src_points, src_padding) = src.split_at(width * old_step);
            let (dst_points, dst_padding) = dst.split_at_mut(width * point_step);
            dst_padding.copy_from_slice(src_padding);
            // A point of a common size is copied as one fixed-size value, not by a call to memcpy per point.
            match old_step {
                12 => copy_points::<12>(src_points, dst_points, point_step),
                16 => copy_points::<16>(src_points, dst_points, point_step),
                32 => copy_points::<32>(src_points, dst_points, point_step),
                _ => src_points
                    .chunks_exact(old_step)
                    .zip(dst_points.chunks_exact_mut(point_step))
                    .for_each(|(src, dst)| dst[..old_step].copy_from_slice(src)),
            }
            for (values, (_, offset)) in values.iter().zip(&self.added) {
                let row_values = &values[row * width..(row + 1) * width];
                for (value, dst) in row_values.iter().zip(dst_points.chunks_exact_mut(point_step)) {
                    let bytes = if msg.is_bigendian { value.to_be_bytes() } else { value.to_le_bytes() };
                    dst[*offset..offset + 4].copy_from_slice(&bytes);
                }
            }
        }
        Ok(())
    }
}

/// Copies each `STEP`-byte point of `src` to the start of its `step`-byte slot in `dst`.
fn copy_points<const STEP: usize>(src: &[u8], dst: &mut [u8], step: usize) {
    for (src, dst) in src.chunks_exact(STEP).zip(dst.chunks_exact_mut(step)) {
        let point: &[u8; STEP] = src.try_into().expect("chunks of STEP bytes");
        dst[..STEP].copy_from_slice(point);
    }
}

/// The fields and point step of `msg` with FLOAT32 fields `names` added, and where each of them goes in a point.
fn f32_field_layout(msg: &PointCloud2Layout, names: &[&str]) -> Result<(Vec<PointFieldLayout>, usize, Vec<usize>)> {
    let mut fields = msg.fields.clone();
    let mut point_step = msg.point_step as usize;
    let mut targets = Vec::with_capacity(names.len());
    for name in names {
        match fields.iter().find(|f| f.name == *name) {
            Some(f) if f.datatype == ScalarType::F32.datatype() && f.count == 1 => targets.push(f.offset as usize),
            Some(_) => {
                return Err(CloudError::BadField {
                    name: name.to_string(),
                    problem: "already present with another type or count".into(),
                });
            }
            None => {
                point_step = point_step.next_multiple_of(4);
                fields.push(PointFieldLayout {
                    name: name.to_string(),
                    offset: point_step as u32,
                    datatype: ScalarType::F32.datatype(),
                    count: 1,
                });
                targets.push(point_step);
                point_step += 4;
            }
        }
    }
    Ok((fields, point_step, targets))
}

/// The input message with extra FLOAT32 fields (see [`AddedF32Fields`]), one slice of values per field.
pub fn with_f32_fields(msg: &PointCloud2Layout, extra: &[(&str, &[f32])]) -> Result<PointCloud2Layout> {
    let names: Vec<&str> = extra.iter().map(|(name, _)| *name).collect();
    let values: Vec<&[f32]> = extra.iter().map(|(_, values)| *values).collect();
    let added = AddedF32Fields::plan(msg, &names)?;
    let mut data = Vec::with_capacity(added.head.row_step as usize * added.head.height as usize);
    added.write_data(msg, &values, &mut data)?;
    Ok(PointCloud2Layout { data, ..added.head })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn field(name: &str, offset: u32, datatype: u8, count: u32) -> PointFieldLayout {
        PointFieldLayout { name: name.into(), offset, datatype, count }
    }

    /// A 2×2 organised, big-endian cloud with padding inside points and after rows, FLOAT64 x/y/z, an INT16
    /// pair and a NaN hole: every unusual layout feature at once.
    fn awkward_message() -> PointCloud2Layout {
        let point_step = 32; // 3×8 xyz + 2×2 pair + 4 pad
        let row_step = 2 * point_step + 8; // row padding
        let mut data = vec![0xAAu8; row_step * 2];
        for i in 0..4usize {
            let at = (i / 2) * row_step + (i % 2) * point_step;
            let x = if i == 3 { f64::NAN } else { i as f64 + 0.5 };
            for (k, v) in [x, -(i as f64), 2.0 * i as f64].iter().enumerate() {
                data[at + 8 * k..at + 8 * k + 8].copy_from_slice(&v.to_be_bytes());
            }
            data[at + 24..at + 26].copy_from_slice(&(-(i as i16) - 300).to_be_bytes());
            data[at + 26..at + 28].copy_from_slice(&(i as i16 * 7).to_be_bytes());
        }
        PointCloud2Layout {
            height: 2,
            width: 2,
            fields: vec![field("x", 0, 8, 1), field("y", 8, 8, 1), field("z", 16, 8, 1), field("pair", 24, 3, 2)],
            is_bigendian: true,
            point_step: point_step as u32,
            row_step: row_step as u32,
            data,
            is_dense: false,
        }
    }

    #[test]
    fn decodes_big_endian_padded_organised_multi_count() {
        let cloud = decode(&awkward_message()).unwrap();
        assert_eq!((cloud.width, cloud.height), (2, 2));
        let xyz = cloud.positions().unwrap();
        assert_eq!(xyz[2], [2.5, -2.0, 4.0]);
        assert!(xyz[3][0].is_nan(), "the hole stays in its row and column");
        let pair = cloud.field("pair").unwrap();
        assert_eq!((pair.value(1, 0), pair.value(1, 1)), (-301.0, 7.0));
        assert!(!cloud.is_dense());
        let finite = cloud.finite_points().unwrap();
        assert_eq!(finite.source_index, vec![0, 1, 2]);
    }

    #[test]
    fn every_datatype_round_trips_through_encode() {
        let n = 3;
        let fields: Vec<Field> = ScalarType::ALL
            .iter()
            .enumerate()
            .map(|(k, &t)| {
                let data = (0..n * t.size()).map(|b| (b * 37 + k) as u8).collect();
                Field::from_le_bytes(format!("f{k}"), t, 1, data).unwrap()
            })
            .collect();
        let cloud = PointCloud::new(n, 1, fields).unwrap();
        assert_eq!(decode(&encode(&cloud)).unwrap(), cloud);
    }

    #[test]
    fn extra_field_keeps_layout_and_endianness() {
        let msg = awkward_message();
        let scores = [0.1f32, 0.2, 0.3, f32::NAN];
        let out = with_f32_fields(&msg, &[("anomaly_score", &scores)]).unwrap();
        assert_eq!(&out.fields[..4], &msg.fields[..]);
        assert_eq!(out.fields[4].offset, 32);
        assert!(out.is_bigendian && out.height == 2);
        // The row padding (8 bytes of 0xAA) is still there, after the wider points.
        assert_eq!(out.row_step, 2 * 36 + 8);
        assert!(out.data[72..80].iter().all(|&b| b == 0xAA) && out.data[152..160].iter().all(|&b| b == 0xAA));
        let cloud = decode(&out).unwrap();
        assert_eq!(cloud.positions().unwrap()[2], [2.5, -2.0, 4.0]);
        let s = cloud.field("anomaly_score").unwrap();
        assert_eq!(s.value(2, 0) as f32, 0.3);
        assert!(s.value(3, 0).is_nan());
        // Writing it again overwrites in place rather than adding a second field.
        let again = with_f32_fields(&out, &[("anomaly_score", &[1.0; 4])]).unwrap();
        assert_eq!(again.fields.len(), 5);
        assert_eq!(decode(&again).unwrap().field("anomaly_score").unwrap().value(0, 0), 1.0);
    }

    #[test]
    fn malformed_layouts_are_named_errors() {
        let good = awkward_message();
        let mut short = good.clone();
        short.data.truncate(10);
        assert!(matches!(decode(&short), Err(CloudError::DataTooShort { .. })));
        let mut long = good.clone();
        long.data.extend([0u8; 4]);
        assert!(matches!(decode(&long), Err(CloudError::DataTooLong { .. })));
        let mut bad_type = good.clone();
        bad_type.fields[1].datatype = 9;
        assert!(matches!(decode(&bad_type), Err(CloudError::UnknownDatatype { .. })));
        let mut past_end = good.clone();
        past_end.fields[3].offset = 30;
        assert!(decode(&past_end).unwrap_err().to_string().contains("runs past point_step"));
        let mut empty = good.clone();
        empty.width = 0;
        assert!(matches!(decode(&empty), Err(CloudError::Empty)));
        let mut no_z = good.clone();
        no_z.fields.retain(|f| f.name != "z");
        assert!(matches!(decode(&no_z).unwrap().positions(), Err(CloudError::MissingCoordinate("z"))));
        let mut small_row = good;
        small_row.row_step = 10;
        assert!(matches!(decode(&small_row), Err(CloudError::BadLayout(_))));
    }

    #[test]
    fn all_nan_cloud_is_an_error() {
        let cloud = PointCloud::from_xyz(&[[f32::NAN, 0.0, 0.0], [1.0, f32::INFINITY, 0.0]]);
        assert!(matches!(cloud.finite_points(), Err(CloudError::NoFinitePoints(2))));
    }

    proptest! {
        /// Arbitrary layouts and bytes: decoding returns a cloud or an error, never panics, and whatever decodes
        /// re-encodes to the same values.
        #[test]
        fn decoder_never_panics(
            width in 0u32..6, height in 0u32..4, point_step in 0u32..40, row_pad in 0u32..9,
            fields in proptest::collection::vec((0u32..44, 0u8..11, 0u32..4), 0..5),
            is_bigendian in any::<bool>(), data in proptest::collection::vec(any::<u8>(), 0..800),
        ) {
            let names = ["x", "y", "z", "i", "x"];
            let msg = PointCloud2Layout {
                height, width, is_bigendian, point_step, data, is_dense: false,
                row_step: width * point_step + row_pad,
                fields: fields.iter().enumerate().map(|(k, &(offset, datatype, count))| field(names[k], offset, datatype, count)).collect(),
            };
            if let Ok(cloud) = decode(&msg) {
                prop_assert_eq!(cloud.len(), (width * height) as usize);
                let again = decode(&encode(&cloud)).unwrap();
                for (a, b) in again.fields().iter().zip(cloud.fields()) {
                    prop_assert_eq!(a.bytes(), b.bytes());
                }
                let _ = cloud.finite_points();
            }
        }
    }
}
