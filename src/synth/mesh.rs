//! Triangle meshes from STL (binary and ascii), OBJ and PLY files: the real CAD parts scans are simulated from.

use std::path::Path;

use crate::cloud::{CloudError, Result, extension, io_error};
use crate::geometry::{Point, bounds, cross, dot, sub};

#[derive(Clone, Debug)]
pub struct Mesh {
    pub triangles: Vec<[Point; 3]>,
}

impl Mesh {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(io_error(path))?;
        let mesh = match extension(path).as_str() {
            "stl" => Self::from_stl(&bytes),
            "obj" => Self::from_obj(&bytes),
            "ply" => Self::from_ply(&bytes),
            other => Err(CloudError::Unsupported(format!("mesh extension '{other}' (stl, obj, ply)"))),
        }
        .map_err(|e| e.in_file(path))?;
        if mesh.triangles.is_empty() {
            return Err(CloudError::Empty.in_file(path));
        }
        Ok(mesh)
    }

    pub fn from_stl(bytes: &[u8]) -> Result<Self> {
        let bad = |problem: String| CloudError::BadData { format: "STL", problem };
        // A binary STL's size is fixed by its triangle count; ascii files start with "solid" (binary ones may too).
        if bytes.len() >= 84 {
            let count = u32::from_le_bytes([bytes[80], bytes[81], bytes[82], bytes[83]]) as usize;
            if count.checked_mul(50).and_then(|b| b.checked_add(84)) == Some(bytes.len()) {
                let triangles = bytes[84..]
                    .chunks_exact(50)
                    .map(|t| {
                        let f = |k: usize| f32::from_le_bytes([t[k], t[k + 1], t[k + 2], t[k + 3]]);
                        [0, 1, 2].map(|v| [f(12 + 12 * v), f(16 + 12 * v), f(20 + 12 * v)])
                    })
                    .collect();
                return Ok(Self { triangles });
            }
        }
        let text =
            std::str::from_utf8(bytes).map_err(|_| bad("neither a binary STL of consistent size nor text".into()))?;
        let mut vertices = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() == Some("vertex") {
                let v: Vec<f32> = words
                    .map(|w| w.parse().map_err(|_| bad(format!("bad vertex line '{line}'"))))
                    .collect::<Result<_>>()?;
                if v.len() != 3 {
                    return Err(bad(format!("bad vertex line '{line}'")));
                }
                vertices.push([v[0], v[1], v[2]]);
            }
        }
        if vertices.len() % 3 != 0 {
            return Err(bad(format!("{} vertices is not a whole number of triangles", vertices.len())));
        }
        Ok(Self { triangles: vertices.chunks_exact(3).map(|t| [t[0], t[1], t[2]]).collect() })
    }

    pub fn from_obj(bytes: &[u8]) -> Result<Self> {
        let bad = |problem: String| CloudError::BadData { format: "OBJ", problem };
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not text".into()))?;
        let (mut vertices, mut triangles) = (Vec::new(), Vec::new());
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("v") => {
                    let v: Vec<f32> = words
                        .take(3)
                        .map(|w| w.parse().map_err(|_| bad(format!("bad vertex '{line}'"))))
                        .collect::<Result<_>>()?;
                    if v.len() != 3 {
                        return Err(bad(format!("bad vertex '{line}'")));
                    }
                    vertices.push([v[0], v[1], v[2]]);
                }
                Some("f") => {
                    // "f 1 2 3", "f 1/1 2/2 3/3", negative = relative; polygons are fanned into triangles.
                    let idx: Vec<usize> = words
                        .map(|w| {
                            let i: i64 = w
                                .split('/')
                                .next()
                                .unwrap_or("")
                                .parse()
                                .map_err(|_| bad(format!("bad face '{line}'")))?;
                            let resolved = if i < 0 { vertices.len() as i64 + i } else { i - 1 };
                            usize::try_from(resolved)
                                .ok()
                                .filter(|&r| r < vertices.len())
                                .ok_or_else(|| bad(format!("face index {i} out of range")))
                        })
                        .collect::<Result<_>>()?;
                    for k in 1..idx.len().saturating_sub(1) {
                        triangles.push([vertices[idx[0]], vertices[idx[k]], vertices[idx[k + 1]]]);
                    }
                }
                _ => {}
            }
        }
        Ok(Self { triangles })
    }

    pub fn from_ply(bytes: &[u8]) -> Result<Self> {
        let (cloud, faces) = crate::cloud::ply::decode_mesh(bytes)?;
        let vertices = cloud.positions()?;
        let mut triangles = Vec::new();
        for face in faces {
            if let Some(&bad) = face.iter().find(|&&i| i as usize >= vertices.len()) {
                return Err(CloudError::BadData { format: "PLY", problem: format!("face index {bad} out of range") });
            }
            // Polygons are fanned into triangles.
            for k in 1..face.len().saturating_sub(1) {
                triangles.push([
                    vertices[face[0] as usize],
                    vertices[face[k] as usize],
                    vertices[face[k + 1] as usize],
                ]);
            }
        }
        Ok(Self { triangles })
    }

    pub fn area(t: &[Point; 3]) -> f32 {
        let c = cross(sub(t[1], t[0]), sub(t[2], t[0]));
        0.5 * dot(c, c).sqrt()
    }

    /// Unit normal by the right-hand rule (outward for a consistently wound closed mesh); zero if degenerate.
    pub fn normal(t: &[Point; 3]) -> Point {
        let c = cross(sub(t[1], t[0]), sub(t[2], t[0]));
        let n = dot(c, c).sqrt();
        if n > 0.0 { c.map(|v| v / n) } else { [0.0; 3] }
    }

    /// The mesh moved to its bounding-box centre and scaled so the box diagonal is `diagonal` (parts come in
    /// inches, metres and millimetres).
    pub fn normalised(&self, diagonal: f32) -> Self {
        let (lo, hi) = self.bounds();
        let centre = [0, 1, 2].map(|a| 0.5 * (lo[a] + hi[a]));
        let current = dot(sub(hi, lo), sub(hi, lo)).sqrt();
        let s = if current > 0.0 { diagonal / current } else { 1.0 };
        let triangles = self.triangles.iter().map(|t| t.map(|v| [0, 1, 2].map(|a| (v[a] - centre[a]) * s))).collect();
        Self { triangles }
    }

    /// Edges shared by two triangles whose normals differ by more than `min_angle_degrees` (the part's sharp
    /// edges, where burrs form).
    pub fn sharp_edges(&self, min_angle_degrees: f32) -> Vec<(Point, Point)> {
        use std::collections::HashMap;
        let key = |p: Point| p.map(|c| (c * 1e4).round() as i64);
        let mut first: HashMap<([i64; 3], [i64; 3]), usize> = HashMap::new();
        let cos_limit = min_angle_degrees.to_radians().cos();
        let mut edges = Vec::new();
        for (k, t) in self.triangles.iter().enumerate() {
            for e in 0..3 {
                let (a, b) = (t[e], t[(e + 1) % 3]);
                let (ka, kb) = (key(a), key(b));
                let id = if ka < kb { (ka, kb) } else { (kb, ka) };
                match first.get(&id) {
                    Some(&other) if dot(Self::normal(t), Self::normal(&self.triangles[other])) < cos_limit => {
                        edges.push((a, b))
                    }
                    Some(_) => {}
                    None => {
                        first.insert(id, k);
                    }
                }
            }
        }
        edges
    }

    pub fn bounds(&self) -> (Point, Point) {
        bounds(self.triangles.iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_stl_and_obj() {
        let stl = "solid t\nfacet normal 0 0 1\nouter loop\nvertex 0 0 0\nvertex 1 0 0\nvertex 0 1 0\nendloop\nendfacet\nendsolid t\n";
        let m = Mesh::from_stl(stl.as_bytes()).unwrap();
        assert_eq!(m.triangles.len(), 1);
        assert_eq!(Mesh::normal(&m.triangles[0]), [0.0, 0.0, 1.0]);
        assert_eq!(Mesh::area(&m.triangles[0]), 0.5);
        let obj = "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1/1 2/2 3/3 4/4\n";
        assert_eq!(Mesh::from_obj(obj.as_bytes()).unwrap().triangles.len(), 2);
        assert!(Mesh::from_obj(b"v 0 0 0\nf 1 2 3\n").is_err());
        assert!(Mesh::from_stl(b"solid x\nvertex 1 2\n").is_err());
        let ply = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n\
                   element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n";
        assert_eq!(Mesh::from_ply(ply.as_bytes()).unwrap().triangles, m.triangles);
        assert!(Mesh::from_ply(ply.replace("3 0 1 2", "3 0 1 7").as_bytes()).is_err());
    }
}
