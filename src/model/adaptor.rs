//! Method step 3: the Feature Adaptor, q = α·z + (1 − α)·LN₂(W₂·LeakyReLU₀.₁(LN₁(W₁·z))), W₁: C → C/2,
//! W₂: C/2 → C. Trained; bypassed when disabled (ablation "−FA").

use tch::{Tensor, nn, nn::Module};

use super::LayerInit;
use super::config::AdaptorConfig;

pub struct Adaptor {
    layers: Option<(nn::Linear, nn::LayerNorm, nn::Linear, nn::LayerNorm)>,
    alpha: f64,
}

pub fn leaky_relu(x: &Tensor, slope: f64) -> Tensor {
    x.clamp_min(0.0) + x.clamp_max(0.0) * slope
}

impl Adaptor {
    pub fn new(path: &nn::Path, width: usize, cfg: &AdaptorConfig, init: LayerInit) -> Self {
        let c = width as i64;
        let h = (c / 2).max(1);
        let layers = cfg.enabled.then(|| {
            (
                nn::linear(path / "fc1", c, h, init.linear(Default::default())),
                nn::layer_norm(path / "norm1", vec![h], Default::default()),
                nn::linear(path / "fc2", h, c, init.linear(Default::default())),
                nn::layer_norm(path / "norm2", vec![c], Default::default()),
            )
        });
        Self { layers, alpha: cfg.alpha }
    }

    pub fn forward(&self, z: &Tensor) -> Tensor {
        match &self.layers {
            None => z.shallow_clone(),
            Some((fc1, norm1, fc2, norm2)) => {
                let h = leaky_relu(&norm1.forward(&fc1.forward(z)), 0.1);
                z * self.alpha + norm2.forward(&fc2.forward(&h)) * (1.0 - self.alpha)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn shapes_residual_and_bypass() {
        let vs = nn::VarStore::new(Device::Cpu);
        let z = Tensor::randn([2, 10, 16], (Kind::Float, Device::Cpu));
        let on = Adaptor::new(&(vs.root() / "a"), 16, &AdaptorConfig::default(), LayerInit::Random);
        assert_eq!(on.forward(&z).size(), vec![2, 10, 16]);
        let pure_residual =
            Adaptor::new(&(vs.root() / "b"), 16, &AdaptorConfig { enabled: true, alpha: 1.0 }, LayerInit::Random);
        assert!(pure_residual.forward(&z).allclose(&z, 1e-6, 1e-6, false));
        let off =
            Adaptor::new(&(vs.root() / "c"), 16, &AdaptorConfig { enabled: false, alpha: 0.5 }, LayerInit::Random);
        assert!(off.forward(&z).equal(&z));
        assert_eq!(leaky_relu(&Tensor::from_slice(&[-1.0f32, 2.0]), 0.1), Tensor::from_slice(&[-0.1f32, 2.0]));
    }
}
