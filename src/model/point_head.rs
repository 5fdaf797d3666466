//! The point head: every voxel point's conditioned multi-scale features → LeakyReLU MLP → one logit. Trained
//! with the discriminator on the pseudo-defects' per-point labels (configuration `point_head`); its normalised
//! score is averaged with the projected patch score, which sharpens where a defect ends.

use tch::{Tensor, nn, nn::Module};

use super::LayerInit;
use super::adaptor::leaky_relu;
use super::config::PointHeadConfig;

pub struct PointHead {
    layers: [nn::Linear; 3],
}

impl PointHead {
    pub fn new(path: &nn::Path, width: usize, cfg: &PointHeadConfig, init: LayerInit) -> Self {
        let [h1, h2] = cfg.hidden.map(|h| h.max(1) as i64);
        let linear = init.linear(Default::default());
        let layers = [
            nn::linear(path / "0", width as i64, h1, linear),
            nn::linear(path / "1", h1, h2, linear),
            nn::linear(path / "2", h2, 1, linear),
        ];
        Self { layers }
    }

    /// Features (…, C) → logits (…).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = leaky_relu(&self.layers[0].forward(x), 0.1);
        let h = leaky_relu(&self.layers[1].forward(&h), 0.1);
        self.layers[2].forward(&h).squeeze_dim(-1)
    }
}
