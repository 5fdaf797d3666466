//! Method step 2: Spatial Context Aggregation — no learned weights. Patch tokens are refined by prototypes (FPS
//! over the patch centres) that gather their patches' features through optimal transport (Sinkhorn), exchange
//! context locally and globally, and hand it back to every patch. docs/method.md step 2 is the specification;
//! the ablation switches live in [`ScaConfig`].
//!
//! One reading choice: "Sinkhorn-normalised" similarity matrices (steps 3 and 4) are made doubly stochastic
//! (rows and columns summing to 1) before their element-wise product and row softmax.

use tch::{Kind, Tensor};

use super::config::{Fusion, ScaConfig};
use crate::geometry::device::occurrences;
use crate::geometry::{self, FPFH_BINS, SharedPoints, SharedRows};
use crate::transfers::Transfer;

/// Sinkhorn: the transport plan for `log_kernel` (already divided by its temperature) with row marginals `a`
/// and column marginals `b` (1-D, or batched with a leading dimension). Entries of −∞ stay 0.
///
/// The log-domain updates (f = log a − logsumexp(L + g), then g) run in the kernel domain (u = a / K v, then
/// v = b / Kᵀ u, with u = eᶠ, v = eᵍ): the same fixed point and the same order, two matrix–vector products per
/// iteration instead of a dozen element-wise passes, which dominated SCA on a CPU. In f64, with each row's
/// maximum taken out of the kernel, its entries stay far from underflow (the log-kernels here span < 200).
pub fn sinkhorn(log_kernel: &Tensor, a: &Tensor, b: &Tensor, iterations: usize) -> Tensor {
    let log_kernel = log_kernel.to_kind(Kind::Double);
    let kernel = (&log_kernel - log_kernel.amax([-1], true)).exp();
    let (a, b) = (a.to_kind(Kind::Double).unsqueeze(-1), b.to_kind(Kind::Double).unsqueeze(-1));
    let kernel_t = kernel.transpose(-2, -1);
    let (mut u, mut v) = (a.ones_like(), b.ones_like());
    for _ in 0..iterations {
        u = &a / kernel.matmul(&v);
        v = &b / kernel_t.matmul(&u);
    }
    (u * kernel * v.transpose(-2, -1)).to_kind(Kind::Float)
}

fn l2_normalise(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-8)
}

fn squared_distances(a: &Tensor, b: &Tensor) -> Tensor {
    // |a|² + |b|² − 2 a·b: one matrix product instead of an (n, m, C) difference tensor.
    let (a2, b2) =
        (a.square().sum_dim_intlist(-1, true, Kind::Float), b.square().sum_dim_intlist(-1, true, Kind::Float));
    (a2 + b2.transpose(-2, -1) - a.matmul(&b.transpose(-2, -1)) * 2.0).clamp_min(0.0)
}

/// Doubly-stochastic normalisation of a batch of square similarity matrices (masked entries −∞).
fn doubly_stochastic(similarity: &Tensor, temperature: f64, iterations: usize) -> Tensor {
    let size = similarity.size();
    let m = size[size.len() - 1];
    let uniform = Tensor::full(&size[..size.len() - 1], 1.0 / m as f64, (Kind::Float, similarity.device()));
    sinkhorn(&(similarity / temperature), &uniform, &uniform, iterations) * m as f64
}

fn fuse(cfg: &ScaConfig, geometric: &Tensor, feature: &Tensor) -> Tensor {
    match cfg.fusion {
        Fusion::Both => geometric * feature,
        Fusion::GeometryOnly => geometric.shallow_clone(),
        Fusion::FeatureOnly => feature.shallow_clone(),
    }
}

/// Refines tokens `z` (n × C) of patches with centres `centres` (normalised frame) and FPFH `descriptors` (on the
/// host or already on `z`'s device; the centres on both).
pub fn aggregate(cfg: &ScaConfig, z: &Tensor, centres: &SharedPoints, descriptors: &SharedRows<FPFH_BINS>) -> Tensor {
    let _guard = tch::no_grad_guard();
    if !cfg.enabled {
        return z.shallow_clone();
    }
    let device = z.device();
    let (n, c) = z.size2().expect("tokens are n × C");
    let d = FPFH_BINS as f64;
    let iterations = cfg.sinkhorn_iterations;
    let t = f64::from(cfg.temperature);

    // 1. Prototypes: FPS over the centres from the centre farthest from their mean, so the choice does not
    //    depend on patch order.
    let m = ((cfg.prototype_ratio * n as f32).round() as usize).clamp(1, n as usize);
    let mean = centres.iter().fold([0f32; 3], |s, p| [s[0] + p[0], s[1] + p[1], s[2] + p[2]]).map(|v| v / n as f32);
    let start = centres
        .iter()
        .enumerate()
        .max_by(|x, y| geometry::squared_distance(*x.1, mean).total_cmp(&geometry::squared_distance(*y.1, mean)))
        .map_or(0, |(i, _)| i);
    let prototypes: Vec<i64> =
        geometry::farthest_point_sampling(centres, m, start).into_iter().map(i64::from).collect();
    let m = prototypes.len() as i64;
    let proto_index = Tensor::from_slice(&prototypes).upload(device);
    let centres_t = centres.on(device);
    let g = descriptors.on(device);
    let positions = centres_t.index_select(0, &proto_index);
    let mut proto_g = g.index_select(0, &proto_index);
    let mut proto_z = z.index_select(0, &proto_index);
    let nearest = squared_distances(&centres_t, &positions).argmin(1, false);
    let mu = occurrences(&nearest, m).to_kind(Kind::Float).clamp_min(1.0);
    let mu = &mu / mu.sum(Kind::Float);

    // 2. Assignment of patches to prototypes by transport, then centroid updates.
    let (g_hat, z_hat) = (l2_normalise(&g), l2_normalise(z));
    let uniform_patches = Tensor::full([n], 1.0 / n as f64, (Kind::Float, device));
    for _ in 0..cfg.assignment_rounds {
        let cost =
            squared_distances(&g_hat, &l2_normalise(&proto_g)) + squared_distances(&z_hat, &l2_normalise(&proto_z));
        let plan = sinkhorn(&(-cost / t), &uniform_patches, &mu, iterations);
        let mass = plan.sum_dim_intlist(0, false, Kind::Float).clamp_min(1e-12).unsqueeze(1);
        proto_g = plan.transpose(0, 1).matmul(&g) / &mass;
        proto_z = plan.transpose(0, 1).matmul(z) / &mass;
    }

    // 3. Local aggregation over each prototype's K nearest patches.
    let k = (cfg.local_neighbors as i64).min(n);
    let local = squared_distances(&positions, &centres_t).topk(k, 1, false, true).1; // (m, K)
    let flat = local.reshape([-1]);
    let z_local = z.index_select(0, &flat).reshape([m, k, c]);
    let g_local = g_hat.index_select(0, &flat).reshape([m, k, FPFH_BINS as i64]);
    let z_local_hat = z_hat.index_select(0, &flat).reshape([m, k, c]);
    let w_g = doubly_stochastic(&(g_local.matmul(&g_local.transpose(1, 2)) / d.sqrt()), t, iterations);
    let w_z = doubly_stochastic(&(z_local_hat.matmul(&z_local_hat.transpose(1, 2)) / (c as f64).sqrt()), t, iterations);
    let w = fuse(cfg, &w_g, &w_z).softmax(-1, Kind::Float);
    let gathered = w.matmul(&z_local).mean_dim(1, false, Kind::Float); // (m, C)
    proto_z = (proto_z + gathered) * 0.5;

    // 4. Global aggregation among prototypes closer than τ.
    if cfg.global_step {
        let far = squared_distances(&positions, &positions).gt(f64::from(cfg.global_radius).powi(2));
        let masked = |s: Tensor| s.masked_fill(&far, f64::NEG_INFINITY);
        let (pg, pz) = (l2_normalise(&proto_g), l2_normalise(&proto_z));
        let s_g = masked(pg.matmul(&pg.transpose(0, 1)) / d.sqrt());
        let s_z = masked(pz.matmul(&pz.transpose(0, 1)) / (c as f64).sqrt());
        let fused = fuse(cfg, &doubly_stochastic(&s_g, t, iterations), &doubly_stochastic(&s_z, t, iterations));
        let w = fused.masked_fill(&far, f64::NEG_INFINITY).softmax(-1, Kind::Float);
        proto_z = (&proto_z + w.matmul(&proto_z)) * 0.5;
    }

    // 5. Back to the patches: transport with rows summing to 1.
    let spatial = -squared_distances(&centres_t, &positions) / f64::from(cfg.spatial_bandwidth);
    let proto_z_hat = l2_normalise(&proto_z);
    let affinity = z_hat.matmul(&proto_z_hat.transpose(0, 1)) / (c as f64).sqrt();
    let log_kernel = match cfg.fusion {
        Fusion::Both => &spatial + &affinity,
        Fusion::GeometryOnly => spatial,
        Fusion::FeatureOnly => affinity,
    };
    let uniform_protos = Tensor::full([m], 1.0 / m as f64, (Kind::Float, device));
    let back = sinkhorn(&log_kernel, &uniform_patches, &uniform_protos, iterations) * n as f64;
    let mut out = (z + back.matmul(&proto_z)) * 0.5;

    // 6. Optional snapping to the most similar prototype.
    if cfg.snapping > 0.0 {
        let best = l2_normalise(&out).matmul(&proto_z_hat.transpose(0, 1)).argmax(1, false);
        let beta = f64::from(cfg.snapping);
        out = &out * (1.0 - beta) + proto_z.index_select(0, &best) * beta;
    }
    out
}

#[cfg(test)]
mod tests {
    use tch::Device;

    use super::*;
    use crate::geometry::{Fpfh, Point};

    fn max_abs(t: &Tensor) -> f64 {
        t.abs().max().double_value(&[])
    }

    #[test]
    fn sinkhorn_meets_its_marginals() {
        tch::manual_seed(0);
        let kernel = Tensor::randn([30, 7], (Kind::Float, Device::Cpu)) * 3.0;
        let a = Tensor::full([30], 1.0 / 30.0, (Kind::Float, Device::Cpu));
        let b = Tensor::rand([7], (Kind::Float, Device::Cpu)) + 0.1;
        let b = &b / b.sum(Kind::Float);
        let plan = sinkhorn(&kernel, &a, &b, 200);
        assert!(max_abs(&(plan.sum_dim_intlist(1, false, Kind::Float) - &a)) < 1e-5);
        assert!(max_abs(&(plan.sum_dim_intlist(0, false, Kind::Float) - &b)) < 1e-5);
    }

    #[test]
    fn the_kernel_domain_gives_the_log_domain_plan() {
        let log_domain = |l: &Tensor, a: &Tensor, b: &Tensor, iterations: usize| {
            let (log_a, log_b) = (a.log().unsqueeze(-1), b.log().unsqueeze(-2));
            let (mut f, mut g) = (log_a.zeros_like(), log_b.zeros_like());
            for _ in 0..iterations {
                f = &log_a - (l + &g).logsumexp([-1], true);
                g = &log_b - (l + &f).logsumexp([-2], true);
            }
            (l + f + g).exp()
        };
        tch::manual_seed(3);
        // Costs in [0, 4] at temperature 0.05 (SCA's widest log-kernels), batched, with masked entries.
        let cost = Tensor::rand([4, 40, 12], (Kind::Float, Device::Cpu)) * 4.0;
        let masked = Tensor::rand([4, 40, 12], (Kind::Float, Device::Cpu)).gt(0.8);
        let l = (-cost / 0.05).masked_fill(&masked, f64::NEG_INFINITY);
        let a = Tensor::full([4, 40], 1.0 / 40.0, (Kind::Float, Device::Cpu));
        let b = Tensor::full([4, 12], 1.0 / 12.0, (Kind::Float, Device::Cpu));
        for iterations in [1, 5, 20] {
            let (ours, reference) = (sinkhorn(&l, &a, &b, iterations), log_domain(&l, &a, &b, iterations));
            assert!(max_abs(&(&ours - &reference)) < 1e-6, "{iterations} iterations");
            assert_eq!(ours.masked_select(&masked).abs().max().double_value(&[]), 0.0, "masked entries stay 0");
        }
    }

    fn cloud(n: usize, seed: i64) -> (Tensor, Vec<Point>, Vec<Fpfh>) {
        tch::manual_seed(seed);
        let z = Tensor::randn([n as i64, 16], (Kind::Float, Device::Cpu));
        let centres: Vec<Point> = (0..n)
            .map(|i| {
                let a = i as f32 * 0.7;
                [a.cos() * (1.0 + 0.01 * i as f32), a.sin(), (i as f32 / n as f32) - 0.5]
            })
            .collect();
        let descriptors: Vec<Fpfh> = (0..n)
            .map(|i| {
                let mut h = [0f32; FPFH_BINS];
                for (b, v) in h.iter_mut().enumerate() {
                    *v = ((i * 7 + b * 3) % 11) as f32;
                }
                h
            })
            .collect();
        (z, centres, descriptors)
    }

    #[test]
    fn permuting_patches_permutes_the_output() {
        let (z, centres, descriptors) = cloud(60, 1);
        let cfg = ScaConfig { snapping: 0.3, ..Default::default() };
        let out = aggregate(&cfg, &z, &centres.as_slice().into(), &SharedRows::Host(descriptors.clone()));
        let perm: Vec<usize> = (0..60).map(|i| (i * 17 + 5) % 60).collect();
        let perm_t = Tensor::from_slice(&perm.iter().map(|&p| p as i64).collect::<Vec<_>>());
        let out_p = aggregate(
            &cfg,
            &z.index_select(0, &perm_t),
            &perm.iter().map(|&p| centres[p]).collect::<Vec<_>>().into(),
            &SharedRows::Host(perm.iter().map(|&p| descriptors[p]).collect()),
        );
        assert!(max_abs(&(out.index_select(0, &perm_t) - out_p)) < 1e-4);
    }

    #[test]
    fn every_switch_gives_finite_tokens_and_off_is_identity() {
        let (z, centres, descriptors) = cloud(50, 2);
        let (centres, descriptors) = (SharedPoints::from(centres), SharedRows::Host(descriptors));
        let switches = [
            ScaConfig::default(),
            ScaConfig { global_step: false, ..Default::default() },
            ScaConfig { fusion: Fusion::GeometryOnly, ..Default::default() },
            ScaConfig { fusion: Fusion::FeatureOnly, ..Default::default() },
            ScaConfig { snapping: 1.0, assignment_rounds: 3, ..Default::default() },
        ];
        for cfg in &switches {
            let out = aggregate(cfg, &z, &centres, &descriptors);
            assert_eq!(out.size(), z.size());
            assert!(bool::try_from(out.isfinite().all()).unwrap(), "{cfg:?}");
            assert!(max_abs(&(&out - &z)) > 1e-3, "SCA changed nothing under {cfg:?}");
        }
        let off = aggregate(&ScaConfig { enabled: false, ..Default::default() }, &z, &centres, &descriptors);
        assert!(max_abs(&(off - &z)) == 0.0);
    }

    #[test]
    fn flat_duplicate_and_tiny_clouds_stay_finite() {
        let z = Tensor::ones([12, 8], (Kind::Float, Device::Cpu));
        let flat: Vec<Point> = (0..12).map(|i| [i as f32 * 0.1, 0.0, 0.0]).collect();
        let same = vec![[0.5f32; 3]; 12];
        let zero = SharedRows::Host(vec![[0f32; FPFH_BINS]; 12]);
        for centres in [&flat, &same] {
            let out = aggregate(&ScaConfig::default(), &z, &centres.as_slice().into(), &zero);
            assert!(bool::try_from(out.isfinite().all()).unwrap());
        }
        let one = aggregate(
            &ScaConfig::default(),
            &z.narrow(0, 0, 1),
            &flat[..1].into(),
            &SharedRows::Host(vec![[0.0; FPFH_BINS]]),
        );
        assert!(bool::try_from(one.isfinite().all()).unwrap());
    }
}
