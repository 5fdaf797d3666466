//! What the detector learns from its training clouds without gradients: the pose template scans are registered
//! to, per-dimension standardisation of the backbone tokens (so distances and noise mean the same in every
//! dimension), the memory banks of training features (a patch's, or a point's, distance to its nearest good
//! feature is a score of its own), and the references that put every score on one scale for fusion.
//! Stored in the model folder as `conditioning.safetensors`; a model without it is refused.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rand::Rng;
use tch::{Device, Kind, Tensor};

use super::bank::MemoryBank;
use super::config::PreprocessConfig;
use super::preprocess::PoseTemplate;
use super::{ModelError, Result, tensors_from_bytes};
use crate::geometry::{Point, UnitSphere};
use crate::transfers::Transfer;

/// Lower bound of a dimension's standard deviation: a constant dimension must not blow up to infinity.
const MIN_STD: f64 = 1e-4;

/// The median and a high quantile of a score over held-out good patches: `(s - low) / (high - low)` is 0 on a
/// typical good patch and 1 on the rare good patch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reference {
    pub low: f32,
    pub high: f32,
}

impl Reference {
    pub const IDENTITY: Self = Self { low: 0.0, high: 1.0 };

    pub fn from_scores(scores: &[f32]) -> Self {
        let low = super::scoring::quantile(scores, 0.5);
        let high = super::scoring::quantile(scores, 0.99);
        let spread = (high - low).max(1e-6);
        Self { low, high: low + spread }
    }

    pub fn normalise(&self, s: f32) -> f32 {
        (s - self.low) / (self.high - self.low)
    }
}

pub struct Conditioning {
    /// (C): the training tokens' mean and standard deviation.
    pub mean: Tensor,
    pub std: Tensor,
    /// (M, C): training patch features after SCA (the discriminator's input, before the adaptor). May be empty.
    pub bank: MemoryBank,
    /// (M, C): a coreset of training voxel points' conditioned features. May be empty.
    pub point_bank: MemoryBank,
    pub discriminator_reference: Reference,
    pub bank_reference: Reference,
    /// The point head's logits.
    pub point_reference: Reference,
    pub point_bank_reference: Reference,
    /// Where the heads see the capture and calibration had both kinds: the four references of the partial views
    /// (discriminator, bank, point head, point bank); the fields above are then the all-round scans'.
    pub partial_view_references: Option<[Reference; 4]>,
    /// The part as first trained on, when scans are registered (`preprocess.align`). Shared with the
    /// detector's [`GeometryPart`](super::batch::GeometryPart)s, which other threads hold.
    pub template: Option<Arc<PoseTemplate>>,
}

impl Conditioning {
    /// No standardisation, no bank: what an untrained detector has.
    pub fn identity(width: usize, device: Device) -> Self {
        Self {
            mean: Tensor::zeros([width as i64], (Kind::Float, device)),
            std: Tensor::ones([width as i64], (Kind::Float, device)),
            bank: MemoryBank::empty(width, device),
            point_bank: MemoryBank::empty(width, device),
            discriminator_reference: Reference::IDENTITY,
            bank_reference: Reference::IDENTITY,
            point_reference: Reference::IDENTITY,
            point_bank_reference: Reference::IDENTITY,
            partial_view_references: None,
            template: None,
        }
    }

    /// Mean and standard deviation of the rows of `tokens` (each (n, C)).
    pub fn fit_standardisation(&mut self, tokens: &[Tensor]) {
        let all = Tensor::cat(tokens, 0);
        self.mean = all.mean_dim(0, false, Kind::Float);
        self.std = all.std_dim(0, false, false).clamp_min(MIN_STD);
    }

    pub fn standardise(&self, tokens: &Tensor) -> Tensor {
        (tokens - &self.mean) / &self.std
    }

    /// Keeps at most `size` rows of the features (each (n, C)), drawn without replacement.
    pub fn fit_bank(&mut self, features: &[Tensor], size: usize, rng: &mut impl Rng) {
        let all = Tensor::cat(features, 0);
        let rows = all.size()[0] as usize;
        if rows <= size {
            self.bank = MemoryBank::new(all);
            return;
        }
        let picked = rand::seq::index::sample(rng, rows, size).into_iter().map(|i| i as i64).collect::<Vec<_>>();
        self.bank = MemoryBank::new(all.index_select(0, &Tensor::from_slice(&picked).upload(all.device())));
    }

    /// Keeps a greedy k-center coreset of at most `size` rows of the point features (each (n, C)): unlike a
    /// random draw it keeps the rare surfaces (edges, small features) that a part has few points of.
    pub fn fit_point_bank(&mut self, features: &[Tensor], size: usize) {
        self.point_bank = MemoryBank::new(greedy_coreset(&Tensor::cat(features, 0), size));
    }

    /// The references (discriminator, bank, point head, point bank) for a cloud of this capture.
    pub fn references(&self, all_round: bool) -> [Reference; 4] {
        match self.partial_view_references {
            Some(partial) if !all_round => partial,
            _ => [self.discriminator_reference, self.bank_reference, self.point_reference, self.point_bank_reference],
        }
    }

    pub fn has_bank(&self) -> bool {
        !self.bank.is_empty()
    }

    pub fn has_point_bank(&self) -> bool {
        !self.point_bank.is_empty()
    }

    /// Euclidean distance of each row of `features` (n, C) to its nearest patch-bank row: (n).
    pub fn bank_distances(&self, features: &Tensor) -> Tensor {
        self.bank.nearest_distances(features)
    }

    /// Euclidean distance of each row of `features` (N, C) to its nearest point-bank row: (N).
    pub fn point_bank_distances(&self, features: &Tensor) -> Tensor {
        self.point_bank.nearest_distances(features)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        // The all-round (or only) references, then the partial views' where kept apart.
        let references: Vec<f32> = std::iter::once(self.references(true))
            .chain(self.partial_view_references)
            .flatten()
            .flat_map(|r| [r.low, r.high])
            .collect();
        let references = Tensor::from_slice(&references);
        let cpu = |t: &Tensor| t.download().contiguous();
        let mut named = vec![
            ("mean", cpu(&self.mean)),
            ("std", cpu(&self.std)),
            ("bank", cpu(self.bank.rows())),
            ("point_bank", cpu(self.point_bank.rows())),
            ("references", references),
        ];
        if let Some(t) = &self.template {
            let flat: Vec<f32> = t.points.iter().flatten().copied().collect();
            named.push(("template_points", Tensor::from_slice(&flat).reshape([-1, 3])));
            let f = t.frame;
            named.push(("template_frame", Tensor::from_slice(&[f.centre[0], f.centre[1], f.centre[2], f.scale])));
        }
        Tensor::write_safetensors(&named, path)
            .map_err(|e| ModelError::Model { path: path.display().to_string(), problem: e.to_string() })
    }

    /// Reads the file's bytes; `width` is the token width the model was made with, `preprocess` its
    /// pre-processing (for the template's normals).
    pub fn from_bytes(
        bytes: &[u8],
        width: usize,
        preprocess: &PreprocessConfig,
        device: Device,
    ) -> std::result::Result<Self, String> {
        let tensors: HashMap<String, Tensor> = tensors_from_bytes(bytes)?;
        let get = |name: &str, shape: &dyn Fn(&[i64]) -> bool| -> std::result::Result<Tensor, String> {
            let t = tensors.get(name).ok_or_else(|| format!("no '{name}' tensor"))?;
            if !shape(&t.size()) {
                return Err(format!("'{name}' has shape {:?} (token width {width})", t.size()));
            }
            Ok(t.to_kind(Kind::Float).upload(device))
        };
        let w = width as i64;
        let mean = get("mean", &|s| s == [w])?;
        let std = get("std", &|s| s == [w])?;
        let bank = get("bank", &|s| s.len() == 2 && s[1] == w)?;
        // Models made before the point bank have 6 references and no point bank; 16 are two kinds' 8.
        let mut references: Vec<f32> =
            get("references", &|s| s == [6] || s == [8] || s == [16])?.try_into().map_err(|e| format!("{e}"))?;
        if references.len() == 6 {
            references.extend([Reference::IDENTITY.low, Reference::IDENTITY.high]);
        }
        let reference = |k: usize| Reference { low: references[2 * k], high: references[2 * k + 1] };
        let partial_view_references = (references.len() == 16).then(|| [4, 5, 6, 7].map(reference));
        let point_bank = if tensors.contains_key("point_bank") {
            get("point_bank", &|s| s.len() == 2 && s[1] == w)?
        } else {
            Tensor::zeros([0, w], (Kind::Float, device))
        };
        let template = if tensors.contains_key("template_points") {
            let flat: Vec<f32> = get("template_points", &|s| s.len() == 2 && s[1] == 3 && s[0] > 0)?
                .download()
                .reshape([-1])
                .try_into()
                .map_err(|e| format!("{e}"))?;
            let f: Vec<f32> =
                get("template_frame", &|s| s == [4])?.download().try_into().map_err(|e| format!("{e}"))?;
            let points: Vec<Point> = flat.chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
            let frame = UnitSphere { centre: [f[0], f[1], f[2]], scale: f[3] };
            Some(Arc::new(PoseTemplate::new(points, frame, preprocess).map_err(|e| format!("template: {e}"))?))
        } else if preprocess.align {
            return Err("no 'template_points' tensor, but the model registers scans (preprocess.align)".into());
        } else {
            None
        };
        Ok(Self {
            mean,
            std,
            bank: MemoryBank::new(bank),
            point_bank: MemoryBank::new(point_bank),
            discriminator_reference: reference(0),
            bank_reference: reference(1),
            point_reference: reference(2),
            point_bank_reference: reference(3),
            partial_view_references,
            template,
        })
    }
}

/// Greedy k-center coreset (PatchCore): repeatedly keep the row farthest from those kept, starting from row 0;
/// every row then lies within the coreset's covering radius of a kept one.
pub fn greedy_coreset(rows: &Tensor, size: usize) -> Tensor {
    let _guard = tch::no_grad_guard();
    let n = rows.size()[0];
    if n as usize <= size {
        return rows.shallow_clone();
    }
    // |x − c|² = |x|² + |c|² − 2 x·c: one matrix-vector product per kept row instead of an (n, C) difference.
    let norms = rows.square().sum_dim_intlist(1, false, Kind::Float);
    let squared_distance_to = |k: i64| &norms + norms.get(k) - rows.mv(&rows.get(k)) * 2.0;
    let mut chosen = vec![0i64];
    let mut nearest = squared_distance_to(0);
    for _ in 1..size {
        let next = nearest.argmax(0, false).download().int64_value(&[]);
        chosen.push(next);
        nearest = nearest.minimum(&squared_distance_to(next));
    }
    rows.index_select(0, &Tensor::from_slice(&chosen).upload(rows.device()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bank::brute_force_distances;
    use rand::SeedableRng;

    #[test]
    fn standardised_training_tokens_have_zero_mean_unit_std_and_the_bank_finds_neighbours() {
        let tokens = Tensor::randn([200, 6], (Kind::Float, Device::Cpu)) * 3.0 + 5.0;
        let mut c = Conditioning::identity(6, Device::Cpu);
        c.fit_standardisation(&[tokens.shallow_clone()]);
        let z = c.standardise(&tokens);
        assert!(z.mean_dim(0, false, Kind::Float).abs().max().double_value(&[]) < 1e-4);
        assert!((z.std_dim(0, false, false) - 1.0).abs().max().double_value(&[]) < 1e-3);
        c.fit_bank(&[z.shallow_clone()], 50, &mut rand::rngs::StdRng::seed_from_u64(1));
        assert_eq!(c.bank.rows().size(), [50, 6]);
        let d: Vec<f32> = c.bank_distances(c.bank.rows()).try_into().unwrap();
        assert!(d.iter().all(|x| *x < 1e-2), "bank rows are their own nearest neighbours: {d:?}");
        let far = Tensor::full([1, 6], 100.0, (Kind::Float, Device::Cpu));
        assert!(c.bank_distances(&far).double_value(&[0]) > 100.0);
    }

    #[test]
    fn the_coreset_covers_every_row_better_than_a_random_draw_of_its_size() {
        // Two dense clusters and a few rare rows far away: a random draw of 20 misses the rare ones.
        let dense = Tensor::randn([2000, 3], (Kind::Float, Device::Cpu)) * 0.1;
        let rare = Tensor::randn([5, 3], (Kind::Float, Device::Cpu)) * 0.1 + 10.0;
        let rows = Tensor::cat(&[dense, rare], 0);
        let kept = greedy_coreset(&rows, 20);
        assert_eq!(kept.size(), [20, 3]);
        let covering = |bank: &Tensor| brute_force_distances(bank, &rows).max().double_value(&[]);
        let random = rows.narrow(0, 0, 20);
        assert!(covering(&kept) < 0.5, "coreset covering radius {}", covering(&kept));
        assert!(covering(&random) > 5.0, "the first 20 rows miss the rare cluster");
        assert_eq!(greedy_coreset(&rows, 5000).size(), [2005, 3], "small sets are kept whole");
    }

    #[test]
    fn save_and_load_round_trip_and_a_wrong_width_is_named() {
        let dir = std::env::temp_dir().join(format!("inspect3d-cond-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.safetensors");
        let mut c = Conditioning::identity(4, Device::Cpu);
        c.bank = MemoryBank::new(Tensor::randn([7, 4], (Kind::Float, Device::Cpu)));
        c.point_bank = MemoryBank::new(Tensor::randn([5, 4], (Kind::Float, Device::Cpu)));
        c.bank_reference = Reference { low: 0.5, high: 2.0 };
        c.point_bank_reference = Reference { low: 1.5, high: 3.0 };
        c.partial_view_references = Some([0.1, 0.2, 0.3, 0.4].map(|low| Reference { low, high: 1.0 + low }));
        c.save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let cfg = PreprocessConfig { align: false, ..Default::default() };
        let back = Conditioning::from_bytes(&bytes, 4, &cfg, Device::Cpu).unwrap();
        assert_eq!(back.bank.rows().size(), [7, 4]);
        assert_eq!(back.point_bank.rows().size(), [5, 4]);
        assert_eq!(back.bank_reference, c.bank_reference);
        assert_eq!(back.point_bank_reference, c.point_bank_reference);
        assert_eq!(back.partial_view_references, c.partial_view_references);
        assert_eq!(back.references(false)[2], Reference { low: 0.3, high: 1.3 }, "a partial view's point head");
        let err = Conditioning::from_bytes(&bytes, 5, &cfg, Device::Cpu).err().unwrap();
        assert!(err.contains("'mean' has shape"), "{err}");
        let aligned = PreprocessConfig { align: true, ..Default::default() };
        let err = Conditioning::from_bytes(&bytes, 4, &aligned, Device::Cpu).err().unwrap();
        assert!(err.contains("template_points"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
