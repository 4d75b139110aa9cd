//! A network: layers over a flat parameter vector, with exact forward and backward passes.

use super::arch::Architecture;
use super::layers::{softmax_cross_entropy, Layer, Scratch};
use super::layout::ParamLayout;
use crate::data::Dataset;
use crate::{Real, Result};

/// An architecture with its layers and parameter layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub arch: Architecture,
    pub layers: Vec<Layer>,
    pub layout: ParamLayout,
}

/// Buffers for one batch size: every layer's output and its gradient, the max-pool winners and the
/// convolution scratch. Reused across steps so that a training step allocates nothing.
#[derive(Clone, Debug, Default)]
pub struct Workspace<T> {
    pub(crate) batch: usize,
    pub(crate) acts: Vec<Vec<T>>,
    pub(crate) deltas: Vec<Vec<T>>,
    pub(crate) argmax: Vec<Vec<u32>>,
    pub(crate) scratch: Scratch<T>,
}

/// Mean loss and accuracy over a data set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub samples: usize,
}

impl Network {
    /// Builds the layers and layout of `arch`. Sizes from a checkpoint or a flag are checked first
    /// with [`Network::try_new`] (or [`Architecture::size`]): this allocates in proportion to them.
    pub fn new(arch: Architecture) -> Self {
        let layers = arch.layers();
        let layout = arch.layout();
        Network {
            arch,
            layers,
            layout,
        }
    }

    /// [`Network::new`] after [`Architecture::size`] has checked the sizes (no zero widths, at least
    /// two classes, no overflow).
    pub fn try_new(arch: Architecture) -> Result<Self> {
        arch.size()?;
        Ok(Network::new(arch))
    }

    /// P, the number of parameters.
    pub fn num_params(&self) -> usize {
        self.layout.total()
    }

    pub fn classes(&self) -> usize {
        self.arch.classes()
    }

    pub fn input_features(&self) -> usize {
        self.arch.input_features()
    }

    /// A workspace sized for `batch` samples.
    pub fn workspace<T: Real>(&self, batch: usize) -> Workspace<T> {
        let mut ws = Workspace::default();
        self.ensure(&mut ws, batch);
        ws
    }

    fn ensure<T: Real>(&self, ws: &mut Workspace<T>, batch: usize) {
        if ws.batch >= batch && ws.acts.len() == self.layers.len() {
            return;
        }
        ws.batch = batch;
        ws.acts = self
            .layers
            .iter()
            .map(|l| vec![T::zero(); batch * l.out_features()])
            .collect();
        ws.deltas = ws.acts.clone();
        ws.argmax = self
            .layers
            .iter()
            .map(|l| match l {
                Layer::MaxPool2 { .. } => vec![0; batch * l.out_features()],
                _ => Vec::new(),
            })
            .collect();
        let (cols, conv) = self
            .layers
            .iter()
            .map(|l| l.scratch_len(batch))
            .fold((0, 0), |(a, b), (c, d)| (a.max(c), b.max(d)));
        ws.scratch.cols = vec![T::zero(); cols];
        ws.scratch.conv = vec![T::zero(); conv];
    }

    /// Runs the forward pass on `batch` samples `x` (`batch × input_features`, row-major) and returns
    /// the logits (`batch × classes`), which stay in the workspace with every intermediate output.
    pub fn forward<'w, T: Real>(
        &self,
        params: &[T],
        x: &[T],
        batch: usize,
        ws: &'w mut Workspace<T>,
    ) -> &'w [T] {
        self.ensure(ws, batch);
        for (i, layer) in self.layers.iter().enumerate() {
            let (before, rest) = ws.acts.split_at_mut(i);
            let input: &[T] = if i == 0 { x } else { &before[i - 1] };
            layer.forward(
                &self.layout,
                params,
                input,
                batch,
                &mut rest[0],
                &mut ws.argmax[i],
                &mut ws.scratch,
            );
        }
        let last = self.layers.len() - 1;
        &ws.acts[last][..batch * self.classes()]
    }

    /// Mean cross-entropy L over the batch and its exact gradient ∂L/∂θ (written into `grad`, length
    /// P), by reverse-mode differentiation through every layer. The input gradient of the first layer is
    /// not computed.
    pub fn loss_and_gradient<T: Real>(
        &self,
        params: &[T],
        x: &[T],
        labels: &[usize],
        grad: &mut [T],
        ws: &mut Workspace<T>,
    ) -> f64 {
        let batch = labels.len();
        self.forward(params, x, batch, ws);
        let last = self.layers.len() - 1;
        let classes = self.classes();
        let scale = T::one() / T::of_usize(batch);
        let (loss_sum, _) = softmax_cross_entropy(
            &ws.acts[last][..batch * classes],
            labels,
            classes,
            scale,
            Some(&mut ws.deltas[last][..batch * classes]),
        );
        self.backward(params, x, batch, grad, ws);
        loss_sum / batch as f64
    }

    /// Backpropagates the gradient already in the last layer's delta buffer.
    fn backward<T: Real>(
        &self,
        params: &[T],
        x: &[T],
        batch: usize,
        grad: &mut [T],
        ws: &mut Workspace<T>,
    ) {
        for i in (0..self.layers.len()).rev() {
            let (dbefore, drest) = ws.deltas.split_at_mut(i);
            let input: &[T] = if i == 0 { x } else { &ws.acts[i - 1] };
            let dx = if i == 0 {
                None
            } else {
                Some(&mut dbefore[i - 1][..])
            };
            self.layers[i].backward(
                &self.layout,
                params,
                input,
                &ws.acts[i],
                &mut drest[0],
                batch,
                &ws.argmax[i],
                grad,
                dx,
                &mut ws.scratch,
            );
        }
    }

    /// Sum of per-sample losses and number correct on a batch (no gradient).
    pub fn loss_sum<T: Real>(
        &self,
        params: &[T],
        x: &[T],
        labels: &[usize],
        ws: &mut Workspace<T>,
    ) -> (f64, usize) {
        let batch = labels.len();
        let logits = self.forward(params, x, batch, ws);
        softmax_cross_entropy(logits, labels, self.classes(), T::one(), None)
    }

    /// Mean loss and accuracy over a whole data set in file order, in batches of `batch`.
    pub fn evaluate<T: Real>(
        &self,
        params: &[T],
        data: &Dataset,
        batch: usize,
    ) -> Result<Evaluation> {
        crate::data::check_input(data, self)?;
        let table = data.normalisation_table::<T>();
        let mut ws = self.workspace::<T>(batch);
        let f = data.features();
        let mut x = vec![T::zero(); batch * f];
        let mut y = vec![0usize; batch];
        let (mut loss, mut correct) = (0.0, 0);
        let mut start = 0;
        while start < data.len() {
            let count = batch.min(data.len() - start);
            data.gather_range(&table, start, count, &mut x, &mut y);
            let (l, c) = self.loss_sum(params, &x[..count * f], &y[..count], &mut ws);
            loss += l;
            correct += c;
            start += count;
        }
        let n = data.len().max(1) as f64;
        Ok(Evaluation {
            loss: loss / n,
            accuracy: correct as f64 / n,
            samples: data.len(),
        })
    }
}
