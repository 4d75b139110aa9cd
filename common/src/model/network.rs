//! A network: layers over a flat parameter vector, with exact forward and backward passes.

use super::arch::Architecture;
use super::layer::{Embedding, Layer, LayerOps, Pass, Scratch, Sequential};
use super::layout::ParamLayout;
use super::loss::{Loss, Targets};
use crate::data::Dataset;
use crate::device::{Backend, CpuBackend};
use crate::{Error, Real, Result};

/// An architecture with its layers, parameter layout and loss.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub arch: Architecture,
    pub layers: Vec<Layer>,
    pub layout: ParamLayout,
    pub loss: Loss,
}

/// Buffers for one batch size in backend `B`'s memory: every layer's output and its cotangent,
/// the indices layers keep (max-pool winners) and the convolution scratch, which carries the
/// backend. Reused across steps so that a training step allocates nothing.
#[derive(Clone, Debug)]
pub struct Workspace<T: Real, B: Backend = CpuBackend> {
    pub(crate) batch: usize,
    /// Layer i's output, `batch × out_features`.
    pub(crate) acts: Vec<B::Buffer<T>>,
    /// ∂L/∂(layer i's output) after a backward pass, except for an activation whose backward the
    /// layer after it absorbed ([`LayerOps::backward_gated`]): its buffer is not written (no pass
    /// reads it: such an activation's other passes read only its output).
    pub(crate) deltas: Vec<B::Buffer<T>>,
    pub(crate) indices: Vec<B::Buffer<u32>>,
    /// The values layers keep (a residual block's inner activations).
    pub(crate) states: Vec<B::Buffer<T>>,
    pub(crate) scratch: Scratch<T, B>,
}

impl<T: Real> Default for Workspace<T> {
    fn default() -> Self {
        Workspace::empty(CpuBackend)
    }
}

impl<T: Real, B: Backend> Workspace<T, B> {
    /// A workspace on `backend` for no batch yet (sized by the first pass).
    pub fn empty(backend: B) -> Self {
        Workspace {
            batch: 0,
            acts: Vec::new(),
            deltas: Vec::new(),
            indices: Vec::new(),
            states: Vec::new(),
            scratch: Scratch::on(backend, &[], 0, false),
        }
    }

    /// The backend it lives on.
    pub fn backend(&self) -> &B {
        &self.scratch.backend
    }
}

/// Mean loss and accuracy over a data set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    /// The fraction of samples whose arg-max output is the label; `None` for float targets
    /// (regression), where accuracy is not defined.
    pub accuracy: Option<f64>,
    pub samples: usize,
}

impl Network {
    /// Builds the layers and layout of `arch`. Sizes from a checkpoint or a flag are checked first
    /// with [`Network::try_new`] (or [`Architecture::size`]): this allocates in proportion to them.
    pub fn new(arch: Architecture) -> Self {
        let (layers, layout) = arch.build();
        Network {
            arch,
            layers,
            layout,
            loss: Loss::SoftmaxCrossEntropy,
        }
    }

    /// A network of any layers, from a definition written against [`Sequential`] (the tensor names
    /// follow its modules); `arch` is the description that records and checkpoints carry.
    pub fn from_definition(arch: Architecture, define: impl FnOnce(&mut Sequential<'_>)) -> Self {
        let (layers, layout) = super::layer::build(define);
        Network {
            arch,
            layers,
            layout,
            loss: Loss::SoftmaxCrossEntropy,
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

    /// The outputs of the last layer (the logits' width).
    pub fn classes(&self) -> usize {
        self.layers.last().map_or(0, |l| l.out_features())
    }

    /// The positions of a per-position output `[positions, classes]` (1 for a flat output): the
    /// cross-entropy is then averaged over them ([`Targets::Tokens`]).
    pub fn positions(&self) -> usize {
        self.arch.positions()
    }

    /// How the loss splits a sample's outputs: (rows per sample, outputs per row). Cross-entropy
    /// takes one softmax per position, (T, C) for a `[T, C]` output; the mean squared error is
    /// the mean over all of a sample's k outputs whatever their shape, (1, k). The loss's gradient
    /// and R-operator act row by row with `scale / rows` (the per-sample loss is the mean of its
    /// rows' losses).
    pub fn loss_rows(&self) -> (usize, usize) {
        match self.loss {
            Loss::SoftmaxCrossEntropy => {
                let t = self.positions().max(1);
                (t, self.classes() / t)
            }
            Loss::MeanSquaredError => (1, self.classes()),
        }
    }

    /// The features per sample the first layer takes.
    pub fn input_features(&self) -> usize {
        self.layers.first().map_or(0, |l| l.in_features())
    }

    /// Why the exact trace tr(H) = tr(G) does not hold for this network, if it does not: a layer
    /// that is not piecewise linear has a second-derivative term on the Hessian's diagonal.
    /// The layer is the top-level one; its kind is the innermost curved module's (a residual
    /// block names the layer inside it).
    pub fn not_piecewise_linear(&self) -> Option<(usize, &'static str)> {
        let i = self.layers.iter().position(|l| !l.piecewise_linear())?;
        let kind = match &self.layers[i] {
            Layer::Residual(r) => r
                .first_not_piecewise_linear()
                .map_or("Residual", |(_, k)| k),
            l => l.kind(),
        };
        Some((i, kind))
    }

    /// Checks that a data set fits the network: token ids only for a model that starts with an
    /// embedding, as many features per sample as it takes, and no label past its outputs.
    ///
    /// # Errors
    /// [`Error::Data`] naming the data folder, its shape and the model's.
    pub fn check_input(&self, data: &Dataset) -> Result<()> {
        if data.token_ids() && !matches!(self.layers.first(), Some(Layer::Embedding(_))) {
            return Err(Error::data(
                &data.folder,
                format!(
                    "`x` holds integer token ids, which only a model whose first layer is an `embedding` reads; the model {} starts with {} and would read the ids as numbers",
                    self.arch.name(),
                    self.layers.first().map_or("no layer", |l| l.kind())
                ),
            ));
        }
        if let Some(shape) = self.arch.input_shape() {
            if shape != data.sample_shape() {
                let show = |s: [usize; 3]| format!("{}×{}×{}", s[0], s[1], s[2]);
                return Err(Error::data(
                    &data.folder,
                    format!(
                        "{} images are {} but the model {} expects {}",
                        data.name(),
                        show(data.sample_shape()),
                        self.arch.name(),
                        show(shape)
                    ),
                ));
            }
        }
        if data.features() != self.input_features() {
            return Err(Error::data(
                &data.folder,
                format!(
                    "{} images have {}×{} = {} pixels but the model {} expects {} inputs",
                    data.name(),
                    data.shape[1],
                    data.shape[2],
                    data.features(),
                    self.arch.name(),
                    self.input_features()
                ),
            ));
        }
        if let Some(Layer::Embedding(e)) = self.layers.first() {
            // The ids as the passes see them, in both precisions: a pass never meets a bad one.
            check_token_ids::<f32>(e, data)?;
            check_token_ids::<f64>(e, data)?;
        }
        let refuse = |msg: String| Err(Error::data(&data.folder, msg));
        match (self.loss.takes_float_targets(), data.float_targets()) {
            (false, true) => {
                return refuse(format!(
                    "the targets `y` are floats (regression) but the loss is {}, which takes integer labels; use --loss mse",
                    self.loss.name()
                ))
            }
            (true, false) => {
                return refuse(format!(
                    "the targets `y` are integer labels but the loss is {}, which takes float targets; use --loss cross_entropy",
                    self.loss.name()
                ))
            }
            (true, true) if data.classes != self.classes() => {
                let t = self.positions();
                let per_position = if t > 1 {
                    format!(
                        " (per position [{t}, {}]: targets [n, {t}, {}] or [n, {}])",
                        self.classes() / t,
                        self.classes() / t,
                        self.classes()
                    )
                } else {
                    String::new()
                };
                return refuse(format!(
                    "the targets `y` have width {} but the model {} has {} outputs{per_position}",
                    data.classes,
                    self.arch.name(),
                    self.classes()
                ));
            }
            (true, true) => {}
            (false, false) => self.check_label_positions(data)?,
        }
        match (self.loss.takes_float_targets(), data.float_targets()) {
            // A label at or past the model's outputs would index past its logits.
            (false, false) if data.label_positions() > 1 && self.loss_rows().1 < data.classes => {
                let c = self.loss_rows().1;
                let t = data.label_positions();
                let name = self.arch.name();
                // The classes count both splits' labels: the culprit may be in the other split.
                return refuse(
                    match data.labels_flat().iter().position(|&l| l as usize >= c) {
                        Some(i) => format!(
                            "tensor `{}`: sample {} position {} is label {}, but the model {name} has {c} classes per position (its output is [{t}, {c}])",
                            data.target_tensor_name(),
                            i / t,
                            i % t,
                            data.labels_flat()[i]
                        ),
                        None => format!(
                            "{} has {} classes per position (train and test labels together) but the model {name} has {c} (its output is [{t}, {c}])",
                            data.name(),
                            data.classes
                        ),
                    },
                );
            }
            (false, false) if self.classes() < data.classes => {
                return refuse(format!(
                    "{} has {} classes but the model {} has {} outputs",
                    data.name(),
                    data.classes,
                    self.arch.name(),
                    self.classes()
                ))
            }
            _ => {}
        }
        Ok(())
    }

    /// Labels per sample against the model's output: one label per sample for a flat output, one
    /// per position (`y` `[n, T]`) for a per-position output `[T, C]`.
    fn check_label_positions(&self, data: &Dataset) -> Result<()> {
        let (t, c) = self.loss_rows();
        let have = data.label_positions();
        if have == t {
            return Ok(());
        }
        let y = data.target_tensor_name();
        let msg = if t == 1 {
            format!(
                "the targets `{y}` are labels at {have} positions ([n, {have}]) but the model {} has a flat output [{c}] (one label per sample, [n]); labels per position need a model whose output is [positions, classes] (no `last`)",
                self.arch.name()
            )
        } else if have == 1 {
            format!(
                "the targets `{y}` are one label per sample ([n]) but the model {} gives an output per position [{t}, {c}], whose cross-entropy is averaged over positions and takes labels [n, {t}] (or end the model with `last` for one label per sample)",
                self.arch.name()
            )
        } else {
            format!(
                "the targets `{y}` are labels at {have} positions ([n, {have}]) but the model {} gives an output per position [{t}, {c}], which takes labels [n, {t}]",
                self.arch.name()
            )
        };
        Err(Error::data(&data.folder, msg))
    }

    /// A workspace on the CPU sized for `batch` samples.
    pub fn workspace<T: Real>(&self, batch: usize) -> Workspace<T> {
        self.workspace_on(CpuBackend, batch)
    }

    /// A workspace on `backend` sized for `batch` samples.
    pub fn workspace_on<B: Backend, T: Real>(&self, backend: B, batch: usize) -> Workspace<T, B> {
        let mut ws = Workspace::empty(backend);
        self.ensure(&mut ws, batch);
        ws
    }

    fn ensure<B: Backend, T: Real>(&self, ws: &mut Workspace<T, B>, batch: usize) {
        if ws.batch >= batch && ws.acts.len() == self.layers.len() {
            return;
        }
        let be = ws.scratch.backend.clone();
        ws.batch = batch;
        ws.acts = self
            .layers
            .iter()
            .map(|l| be.zeros(batch * l.out_features()))
            .collect();
        ws.deltas = ws.acts.clone();
        ws.indices = self
            .layers
            .iter()
            .map(|l| be.zeros(l.index_len(batch)))
            .collect();
        ws.states = self
            .layers
            .iter()
            .map(|l| be.zeros(l.state_len(batch)))
            .collect();
        ws.scratch = Scratch::on(be, &self.layers, batch, false);
    }

    /// Runs the forward pass on `batch` samples `x` (`batch × input_features`, row-major) and returns
    /// the logits (`batch × classes`), which stay in the workspace with every intermediate output.
    /// Host slices on the CPU: [`Network::forward_on`] with [`CpuBackend`].
    pub fn forward<'w, T: Real>(
        &self,
        params: &[T],
        x: &[T],
        batch: usize,
        ws: &'w mut Workspace<T>,
    ) -> &'w [T] {
        self.forward_on::<CpuBackend, T>(params, x, batch, ws)
    }

    /// [`Network::forward`] on any backend: parameters, input and workspace in its memory.
    pub fn forward_on<'w, B: Backend, T: Real>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        batch: usize,
        ws: &'w mut Workspace<T, B>,
    ) -> B::View<'w, T> {
        self.ensure(ws, batch);
        let mut i = 0;
        while i < self.layers.len() {
            // A run of sample-wise layers (a convolution, its activation, a pooling, …) goes one
            // sample at a time, so that each sample's intermediate outputs stay in cache; the same
            // arithmetic as layer by layer over the batch.
            let run = self.layers[i..]
                .iter()
                .take_while(|l| l.sample_wise())
                .count();
            if run >= 2 {
                for n in 0..batch {
                    for k in i..i + run {
                        self.forward_layer(params, x, k, n, 1, ws);
                    }
                }
                i += run;
            } else {
                self.forward_layer(params, x, i, 0, batch, ws);
                i += 1;
            }
        }
        let last = self.layers.len() - 1;
        B::slice(B::view(&ws.acts[last]), 0..batch * self.classes())
    }

    /// Layer `i`'s forward pass on samples `first..first + count` of the batch.
    fn forward_layer<B: Backend, T: Real>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        i: usize,
        first: usize,
        count: usize,
        ws: &mut Workspace<T, B>,
    ) {
        let layer = &self.layers[i];
        let (fin, fout, nidx, nstate) = (
            layer.in_features(),
            layer.out_features(),
            layer.index_len(1),
            layer.state_len(1),
        );
        let (before, rest) = ws.acts.split_at_mut(i);
        let input = if i == 0 {
            B::shorten(x)
        } else {
            B::view(&before[i - 1])
        };
        layer.forward(
            params,
            B::slice(input, first * fin..(first + count) * fin),
            count,
            B::slice_mut(
                B::view_mut(&mut rest[0]),
                first * fout..(first + count) * fout,
            ),
            B::slice_mut(
                B::view_mut(&mut ws.indices[i]),
                first * nidx..(first + count) * nidx,
            ),
            B::slice_mut(
                B::view_mut(&mut ws.states[i]),
                first * nstate..(first + count) * nstate,
            ),
            &mut ws.scratch,
        );
    }

    /// Mean loss L over the batch and its exact gradient ∂L/∂θ (written into `grad`, length P), by
    /// reverse-mode differentiation through every layer. The input gradient of the first layer is
    /// not computed. Host slices on the CPU: [`Network::loss_and_gradient_on`] with [`CpuBackend`].
    ///
    /// `targets`: the batch's labels (`&[usize]` converts) or float targets ([`Targets`]); the
    /// batch size is their number of samples.
    pub fn loss_and_gradient<'a, T: Real>(
        &self,
        params: &[T],
        x: &[T],
        targets: impl Into<Targets<'a, T>>,
        grad: &mut [T],
        ws: &mut Workspace<T>,
    ) -> f64 {
        self.loss_and_gradient_on::<CpuBackend, T>(params, x, targets, grad, ws)
    }

    /// [`Network::loss_and_gradient`] on any backend (the targets stay on the host).
    pub fn loss_and_gradient_on<'a, B: Backend, T: Real>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        targets: impl Into<Targets<'a, T>>,
        grad: B::ViewMut<'_, T>,
        ws: &mut Workspace<T, B>,
    ) -> f64 {
        let targets = targets.into();
        let loss = self.forward_loss_cotangent(params, x, targets, ws);
        self.backward(params, x, targets.len(), Some(grad), ws);
        loss
    }

    /// Forward pass and the loss's cotangent ∂L/∂logits in the last layer's delta buffer; returns
    /// the mean loss.
    pub(crate) fn forward_loss_cotangent<'a, B: Backend, T: Real>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        targets: impl Into<Targets<'a, T>>,
        ws: &mut Workspace<T, B>,
    ) -> f64 {
        let targets = targets.into();
        self.forward_on(params, x, targets.len(), ws);
        self.loss_cotangent(targets, ws)
    }

    /// The loss of the logits that the last [`Network::forward_on`] left in `ws` (of
    /// `targets.len()` samples) and its cotangent ∂L/∂logits in the last layer's delta buffer;
    /// returns the mean loss.
    pub(crate) fn loss_cotangent<'a, B: Backend, T: Real>(
        &self,
        targets: Targets<'a, T>,
        ws: &mut Workspace<T, B>,
    ) -> f64 {
        let batch = targets.len();
        let last = self.layers.len() - 1;
        let classes = self.classes();
        let scale = T::one() / T::of_usize(batch);
        let (loss_sum, _) = self.loss.evaluate_on(
            &ws.scratch.backend,
            B::slice(B::view(&ws.acts[last]), 0..batch * classes),
            targets,
            classes,
            scale,
            Some(B::slice_mut(
                B::view_mut(&mut ws.deltas[last]),
                0..batch * classes,
            )),
        );
        loss_sum / batch as f64
    }

    /// Backpropagates the cotangent already in the last layer's delta buffer into every layer's
    /// delta buffer and, when `grad` is given, the parameter gradient.
    ///
    /// Where an activation with an [`LayerOps::output_gate`] (ReLU) feeds a layer that can apply
    /// it ([`LayerOps::backward_gated`]: a direct convolution, a max-pool), that layer writes the
    /// activation's input gradient itself and the activation's own pass is skipped: the same
    /// values, one pass over a gradient fewer.
    pub(crate) fn backward<B: Backend, T: Real>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        batch: usize,
        grad: Option<B::ViewMut<'_, T>>,
        ws: &mut Workspace<T, B>,
    ) {
        self.backward_fused(params, x, batch, grad, ws, true);
    }

    /// [`Network::backward`], with the fusion of gating activations into the layer after them
    /// (`fuse`) or without (each layer's own pass: the tests' reference).
    pub(crate) fn backward_fused<B: Backend, T: Real>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        batch: usize,
        mut grad: Option<B::ViewMut<'_, T>>,
        ws: &mut Workspace<T, B>,
        fuse: bool,
    ) {
        let mut i = self.layers.len();
        while i > 0 {
            i -= 1;
            let pass = Pass::<T, B> {
                params: B::shorten(params),
                x: if i == 0 {
                    B::shorten(x)
                } else {
                    B::view(&ws.acts[i - 1])
                },
                y: B::view(&ws.acts[i]),
                batch,
                indices: B::view(&ws.indices[i]),
                state: B::view(&ws.states[i]),
            };
            // Layer i takes the gate of activation i − 1 into the gradient of that activation's
            // input (not for an activation that is the first layer: its input gradient is not
            // computed).
            if fuse && i >= 2 && self.layers[i - 1].output_gate() {
                let (dbefore, drest) = ws.deltas.split_at_mut(i);
                let done = self.layers[i].backward_gated(
                    &pass,
                    B::view(&drest[0]),
                    grad.as_mut().map(|g| B::reborrow(g)),
                    B::view_mut(&mut dbefore[i - 2]),
                    &mut ws.scratch,
                );
                if done {
                    i -= 1;
                    continue;
                }
            }
            let (dbefore, drest) = ws.deltas.split_at_mut(i);
            let dx = dbefore.last_mut().map(|d| B::view_mut(d));
            self.layers[i].backward(
                &pass,
                B::view(&drest[0]),
                grad.as_mut().map(|g| B::reborrow(g)),
                dx,
                &mut ws.scratch,
            );
        }
    }

    /// Sum of per-sample losses and number correct (0 for float targets) on a batch (no gradient).
    pub fn loss_sum<'a, T: Real>(
        &self,
        params: &[T],
        x: &[T],
        targets: impl Into<Targets<'a, T>>,
        ws: &mut Workspace<T>,
    ) -> (f64, usize) {
        self.loss_sum_on::<CpuBackend, T>(params, x, targets, ws)
    }

    /// [`Network::loss_sum`] on any backend (the targets stay on the host).
    pub fn loss_sum_on<'a, B: Backend, T: Real>(
        &self,
        params: B::View<'_, T>,
        x: B::View<'_, T>,
        targets: impl Into<Targets<'a, T>>,
        ws: &mut Workspace<T, B>,
    ) -> (f64, usize) {
        let targets = targets.into();
        let batch = targets.len();
        let be = ws.backend().clone();
        let logits = self.forward_on(params, x, batch, ws);
        self.loss
            .evaluate_on(&be, logits, targets, self.classes(), T::one(), None)
    }

    /// Mean loss and accuracy over a whole data set in file order, in batches of `batch`.
    pub fn evaluate<T: Real>(
        &self,
        params: &[T],
        data: &Dataset,
        batch: usize,
    ) -> Result<Evaluation> {
        self.check_input(data)?;
        let norm = data.normaliser::<T>();
        let mut ws = self.workspace::<T>(batch);
        let f = data.features();
        let mut x = vec![T::zero(); batch * f];
        let mut y = data.target_buffer::<T>(batch);
        let (mut loss, mut correct) = (0.0, 0);
        let mut start = 0;
        while start < data.len() {
            let count = batch.min(data.len() - start);
            data.gather_range_batch(&norm, start, count, &mut x, &mut y)?;
            let (l, c) = self.loss_sum(params, &x[..count * f], y.first(count), &mut ws);
            loss += l;
            correct += c;
            start += count;
        }
        let n = data.len().max(1) as f64;
        Ok(Evaluation {
            loss: loss / n,
            // Per token for labels at every position.
            accuracy: (!data.float_targets())
                .then(|| correct as f64 / (n * data.label_positions() as f64)),
            samples: data.len(),
        })
    }

    /// [`Network::evaluate`] on backend `be`: θ is uploaded once, each batch gathered on the host
    /// and written into the backend's memory.
    ///
    /// # Errors
    /// As [`Network::evaluate`].
    pub fn evaluate_on<B: Backend, T: Real>(
        &self,
        be: &B,
        params: &[T],
        data: &Dataset,
        batch: usize,
    ) -> Result<Evaluation> {
        self.check_input(data)?;
        let norm = data.normaliser::<T>();
        let mut ws = self.workspace_on::<B, T>(be.clone(), batch);
        let theta = be.upload(params);
        let f = data.features();
        let mut x = vec![T::zero(); batch * f];
        let mut xb = be.zeros::<T>(batch * f);
        let mut y = data.target_buffer::<T>(batch);
        let (mut loss, mut correct) = (0.0, 0);
        let mut start = 0;
        while start < data.len() {
            let count = batch.min(data.len() - start);
            data.gather_range_batch(&norm, start, count, &mut x, &mut y)?;
            let xv = B::slice_mut(B::view_mut(&mut xb), 0..count * f);
            be.write(&x[..count * f], xv);
            let (l, c) = self.loss_sum_on(
                B::view(&theta),
                B::slice(B::view(&xb), 0..count * f),
                y.first(count),
                &mut ws,
            );
            loss += l;
            correct += c;
            start += count;
        }
        let n = data.len().max(1) as f64;
        Ok(Evaluation {
            loss: loss / n,
            // Per token for labels at every position.
            accuracy: (!data.float_targets())
                .then(|| correct as f64 / (n * data.label_positions() as f64)),
            samples: data.len(),
        })
    }
}

/// Checks that every input of `data`, normalised in `T` as batches are, is a token id of the
/// embedding `e` (an integer in 0..num).
///
/// # Errors
/// [`Error::Data`] naming the data, the first bad sample and position, and the layer.
fn check_token_ids<T: Real>(e: &Embedding, data: &Dataset) -> Result<()> {
    let (f, len) = (data.features(), data.len());
    let chunk = len.clamp(1, 1024);
    let norm = data.normaliser::<T>();
    let mut x = vec![T::zero(); chunk * f];
    let mut y = data.target_buffer::<T>(chunk);
    let mut start = 0;
    while start < len {
        let count = chunk.min(len - start);
        data.gather_range_batch(&norm, start, count, &mut x, &mut y)?;
        if let Some((j, v)) = e.first_bad_id(&x[..count * f]) {
            return Err(Error::data(
                &data.folder,
                format!(
                    "sample {} position {} is {v}, but the model's first layer \
                     (Embedding({}, {})) takes token ids, integers in 0..{} (stored as floats in x)",
                    start + j / f,
                    j % f,
                    e.num,
                    e.dim,
                    e.num
                ),
            ));
        }
        start += count;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DatasetKind, Split};

    /// A convolutional model takes only images of the shape it was built for; an MLP any of its
    /// number of features.
    #[test]
    fn check_input_compares_the_sample_shape() {
        let data = |rows, cols| {
            Dataset::from_parts(
                DatasetKind::Mnist,
                Split::Train,
                vec![0; 2 * rows * cols],
                vec![0, 1],
                rows,
                cols,
            )
        };
        let lenet = Network::new(Architecture::lenet(0).for_data([1, 16, 49], 10));
        assert!(lenet.check_input(&data(16, 49)).is_ok());
        let e = lenet.check_input(&data(28, 28)).unwrap_err().to_string();
        assert!(
            e.contains("images are 1×28×28 but the model lenet_k0 expects 1×16×49"),
            "{e}"
        );
        let mlp = Network::new(Architecture::mlp(vec![4], super::super::Activation::Relu));
        assert!(mlp.check_input(&data(28, 28)).is_ok());
        assert!(mlp.check_input(&data(49, 16)).is_ok());
        assert!(mlp.check_input(&data(16, 49)).is_ok());
        let e = mlp.check_input(&data(20, 20)).unwrap_err().to_string();
        assert!(
            e.contains("400 pixels but the model mlp_1x4 expects 784 inputs"),
            "{e}"
        );
    }

    /// A model that starts with an embedding takes only token ids: integers in 0..num after the
    /// data's normalisation, refused naming the sample, the position and the layer.
    #[test]
    fn check_input_refuses_what_is_not_a_token_id() {
        use crate::data::{DataFile, Inputs, Source, TargetData};
        let spec = serde_json::json!({"input": [3],
            "layers": [{"type": "embedding", "num": 5, "dim": 4}, {"type": "last"},
                       {"type": "linear", "out": 5}]});
        let net = Network::new(Architecture::Spec(Box::new(
            super::super::NetSpec::from_json("t", &spec).unwrap(),
        )));
        let data = |x: Vec<f64>, norm: (f64, f64)| Dataset {
            source: Source::File(DataFile {
                path: "toks.safetensors".into(),
                fingerprint: "0".repeat(16),
                normalize: None,
                token_ids: false,
            }),
            split: Split::Train,
            folder: "toks.safetensors".into(),
            inputs: Inputs::Floats(x),
            targets: TargetData::Labels(vec![0, 1]),
            shape: [1, 1, 3],
            classes: 5,
            normalisation: vec![norm],
        };
        assert!(net
            .check_input(&data(vec![0.0, 4.0, 2.0, 1.0, 3.0, 0.0], (0.0, 1.0)))
            .is_ok());
        for (x, norm, want) in [
            (
                vec![0.0, 4.0, 2.0, 1.0, 3.0, 5.0],
                (0.0, 1.0),
                "sample 1 position 2 is 5, but the model's first layer (Embedding(5, 4)) takes \
                 token ids, integers in 0..5",
            ),
            (
                vec![0.0, 2.5, 2.0, 1.0, 3.0, 0.0],
                (0.0, 1.0),
                "sample 0 position 1 is 2.5",
            ),
            (
                vec![0.0, 4.0, -1.0, 1.0, 3.0, 0.0],
                (0.0, 1.0),
                "sample 0 position 2 is -1",
            ),
            // Ids are checked as the passes see them: normalised.
            (
                vec![1.0, 0.0, 2.0, 1.0, 3.0, 1.0],
                (1.0, 1.0),
                "sample 0 position 1 is -1",
            ),
            (
                vec![0.0, 3.0, 2.0, 2.0, 4.0, 0.0],
                (0.0, 2.0),
                "sample 0 position 1 is 1.5",
            ),
        ] {
            let e = net.check_input(&data(x, norm)).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    /// A LeNet built for odd-sized two-channel images (pooling floors, dropping the last row and
    /// column) has the gradient of its loss: central differences in f64 at 40 coordinates.
    #[test]
    fn lenet_for_odd_images_has_the_gradient_of_its_loss() {
        let net = Network::new(Architecture::lenet(1).for_data([2, 17, 19], 3));
        let mut rng = crate::rng::stream(5, crate::rng::Purpose::Init, 0);
        let params: Vec<f64> = (0..net.num_params())
            .map(|_| rng.uniform_in(-0.3, 0.3))
            .collect();
        let batch = 2;
        let x: Vec<f64> = (0..batch * net.input_features())
            .map(|_| rng.uniform_in(-1.0, 1.0))
            .collect();
        let labels = [0, 2];
        let mut ws = net.workspace(batch);
        let mut grad = vec![0.0; params.len()];
        net.loss_and_gradient(&params, &x, &labels, &mut grad, &mut ws);
        let h = 1e-6;
        for k in 0..40 {
            let i = (k * 7919) % params.len();
            let mut p = params.clone();
            let mut g = vec![0.0; params.len()];
            p[i] += h;
            let up = net.loss_and_gradient(&p, &x, &labels, &mut g, &mut ws);
            p[i] -= 2.0 * h;
            let down = net.loss_and_gradient(&p, &x, &labels, &mut g, &mut ws);
            let fd = (up - down) / (2.0 * h);
            assert!(
                (fd - grad[i]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{}: analytic {} vs central difference {fd}",
                net.layout
                    .tensors
                    .iter()
                    .find(|t| t.range().contains(&i))
                    .unwrap()
                    .name,
                grad[i]
            );
        }
    }
}
