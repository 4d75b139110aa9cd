//! What a sampler samples: a potential L(w) with a (stochastic) gradient.
//!
//! A [`Potential`] is the loss whose tempered, localised Gibbs posterior
//! p(w) ∝ exp(−nβ·L(w) − (γ/2)‖w − w*‖²) SGLD samples. The network's potential is its mean loss
//! (cross-entropy, or the mean squared error of [`crate::model::Loss`]) on a minibatch drawn from the
//! training set ([`NetworkPotential`]); analytic potentials
//! ([`super::analytic`]) have no data and a known learning coefficient, for verification.

use crate::data::{Dataset, Inputs, Normaliser, TargetData};
use crate::device::{Backend, CpuBackend};
use crate::model::{Network, TargetBuf, Workspace};
use crate::rng::Stream;
use crate::{Real, Result};
use std::sync::Mutex;

/// A read-only f32 view on a potential's backend.
pub type PView<'a, P> = <<P as Potential>::Backend as Backend>::View<'a, f32>;
/// A writable f32 view on a potential's backend.
pub type PViewMut<'a, P> = <<P as Potential>::Backend as Backend>::ViewMut<'a, f32>;

/// A loss over flat f32 parameters that a chain evaluates with its own state and random stream.
///
/// The chain's weights and gradient live on the potential's backend ([`Potential::Backend`]): the
/// chain driver ([`super::run_chain`]) keeps w, Δ and the gradient there and runs the fused update
/// with it. Potentials without a network (the analytic ones) are host code on [`CpuBackend`].
pub trait Potential: Sync {
    /// The backend the chains run on.
    type Backend: Backend;
    /// Per-chain buffers (workspace, minibatch order); created once per chain.
    type ChainState: Send;

    /// The backend value the chains use.
    fn backend(&self) -> &Self::Backend;
    /// The number of parameters.
    fn dim(&self) -> usize;
    /// n, the number of training samples (1 for an analytic potential).
    fn samples(&self) -> usize;
    /// m, the minibatch size (1 for an analytic potential, whose gradient is exact).
    fn batch_size(&self) -> usize;
    /// A chain's buffers.
    fn chain_state(&self) -> Self::ChainState;
    /// Takes back the buffers of a chain that has ended (with finite weights and losses), so that
    /// a later [`Potential::chain_state`] of this potential may hand them out again instead of
    /// allocating and first-touching new ones; what a chain computes must not depend on whether
    /// its buffers are new or recycled. The default drops them.
    fn recycle(&self, state: Self::ChainState) {
        drop(state);
    }
    /// Draws the next minibatch from `rng` and returns L_m(w), writing ∇L_m(w) (length `dim`) into
    /// `grad`.
    ///
    /// # Errors
    /// When the minibatch cannot be read (a streamed data file truncated or removed while in use).
    fn loss_and_gradient(
        &self,
        state: &mut Self::ChainState,
        rng: &mut Stream,
        w: PView<'_, Self>,
        grad: PViewMut<'_, Self>,
    ) -> Result<f64>;
    /// Draws the next minibatch from `rng` and returns L_m(w) without a gradient.
    ///
    /// # Errors
    /// As [`Potential::loss_and_gradient`].
    fn minibatch_loss(
        &self,
        state: &mut Self::ChainState,
        rng: &mut Stream,
        w: PView<'_, Self>,
    ) -> Result<f64>;
    /// L_n(w), the loss on the whole training set, at host weights (asked once per run).
    fn full_loss(&self, w: &[f32]) -> Result<f64>;
}

/// The mean loss (the network's: softmax cross-entropy or mean squared error) of a network on minibatches of `batch` samples of a data set.
///
/// Minibatches follow PyTorch's `DataLoader(shuffle=True, drop_last=True)`, which devinterp uses: each
/// epoch is a fresh permutation of the n samples (drawn from the chain's stream), cut into ⌊n/m⌋
/// batches of m; the remainder is dropped. The minibatch is gathered on the host and written into
/// the backend's memory; the passes run on backend `B`.
pub struct NetworkPotential<'a, B: Backend = CpuBackend> {
    pub net: &'a Network,
    pub data: &'a Dataset,
    pub batch: usize,
    norm: Normaliser<f32>,
    /// Float inputs held in memory, normalised once in f32 ([`Dataset::normalized`]: the values
    /// `gather_batch` computes per batch, bit for bit), so that a minibatch is row copies of half
    /// the bytes of the f64 inputs and no division per element. `None` for byte inputs (a table
    /// lookup per byte reads a quarter of the bytes), for streamed inputs and for float inputs of
    /// more than [`NORMALIZED_LIMIT`] bytes in f32.
    normalized: Option<Vec<f32>>,
    /// Float targets in f32 (the values `gather_batch` converts per batch), kept with
    /// `normalized`, so that the targets of a minibatch are row copies too.
    values: Option<Vec<f32>>,
    be: B,
    /// The buffers of ended chains ([`Potential::recycle`]), handed to the next chains. A chain's
    /// workspace is tens of MB (about 30 MB for `transformer_1l` at batch 512, 70 MB before the
    /// residual blocks stopped allocating the R-passes' buffers for a gradient), and a chain that
    /// allocates its own first-touches (page-faults and zeroes) all of it: about 2 ms of each step
    /// of a 20-draw chain at 70 MB. At most as many as chains ever ran at once.
    spare: Mutex<Vec<NetworkChainState<B>>>,
}

/// The most bytes of f32 inputs (and float targets) that [`NetworkPotential`] normalises once and
/// keeps: 1 GiB.
pub const NORMALIZED_LIMIT: usize = 1 << 30;

impl<'a> NetworkPotential<'a> {
    /// The potential on the CPU: [`NetworkPotential::new_on`] with [`CpuBackend`].
    ///
    /// # Errors
    /// When the data do not fit the network's input, or the batch is 0 or larger than the data set.
    pub fn new(net: &'a Network, data: &'a Dataset, batch: usize) -> Result<Self> {
        Self::new_on(CpuBackend, net, data, batch)
    }
}

impl<'a, B: Backend> NetworkPotential<'a, B> {
    /// The potential with its chains on backend `be`.
    ///
    /// # Errors
    /// As [`NetworkPotential::new`].
    pub fn new_on(be: B, net: &'a Network, data: &'a Dataset, batch: usize) -> Result<Self> {
        net.check_input(data)?;
        if batch == 0 || batch > data.len() {
            return Err(crate::Error::invalid(format!(
                "minibatch size {batch} must be between 1 and the {} training samples",
                data.len()
            )));
        }
        let floats = matches!(data.inputs, Inputs::Floats(_));
        let width = match &data.targets {
            TargetData::Values { width, .. } => *width,
            TargetData::Labels(_) | TargetData::Tokens { .. } => 0,
        };
        let fits = data
            .len()
            .checked_mul(data.features().saturating_add(width))
            .and_then(|v| v.checked_mul(std::mem::size_of::<f32>()))
            .is_some_and(|bytes| bytes <= NORMALIZED_LIMIT);
        let keep = floats && fits;
        let values = match &data.targets {
            TargetData::Values { values, .. } if keep => {
                Some(values.iter().map(|&v| f32::of_f64(v)).collect())
            }
            _ => None,
        };
        Ok(NetworkPotential {
            net,
            data,
            batch,
            norm: data.normaliser::<f32>(),
            normalized: if keep {
                Some(data.normalized::<f32>()?)
            } else {
                None
            },
            values,
            be,
            spare: Mutex::new(Vec::new()),
        })
    }

    /// Samples `idx` as a chain's minibatch on the host: normalised inputs into `x`
    /// (`idx.len() × features`), targets into `y` (from [`Dataset::target_buffer`]); row copies
    /// where the inputs were normalised once, else [`Dataset::gather_batch`] (the same values).
    ///
    /// # Errors
    /// As [`Dataset::gather_batch`] (a streamed file that can no longer be read).
    pub fn gather(&self, idx: &[usize], x: &mut [f32], y: &mut TargetBuf<f32>) -> Result<()> {
        match (&self.normalized, y) {
            (Some(all), TargetBuf::Values { values: yv, width }) if self.values.is_some() => {
                let (f, w) = (self.data.features(), *width);
                let kept = self.values.as_deref().unwrap_or_default();
                for (k, &i) in idx.iter().enumerate() {
                    x[k * f..(k + 1) * f].copy_from_slice(&all[i * f..(i + 1) * f]);
                    yv[k * w..(k + 1) * w].copy_from_slice(&kept[i * w..(i + 1) * w]);
                }
            }
            (Some(all), y) => self.data.gather_normalized_batch(all, idx, x, y),
            (None, y) => self.data.gather_batch(&self.norm, idx, x, y)?,
        }
        Ok(())
    }

    fn next_batch(&self, s: &mut NetworkChainState<B>, rng: &mut Stream) -> Result<()> {
        if s.cursor + self.batch > s.order.len() {
            s.order = rng.permutation(self.data.len());
            s.cursor = 0;
        }
        let idx = &s.order[s.cursor..s.cursor + self.batch];
        // In place where the backend's memory is the host's; else staged on the host and written.
        match B::host_mut(B::view_mut(&mut s.x)) {
            Some(x) => self.gather(idx, x, &mut s.y)?,
            None => {
                s.x_host.resize(B::buffer_len(&s.x), 0.0);
                self.gather(idx, &mut s.x_host, &mut s.y)?;
                self.be.write(&s.x_host, B::view_mut(&mut s.x));
            }
        }
        s.cursor += self.batch;
        Ok(())
    }
}

/// A chain's buffers for [`NetworkPotential`]: the minibatch on the backend (and, for a backend
/// whose memory is not the host's, the host copy it is gathered into first), its workspace.
pub struct NetworkChainState<B: Backend = CpuBackend> {
    ws: Workspace<f32, B>,
    x_host: Vec<f32>,
    x: B::Buffer<f32>,
    y: TargetBuf<f32>,
    order: Vec<usize>,
    cursor: usize,
}

impl<B: Backend> Potential for NetworkPotential<'_, B> {
    type Backend = B;
    type ChainState = NetworkChainState<B>;

    fn backend(&self) -> &B {
        &self.be
    }
    fn dim(&self) -> usize {
        self.net.num_params()
    }
    fn samples(&self) -> usize {
        self.data.len()
    }
    fn batch_size(&self) -> usize {
        self.batch
    }
    fn chain_state(&self) -> NetworkChainState<B> {
        let spare = self.spare.lock().map(|mut s| s.pop());
        if let Ok(Some(mut s)) = spare {
            // A fresh chain's minibatch order: none yet (the first batch draws a permutation).
            // The minibatch and the workspace are written before they are read.
            s.order.clear();
            s.cursor = 0;
            return s;
        }
        let features = self.batch * self.data.features();
        NetworkChainState {
            ws: self.net.workspace_on(self.be.clone(), self.batch),
            x_host: Vec::new(),
            x: self.be.zeros(features),
            y: self.data.target_buffer(self.batch),
            order: Vec::new(),
            cursor: 0,
        }
    }
    fn recycle(&self, state: NetworkChainState<B>) {
        if let Ok(mut spare) = self.spare.lock() {
            spare.push(state);
        }
    }
    fn loss_and_gradient(
        &self,
        s: &mut NetworkChainState<B>,
        rng: &mut Stream,
        w: B::View<'_, f32>,
        grad: B::ViewMut<'_, f32>,
    ) -> Result<f64> {
        self.next_batch(s, rng)?;
        Ok(self
            .net
            .loss_and_gradient_on(w, B::view(&s.x), s.y.view(), grad, &mut s.ws))
    }
    fn minibatch_loss(
        &self,
        s: &mut NetworkChainState<B>,
        rng: &mut Stream,
        w: B::View<'_, f32>,
    ) -> Result<f64> {
        self.next_batch(s, rng)?;
        let (sum, _) = self
            .net
            .loss_sum_on(w, B::view(&s.x), s.y.view(), &mut s.ws);
        Ok(sum / self.batch as f64)
    }
    fn full_loss(&self, w: &[f32]) -> Result<f64> {
        Ok(self.net.evaluate_on(&self.be, w, self.data, 1000)?.loss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DataFile, Source, Split};
    use crate::model::{initialise, Architecture, Loss, NetSpec};
    use crate::rng::{stream, Purpose};

    fn float_data(n: usize, f: usize, norm: (f64, f64), width: Option<usize>) -> Dataset {
        let mut rng = stream(3, Purpose::Chain, 7);
        let targets = match width {
            None => TargetData::Labels((0..n).map(|i| (i % 3) as u32).collect()),
            Some(w) => TargetData::Values {
                values: (0..n * w).map(|i| (i as f64 * 0.37).sin() / 3.0).collect(),
                width: w,
            },
        };
        Dataset {
            source: Source::File(DataFile {
                path: "x.safetensors".into(),
                fingerprint: "0".repeat(16),
                normalize: None,
                token_ids: false,
            }),
            split: Split::Train,
            folder: "x.safetensors".into(),
            inputs: Inputs::Floats(
                (0..n * f)
                    .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 6.0 - 3.0)
                    .collect(),
            ),
            targets,
            shape: [1, 1, f],
            classes: 3,
            normalisation: vec![norm],
        }
    }

    /// A chain on recycled buffers ([`Potential::recycle`]: the workspace of a residual network,
    /// the minibatch, the order) computes what a chain on new ones does, bit for bit: three chains
    /// on one thread (the second and third take the first's buffers) and a second run of them
    /// (all on recycled buffers) against each chain alone on a potential of its own. 12 steps of
    /// batches of 4 of 23 samples cross an epoch, so a recycled minibatch order would show.
    #[test]
    fn chains_on_recycled_buffers_compute_what_chains_on_new_ones_do() {
        use crate::sample::{run_chain, run_chains, SgldConfig};
        let spec = serde_json::json!({"input": [5],
            "layers": [{"type": "linear", "out": 6},
                       {"type": "residual", "layers": [{"type": "layernorm"},
                            {"type": "linear", "out": 8}, {"type": "gelu"},
                            {"type": "linear", "out": 6}]},
                       {"type": "linear", "out": 3}]});
        let net = Network::new(Architecture::Spec(Box::new(
            NetSpec::from_json("t", &spec).unwrap(),
        )));
        let w: Vec<f32> = initialise(&net, 1);
        let data = float_data(23, 5, (0.3, 1.7), None);
        let cfg = SgldConfig {
            step_size: 1e-3,
            nbeta: 5.0,
            localization: 10.0,
            weight_decay: 0.0,
            bounding_box: None,
            draws: 12,
            burn_in: 0,
            thin: 1,
            chains: 3,
            threads: 1,
            seed: 9,
        };
        let pot = NetworkPotential::new(&net, &data, 4).unwrap();
        let runs = [
            run_chains(&pot, &w, &cfg).unwrap(),
            run_chains(&pot, &w, &cfg).unwrap(),
        ];
        assert_eq!(
            pot.spare.lock().unwrap().len(),
            1,
            "one thread's buffers kept"
        );
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for c in 0..cfg.chains {
            let alone =
                run_chain(&NetworkPotential::new(&net, &data, 4).unwrap(), &w, &cfg, c).unwrap();
            assert_eq!(alone.losses.len(), cfg.draws);
            for (run, traces) in runs.iter().enumerate() {
                let t = &traces[c];
                let what = format!("chain {c}, run {run}");
                assert_eq!(bits(&t.losses), bits(&alone.losses), "{what}: losses");
                assert_eq!(bits(&t.acceptance), bits(&alone.acceptance), "{what}");
                assert_eq!(bits(&t.distances), bits(&alone.distances), "{what}");
                assert_eq!(t.final_distance.to_bits(), alone.final_distance.to_bits());
            }
        }
        assert_ne!(runs[0][0].losses, runs[0][1].losses, "chains differ");
    }

    /// The minibatches of float inputs come from the inputs normalised once (and float targets
    /// converted once), and a chain's losses and gradients are those of batches normalised as
    /// they are gathered, bit for bit (a normalisation whose mean and standard deviation round,
    /// so that the division matters), under cross-entropy and the mean squared error.
    #[test]
    fn float_inputs_normalised_once_give_the_gathered_batches_bits() {
        for width in [None, Some(3)] {
            let spec = serde_json::json!({"input": [5],
                "layers": [{"type": "linear", "out": 4}, {"type": "gelu"},
                           {"type": "linear", "out": 3}]});
            let mut net = Network::new(Architecture::Spec(Box::new(
                NetSpec::from_json("t", &spec).unwrap(),
            )));
            if width.is_some() {
                net.loss = Loss::MeanSquaredError;
            }
            let w: Vec<f32> = initialise(&net, 1);
            let data = float_data(23, 5, (0.3, 1.7), width);
            let cached = NetworkPotential::new(&net, &data, 4).unwrap();
            assert!(
                cached.normalized.is_some(),
                "float inputs in memory are kept"
            );
            assert_eq!(
                cached.values.is_some(),
                width.is_some(),
                "float targets kept"
            );
            let mut plain = NetworkPotential::new(&net, &data, 4).unwrap();
            plain.normalized = None;
            plain.values = None;
            let (mut sa, mut sb) = (cached.chain_state(), plain.chain_state());
            let (mut ra, mut rb) = (stream(1, Purpose::Chain, 0), stream(1, Purpose::Chain, 0));
            let (mut ga, mut gb) = (vec![0f32; w.len()], vec![0f32; w.len()]);
            // Three epochs of five batches (the remainder of 3 dropped each time).
            for step in 0..15 {
                let la = cached
                    .loss_and_gradient(&mut sa, &mut ra, &w, &mut ga)
                    .unwrap();
                let lb = plain
                    .loss_and_gradient(&mut sb, &mut rb, &w, &mut gb)
                    .unwrap();
                assert_eq!(la.to_bits(), lb.to_bits(), "{width:?}: loss at step {step}");
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&sa.x), bits(&sb.x), "{width:?}: batch at step {step}");
                assert_eq!(sa.y, sb.y, "{width:?}: targets at step {step}");
                assert_eq!(bits(&ga), bits(&gb), "{width:?}: gradient at step {step}");
            }
            assert!(sa.x.iter().any(|&v| v != 0.0), "the batch was gathered");
        }
    }
}
