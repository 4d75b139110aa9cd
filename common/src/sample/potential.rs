//! What a sampler samples: a potential L(w) with a (stochastic) gradient.
//!
//! A [`Potential`] is the loss whose tempered, localised Gibbs posterior
//! p(w) ∝ exp(−nβ·L(w) − (γ/2)‖w − w*‖²) SGLD samples. The network's potential is its mean loss
//! (cross-entropy, or the mean squared error of [`crate::model::Loss`]) on a minibatch drawn from the
//! training set ([`NetworkPotential`]); analytic potentials
//! ([`super::analytic`]) have no data and a known learning coefficient, for verification.

use crate::data::{Dataset, Normaliser};
use crate::device::{Backend, CpuBackend};
use crate::model::{Network, TargetBuf, Workspace};
use crate::rng::Stream;
use crate::Result;

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
    be: B,
}

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
        Ok(NetworkPotential {
            net,
            data,
            batch,
            norm: data.normaliser::<f32>(),
            be,
        })
    }

    fn next_batch(&self, s: &mut NetworkChainState<B>, rng: &mut Stream) -> Result<()> {
        if s.cursor + self.batch > s.order.len() {
            s.order = rng.permutation(self.data.len());
            s.cursor = 0;
        }
        let idx = &s.order[s.cursor..s.cursor + self.batch];
        // In place where the backend's memory is the host's; else staged on the host and written.
        match B::host_mut(B::view_mut(&mut s.x)) {
            Some(x) => self.data.gather_batch(&self.norm, idx, x, &mut s.y)?,
            None => {
                s.x_host.resize(B::buffer_len(&s.x), 0.0);
                self.data
                    .gather_batch(&self.norm, idx, &mut s.x_host, &mut s.y)?;
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
