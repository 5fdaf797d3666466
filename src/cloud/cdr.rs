//! `sensor_msgs/PointCloud2` as CDR (XCDR1), the bytes ROS 2 sends and rosbag2 stores, both ways and without ROS:
//! a bag can be read where no ROS is installed (`inspect3d train --bag`), and the node writes its anomaly clouds
//! straight into the bytes it publishes (one pass over the points, into a buffer kept from scan to scan, instead of
//! a message built, copied into rcl's and serialized again). Alignment is relative to the body, after the 4-byte
//! encapsulation header that says the byte order.

use super::pointcloud2::{PointCloud2Layout, PointFieldLayout};

/// The ROS 2 type name of the messages this module reads and writes.
pub const POINT_CLOUD2: &str = "sensor_msgs/msg/PointCloud2";

/// The encapsulation header's length.
const HEADER_LEN: usize = 4;

/// A PointCloud2 message's header and body.
#[derive(Clone, Debug, PartialEq)]
pub struct StampedCloud {
    pub stamp_sec: i32,
    pub stamp_nanosec: u32,
    pub frame_id: String,
    pub layout: PointCloud2Layout,
}

struct Reader<'a> {
    body: &'a [u8],
    at: usize,
    little: bool,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.body.len()).ok_or_else(|| {
            format!("truncated: {what} needs {n} bytes at offset {}, the message has {}", self.at, self.body.len())
        })?;
        let bytes = &self.body[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn align(&mut self, n: usize) {
        self.at = self.at.next_multiple_of(n);
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.align(4);
        let b: [u8; 4] = self.take(4, what)?.try_into().map_err(|_| what.to_string())?;
        Ok(if self.little { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.u32(what)? as usize;
        let bytes = self.take(len, what)?;
        // The length counts a terminating NUL.
        let text = bytes.strip_suffix(&[0]).unwrap_or(bytes);
        String::from_utf8(text.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
}

/// Decodes one serialized PointCloud2 (encapsulation header included).
pub fn decode_point_cloud(bytes: &[u8]) -> Result<StampedCloud, String> {
    let (mut cloud, data) = decode_without_data(bytes)?;
    cloud.layout.data = bytes[data].to_vec();
    Ok(cloud)
}

/// [`decode_point_cloud`] of a message the caller owns: its point data stays where it is, the bytes before and
/// after it cut away (no second buffer as large as the message).
pub fn decode_point_cloud_owned(mut bytes: Vec<u8>) -> Result<StampedCloud, String> {
    let (mut cloud, data) = decode_without_data(&bytes)?;
    bytes.truncate(data.end);
    bytes.drain(..data.start);
    cloud.layout.data = bytes;
    Ok(cloud)
}

/// A message's header and layout, its data left empty, and where the data lies in `bytes`.
fn decode_without_data(bytes: &[u8]) -> Result<(StampedCloud, std::ops::Range<usize>), String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!("{} bytes: too short for a CDR message", bytes.len()));
    }
    let little = match bytes[1] {
        0 => false,
        1 => true,
        other => return Err(format!("unknown CDR encapsulation {:#04x}{other:02x}", bytes[0])),
    };
    let mut r = Reader { body: &bytes[HEADER_LEN..], at: 0, little };
    let stamp_sec = r.u32("header.stamp.sec")? as i32;
    let stamp_nanosec = r.u32("header.stamp.nanosec")?;
    let frame_id = r.string("header.frame_id")?;
    let height = r.u32("height")?;
    let width = r.u32("width")?;
    let field_count = r.u32("fields")? as usize;
    if field_count > 1024 {
        return Err(format!("{field_count} fields: not a PointCloud2"));
    }
    let mut fields = Vec::with_capacity(field_count);
    for _ in 0..field_count {
        let name = r.string("fields[].name")?;
        let offset = r.u32("fields[].offset")?;
        let datatype = r.u8("fields[].datatype")?;
        let count = r.u32("fields[].count")?;
        fields.push(PointFieldLayout { name, offset, datatype, count });
    }
    let is_bigendian = r.u8("is_bigendian")? != 0;
    let point_step = r.u32("point_step")?;
    let row_step = r.u32("row_step")?;
    let data_len = r.u32("data")? as usize;
    let data_start = HEADER_LEN + r.at;
    r.take(data_len, "data")?;
    let is_dense = r.u8("is_dense")? != 0;
    let layout =
        PointCloud2Layout { height, width, fields, is_bigendian, point_step, row_step, data: Vec::new(), is_dense };
    Ok((StampedCloud { stamp_sec, stamp_nanosec, frame_id, layout }, data_start..data_start + data_len))
}

/// The little-endian encapsulation header (CDR_LE, no options): what ROS 2 publishes on x86 and ARM.
const LITTLE_ENDIAN_CDR: [u8; 4] = [0, 1, 0, 0];

/// Appends CDR values to a message body (little-endian), aligned relative to the body.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    /// Where the body starts in `out`.
    body: usize,
}

impl Writer<'_> {
    fn align(&mut self, n: usize) {
        let at = (self.out.len() - self.body).next_multiple_of(n) + self.body;
        self.out.resize(at, 0);
    }

    fn u32(&mut self, v: u32) {
        self.align(4);
        self.out.extend(v.to_le_bytes());
    }

    fn string(&mut self, s: &str) {
        // The length counts a terminating NUL.
        self.u32(s.len() as u32 + 1);
        self.out.extend(s.as_bytes());
        self.out.push(0);
    }
}

/// Serializes a PointCloud2 into `out` (cleared first; its capacity is kept, so a buffer reused from message to
/// message costs no fresh pages): the header, `head`'s fields, flags and steps, then the point data that
/// `write_data` appends (`head.data` is not used). `write_data`'s error, if any, is returned and `out` is left
/// incomplete.
pub fn encode_point_cloud_into<E>(
    out: &mut Vec<u8>,
    stamp: (i32, u32),
    frame_id: &str,
    head: &PointCloud2Layout,
    write_data: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    out.clear();
    out.extend(LITTLE_ENDIAN_CDR);
    let mut w = Writer { out, body: HEADER_LEN };
    w.u32(stamp.0 as u32);
    w.u32(stamp.1);
    w.string(frame_id);
    w.u32(head.height);
    w.u32(head.width);
    w.u32(head.fields.len() as u32);
    for f in &head.fields {
        w.string(&f.name);
        w.u32(f.offset);
        w.out.push(f.datatype);
        w.u32(f.count);
    }
    w.out.push(u8::from(head.is_bigendian));
    w.u32(head.point_step);
    w.u32(head.row_step);
    // The data's length is known once it is written.
    w.u32(0);
    let (length_at, start) = (w.out.len() - 4, w.out.len());
    write_data(w.out)?;
    let length = (w.out.len() - start) as u32;
    w.out[length_at..start].copy_from_slice(&length.to_le_bytes());
    w.out.push(u8::from(head.is_dense));
    Ok(())
}

/// [`encode_point_cloud_into`] of a whole message body, its data as it is.
pub fn encode_layout_into(out: &mut Vec<u8>, stamp: (i32, u32), frame_id: &str, layout: &PointCloud2Layout) {
    let copied: Result<(), std::convert::Infallible> = encode_point_cloud_into(out, stamp, frame_id, layout, |out| {
        out.extend_from_slice(&layout.data);
        Ok(())
    });
    let Ok(()) = copied;
}

/// The CDR bytes of a whole message.
pub fn encode_point_cloud(cloud: &StampedCloud) -> Vec<u8> {
    let mut out = Vec::with_capacity(cloud.layout.data.len() + 256);
    encode_layout_into(&mut out, (cloud.stamp_sec, cloud.stamp_nanosec), &cloud.frame_id, &cloud.layout);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{PointCloud, pointcloud2};

    /// A CDR encoder written from the specification, in either byte order (the integration tests also read bags
    /// written by the independent `rosbags` package, and the node's test reads what it publishes).
    fn encode(cloud: &StampedCloud, little: bool) -> Vec<u8> {
        let mut body = Vec::new();
        let u32 = |body: &mut Vec<u8>, v: u32| {
            body.resize(body.len().next_multiple_of(4), 0);
            body.extend(if little { v.to_le_bytes() } else { v.to_be_bytes() });
        };
        let string = |body: &mut Vec<u8>, s: &str| {
            u32(body, s.len() as u32 + 1);
            body.extend(s.as_bytes());
            body.push(0);
        };
        u32(&mut body, cloud.stamp_sec as u32);
        u32(&mut body, cloud.stamp_nanosec);
        string(&mut body, &cloud.frame_id);
        let l = &cloud.layout;
        u32(&mut body, l.height);
        u32(&mut body, l.width);
        u32(&mut body, l.fields.len() as u32);
        for f in &l.fields {
            string(&mut body, &f.name);
            u32(&mut body, f.offset);
            body.push(f.datatype);
            u32(&mut body, f.count);
        }
        body.push(l.is_bigendian as u8);
        u32(&mut body, l.point_step);
        u32(&mut body, l.row_step);
        u32(&mut body, l.data.len() as u32);
        body.extend(&l.data);
        body.push(l.is_dense as u8);
        let mut out = vec![0, little as u8, 0, 0];
        out.extend(body);
        out
    }

    fn sample() -> StampedCloud {
        let layout = pointcloud2::encode(&PointCloud::from_xyz(&[[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]]));
        StampedCloud { stamp_sec: 17, stamp_nanosec: 5, frame_id: "cam".into(), layout }
    }

    #[test]
    fn round_trips_in_both_byte_orders() {
        for little in [true, false] {
            assert_eq!(decode_point_cloud(&encode(&sample(), little)).unwrap(), sample());
        }
    }

    #[test]
    fn the_encoder_writes_what_the_specification_says() {
        let mut odd = sample();
        // Lengths that leave every alignment case: a 1-byte frame id, a 5-byte field name, 7 bytes of data.
        odd.frame_id = "c".into();
        odd.layout.fields[0].name = "xyzab".into();
        odd.layout.data.truncate(7);
        for cloud in [sample(), odd] {
            assert_eq!(encode_point_cloud(&cloud), encode(&cloud, true));
        }
        // A reused buffer holds only the last message.
        let mut out = encode_point_cloud(&sample());
        let stamp = (1, 2);
        let written: Result<(), ()> = encode_point_cloud_into(&mut out, stamp, "cam", &sample().layout, |_| Ok(()));
        assert!(written.is_ok());
        let empty = decode_point_cloud(&out).unwrap();
        assert_eq!((empty.stamp_sec, empty.layout.data.len(), empty.layout.width), (1, 0, 2));
        let failed = encode_point_cloud_into(&mut out, stamp, "cam", &sample().layout, |_| Err("no data"));
        assert_eq!(failed, Err("no data"));
    }

    #[test]
    fn an_owned_message_decodes_in_place() {
        for little in [true, false] {
            let bytes = encode(&sample(), little);
            assert_eq!(decode_point_cloud_owned(bytes.clone()), decode_point_cloud(&bytes));
        }
        assert!(decode_point_cloud_owned(vec![0, 1]).is_err());
    }

    #[test]
    fn truncation_and_garbage_are_errors_not_panics() {
        let bytes = encode(&sample(), true);
        for cut in 0..bytes.len() - 1 {
            let _ = decode_point_cloud(&bytes[..cut]);
        }
        let err = decode_point_cloud(&bytes[..bytes.len() - 10]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        assert!(decode_point_cloud(&[0, 7, 0, 0, 1, 2]).unwrap_err().contains("encapsulation"));
    }

    #[cfg(feature = "ros")]
    #[test]
    fn equals_what_rmw_serializes() {
        use r2r::WrappedTypesupport;
        let header = r2r::std_msgs::msg::Header {
            stamp: r2r::builtin_interfaces::msg::Time { sec: 17, nanosec: 5 },
            frame_id: "cam".into(),
        };
        let msg = crate::ros::msg_from_layout(header, sample().layout);
        let bytes = msg.to_serialized_bytes().unwrap();
        assert_eq!(decode_point_cloud(&bytes).unwrap(), sample());
        assert_eq!(encode_point_cloud(&sample()), bytes, "byte for byte what Fast DDS serializes");
    }
}
