//! What a sampler samples: a potential L(w) with a (stochastic) gradient.
//!
//! A [`Potential`] is the loss whose tempered, localised Gibbs posterior
//! p(w) ∝ exp(−nβ·L(w) − (γ/2)‖w − w*‖²) SGLD samples. The network's potential is its mean loss
//! (cross-entropy, or the mean squared error of [`crate::model::Loss`]) on a minibatch drawn from the
//! training set ([`NetworkPotential`]); analytic potentials
//! ([`super::analytic`]) have no data and a known learning coefficient, for verification.

use crate::data::{Dataset, Normaliser};
use crate::model::{Network, TargetBuf, Workspace};
use crate::rng::Stream;
use crate::Result;

/// A loss over flat f32 parameters that a chain evaluates with its own state and random stream.
pub trait Potential: Sync {
    /// Per-chain buffers (workspace, minibatch order); created once per chain.
    type ChainState: Send;

    /// The number of parameters.
    fn dim(&self) -> usize;
    /// n, the number of training samples (1 for an analytic potential).
    fn samples(&self) -> usize;
    /// m, the minibatch size (1 for an analytic potential, whose gradient is exact).
    fn batch_size(&self) -> usize;
    /// A chain's buffers.
    fn chain_state(&self) -> Self::ChainState;
    /// Draws the next minibatch from `rng` and returns L_m(w), writing ∇L_m(w) (length `dim`) into
    /// `grad`.
    fn loss_and_gradient(
        &self,
        state: &mut Self::ChainState,
        rng: &mut Stream,
        w: &[f32],
        grad: &mut [f32],
    ) -> f64;
    /// Draws the next minibatch from `rng` and returns L_m(w) without a gradient.
    fn minibatch_loss(&self, state: &mut Self::ChainState, rng: &mut Stream, w: &[f32]) -> f64;
    /// L_n(w), the loss on the whole training set.
    fn full_loss(&self, w: &[f32]) -> Result<f64>;
}

/// The mean loss (the network's: softmax cross-entropy or mean squared error) of a network on minibatches of `batch` samples of a data set.
///
/// Minibatches follow PyTorch's `DataLoader(shuffle=True, drop_last=True)`, which devinterp uses: each
/// epoch is a fresh permutation of the n samples (drawn from the chain's stream), cut into ⌊n/m⌋
/// batches of m; the remainder is dropped.
pub struct NetworkPotential<'a> {
    pub net: &'a Network,
    pub data: &'a Dataset,
    pub batch: usize,
    norm: Normaliser<f32>,
}

impl<'a> NetworkPotential<'a> {
    /// # Errors
    /// When the data do not fit the network's input, or the batch is 0 or larger than the data set.
    pub fn new(net: &'a Network, data: &'a Dataset, batch: usize) -> Result<Self> {
        net.check_input(data)?;
        if batch == 0 || batch > data.len() {
            return Err(crate::Error::invalid(format!(
                "minibatch size {batch} must be between 1 and the {} training samples",
                data.len()
            )));
        }
        Ok(NetworkPotential {
            net,
            data,
            batch,
            norm: data.normaliser::<f32>(),
        })
    }

    fn next_batch(&self, s: &mut NetworkChainState, rng: &mut Stream) {
        if s.cursor + self.batch > s.order.len() {
            s.order = rng.permutation(self.data.len());
            s.cursor = 0;
        }
        let idx = &s.order[s.cursor..s.cursor + self.batch];
        self.data.gather_batch(&self.norm, idx, &mut s.x, &mut s.y);
        s.cursor += self.batch;
    }
}

/// A chain's buffers for [`NetworkPotential`].
pub struct NetworkChainState {
    ws: Workspace<f32>,
    x: Vec<f32>,
    y: TargetBuf<f32>,
    order: Vec<usize>,
    cursor: usize,
}

impl Potential for NetworkPotential<'_> {
    type ChainState = NetworkChainState;

    fn dim(&self) -> usize {
        self.net.num_params()
    }
    fn samples(&self) -> usize {
        self.data.len()
    }
    fn batch_size(&self) -> usize {
        self.batch
    }
    fn chain_state(&self) -> NetworkChainState {
        NetworkChainState {
            ws: self.net.workspace(self.batch),
            x: vec![0.0; self.batch * self.data.features()],
            y: self.data.target_buffer(self.batch),
            order: Vec::new(),
            cursor: 0,
        }
    }
    fn loss_and_gradient(
        &self,
        s: &mut NetworkChainState,
        rng: &mut Stream,
        w: &[f32],
        grad: &mut [f32],
    ) -> f64 {
        self.next_batch(s, rng);
        self.net
            .loss_and_gradient(w, &s.x, s.y.view(), grad, &mut s.ws)
    }
    fn minibatch_loss(&self, s: &mut NetworkChainState, rng: &mut Stream, w: &[f32]) -> f64 {
        self.next_batch(s, rng);
        let (sum, _) = self.net.loss_sum(w, &s.x, s.y.view(), &mut s.ws);
        sum / self.batch as f64
    }
    fn full_loss(&self, w: &[f32]) -> Result<f64> {
        Ok(self.net.evaluate(w, self.data, 1000)?.loss)
    }
}
