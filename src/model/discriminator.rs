//! Method step 5: the discriminator, one logit per patch. Tokens get a learnable positional embedding MLP(c_i)
//! of their centre (the token set varies in size, so no fixed table), then — in the paper's variant —
//! h = LN(q̂ + Dropout(MHA(q̂))) lets each patch see all others; an MLP head (hidden 4C, dropout) scores each
//! token. The SimpleNet variant applies the head to q̂ alone.

use tch::{Kind, Tensor, nn, nn::Module};

use super::LayerInit;
use super::config::{DiscriminatorConfig, DiscriminatorKind};

struct Attention {
    in_proj: nn::Linear,
    out_proj: nn::Linear,
    norm: nn::LayerNorm,
    heads: i64,
}

pub struct Discriminator {
    pos1: nn::Linear,
    pos2: nn::Linear,
    attention: Option<Attention>,
    head1: nn::Linear,
    head2: nn::Linear,
    dropout: f64,
    positional: bool,
}

impl Discriminator {
    /// `position_inputs`: the numbers per patch that the positional MLP sees (its centre, and the capture input
    /// where the heads get it).
    pub fn new(
        path: &nn::Path,
        width: usize,
        position_inputs: usize,
        cfg: &DiscriminatorConfig,
        init: LayerInit,
    ) -> Result<Self, String> {
        let c = width as i64;
        if cfg.kind == DiscriminatorKind::Attention && c % cfg.heads as i64 != 0 {
            return Err(format!("token width {c} is not divisible by discriminator.heads {}", cfg.heads));
        }
        let linear = init.linear(Default::default());
        let pos1 = nn::linear(path / "pos" / "0", position_inputs as i64, c, linear);
        // Small last layer: the embedding starts as a nudge, not as noise over the tokens.
        let small = init.linear(nn::LinearConfig {
            ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        });
        let pos2 = nn::linear(path / "pos" / "2", c, c, small);
        let attention = (cfg.kind == DiscriminatorKind::Attention).then(|| Attention {
            in_proj: nn::linear(path / "attn" / "in_proj", c, 3 * c, linear),
            out_proj: nn::linear(path / "attn" / "out_proj", c, c, linear),
            norm: nn::layer_norm(path / "attn" / "norm", vec![c], Default::default()),
            heads: cfg.heads as i64,
        });
        let hidden = c * cfg.hidden_ratio as i64;
        Ok(Self {
            pos1,
            pos2,
            attention,
            head1: nn::linear(path / "head" / "0", c, hidden, linear),
            head2: nn::linear(path / "head" / "3", hidden, 1, linear),
            dropout: cfg.dropout,
            positional: cfg.positional,
        })
    }

    /// `q`: (B, n, C) tokens, `centres`: (B, n, position inputs) → logits (B, n).
    pub fn forward_t(&self, q: &Tensor, centres: &Tensor, train: bool) -> Tensor {
        let q = if self.positional {
            q + self.pos2.forward(&self.pos1.forward(centres).gelu("none"))
        } else {
            q.shallow_clone()
        };
        let h = match &self.attention {
            None => q,
            Some(a) => {
                let (b, n, c) = q.size3().expect("tokens are 3-D");
                let qkv = a.in_proj.forward(&q).reshape([b, n, 3, a.heads, c / a.heads]).permute([2, 0, 3, 1, 4]);
                let mixed = Tensor::scaled_dot_product_attention(
                    &qkv.get(0),
                    &qkv.get(1),
                    &qkv.get(2),
                    None::<Tensor>,
                    0.0,
                    false,
                    None,
                    false,
                );
                let mixed = a.out_proj.forward(&mixed.transpose(1, 2).reshape([b, n, c]));
                a.norm.forward(&(q + mixed.dropout(self.dropout, train)))
            }
        };
        let hidden = self.head1.forward(&h).gelu("none").dropout(self.dropout, train);
        self.head2.forward(&hidden).squeeze_dim(-1)
    }

    pub fn scores(&self, q: &Tensor, centres: &Tensor) -> Tensor {
        self.forward_t(q, centres, false).sigmoid().to_kind(Kind::Float)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn one_logit_per_patch_and_attention_mixes_patches() {
        let vs = nn::VarStore::new(Device::Cpu);
        tch::manual_seed(1);
        let q = Tensor::randn([2, 12, 18], (Kind::Float, Device::Cpu));
        let centres = Tensor::randn([2, 12, 3], (Kind::Float, Device::Cpu));
        let attn =
            Discriminator::new(&(vs.root() / "a"), 18, 3, &DiscriminatorConfig::default(), LayerInit::Random).unwrap();
        let mlp = Discriminator::new(
            &(vs.root() / "m"),
            18,
            3,
            &DiscriminatorConfig { kind: DiscriminatorKind::Mlp, ..Default::default() },
            LayerInit::Random,
        )
        .unwrap();
        for d in [&attn, &mlp] {
            assert_eq!(d.forward_t(&q, &centres, false).size(), vec![2, 12]);
        }
        // Changing patch 0 changes patch 5's score only through attention.
        let q2 = q.copy();
        let _ = q2.get(0).get(0).fill_(3.0);
        let delta = |d: &Discriminator| {
            (d.scores(&q, &centres) - d.scores(&q2, &centres)).get(0).get(5).abs().double_value(&[])
        };
        assert!(delta(&attn) > 1e-6);
        assert_eq!(delta(&mlp), 0.0);
        assert!(
            Discriminator::new(&(vs.root() / "x"), 16, 3, &DiscriminatorConfig::default(), LayerInit::Random).is_err()
        );
    }
}
