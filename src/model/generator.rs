//! Method step 4 (training only): the anomalous feature generator. Selective: each token is corrupted with
//! probability p by γ·ε, ε ~ N(0, σ²I), γ a learnable positive scalar (softplus of a raw parameter, starting at
//! 1); the mask is the label. SimpleNet: every token is corrupted, and the clean copy supplies the negatives.

use tch::{Kind, Tensor, nn};

use super::config::{GeneratorConfig, GeneratorKind};

pub struct Generator {
    raw_scale: Tensor,
    cfg: GeneratorConfig,
}

/// softplus⁻¹(1): the raw value that makes γ start at 1.
const RAW_SCALE_FOR_ONE: f64 = 0.541_324_854_612_918_1;

impl Generator {
    pub fn new(path: &nn::Path, cfg: &GeneratorConfig) -> Self {
        let raw_scale = path.var("raw_scale", &[1], nn::Init::Const(RAW_SCALE_FOR_ONE));
        Self { raw_scale, cfg: cfg.clone() }
    }

    /// γ, kept positive.
    pub fn scale(&self) -> Tensor {
        self.raw_scale.softplus()
    }

    /// From clean tokens (B, n, C) to (tokens, labels): labels are (B', n) with 1 for corrupted tokens.
    /// SimpleNet doubles the batch (clean copies first), so centres must be repeated by [`Self::batch_factor`].
    pub fn corrupt(&self, q: &Tensor) -> (Tensor, Tensor) {
        let noise = q.randn_like() * self.cfg.sigma * self.scale();
        let size = q.size();
        match self.cfg.kind {
            // The geometric kinds use the selective noise as their feature-space source (geometric+selective).
            GeneratorKind::Selective | GeneratorKind::Geometric | GeneratorKind::GeometricSelective => {
                let mask = Tensor::full(&size[..2], self.cfg.probability, (Kind::Float, q.device())).bernoulli();
                (q + noise * mask.unsqueeze(-1), mask)
            }
            GeneratorKind::SimpleNet => {
                let labels = Tensor::cat(
                    &[
                        Tensor::zeros(&size[..2], (Kind::Float, q.device())),
                        Tensor::ones(&size[..2], (Kind::Float, q.device())),
                    ],
                    0,
                );
                (Tensor::cat(&[q.shallow_clone(), q + noise], 0), labels)
            }
        }
    }

    pub fn batch_factor(&self) -> i64 {
        match self.cfg.kind {
            GeneratorKind::SimpleNet => 2,
            GeneratorKind::Selective | GeneratorKind::Geometric | GeneratorKind::GeometricSelective => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn selective_corrupts_only_labelled_tokens() {
        let vs = nn::VarStore::new(Device::Cpu);
        tch::manual_seed(4);
        let g = Generator::new(&vs.root(), &GeneratorConfig::default());
        assert!((g.scale().double_value(&[0]) - 1.0).abs() < 1e-6);
        let q = Tensor::zeros([4, 200, 8], (Kind::Float, Device::Cpu));
        let (noisy, labels) = g.corrupt(&q);
        let changed = noisy.abs().sum_dim_intlist(-1, false, Kind::Float).gt(0.0).to_kind(Kind::Float);
        assert!(changed.equal(&labels));
        let share = labels.mean(Kind::Float).double_value(&[]);
        assert!((share - 0.5).abs() < 0.05, "{share}");
    }

    #[test]
    fn simplenet_pairs_clean_and_noisy_copies() {
        let vs = nn::VarStore::new(Device::Cpu);
        let g = Generator::new(&vs.root(), &GeneratorConfig { kind: GeneratorKind::SimpleNet, ..Default::default() });
        let q = Tensor::ones([3, 5, 8], (Kind::Float, Device::Cpu));
        let (x, y) = g.corrupt(&q);
        assert_eq!((x.size(), y.size(), g.batch_factor()), (vec![6, 5, 8], vec![6, 5], 2));
        assert!(x.narrow(0, 0, 3).equal(&q));
        assert_eq!(y.sum(Kind::Float).double_value(&[]), 15.0);
    }
}
