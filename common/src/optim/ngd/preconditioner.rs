//! The preconditioner update and the direction: each tensor's per-axis preconditioners
//! ([`AxisPreconditioner`]) applied in axis order, for every tensor of a model, and their state in the
//! optimiser sidecar.

use super::super::ngd_axis::{AxisOutcome, AxisPreconditioner, NgdReal};
use super::super::sgd::download;
use super::f64_bits::{decode_f64, encode_f64};
use super::settings::NgdConfig;
use super::stats::EpochStats;
use crate::device::{Backend, CpuBackend};
use crate::model::ParamLayout;
use crate::{Error, Real, Result};
use std::collections::BTreeMap;

/// The preconditioners of one tensor: one per axis of size > 1, in axis order, with the tensor's
/// working copy in `T` and the gathered view of a middle axis, all on backend `B`.
#[derive(Clone, Debug)]
pub struct TensorPreconditioner<T: NgdReal, B: Backend = CpuBackend> {
    be: B,
    pub shape: Vec<usize>,
    /// (axis, preconditioner) for the axes with size > 1.
    pub axes: Vec<(usize, AxisPreconditioner<T, B>)>,
    pub(super) cur: B::Buffer<T>,
    pub(super) view: B::Buffer<T>,
}

impl<T: NgdReal> TensorPreconditioner<T> {
    /// On the CPU ([`TensorPreconditioner::new_on`]).
    pub fn new(shape: &[usize], cfg: &NgdConfig) -> Self {
        Self::new_on(CpuBackend, shape, cfg)
    }
}

impl<T: NgdReal, B: Backend> TensorPreconditioner<T, B> {
    /// The preconditioners of a tensor of `shape`, on backend `be`.
    pub fn new_on(be: B, shape: &[usize], cfg: &NgdConfig) -> Self {
        let numel: usize = shape.iter().product();
        let axes = shape
            .iter()
            .enumerate()
            .filter(|(_, &d)| d > 1)
            .map(|(a, &d)| {
                let prefix: usize = shape[..a].iter().product();
                let post: usize = shape[a + 1..].iter().product();
                // The first axis of a tensor is X transposed in place (no copy) unless it is also
                // the last; middle axes are gathered into a scratch view.
                let transposed = prefix == 1 && post > 1;
                (
                    a,
                    AxisPreconditioner::new_on(
                        be.clone(),
                        numel / d,
                        d,
                        cfg.rank_for(d),
                        transposed,
                        cfg.axis_settings(),
                    ),
                )
            })
            .collect();
        TensorPreconditioner {
            shape: shape.to_vec(),
            axes,
            cur: be.zeros(numel),
            view: be.zeros(numel),
            be,
        }
    }

    /// Preconditions `g` (the tensor, row-major in its shape) in place through every axis; `on_axis`
    /// sees each axis's outcome.
    pub fn precondition(
        &mut self,
        mut g: B::ViewMut<'_, T>,
        mut on_axis: impl FnMut(usize, AxisOutcome),
    ) {
        for (axis, pre) in self.axes.iter_mut() {
            let a = *axis;
            let dim = self.shape[a];
            let post: usize = self.shape[a + 1..].iter().product();
            let prefix: usize = self.shape[..a].iter().product();
            // X[(p, q), d] = g[p, d, q]: the axis as columns, the rest as rows. The last axis is
            // g itself, the first (prefix 1) is gᵀ, which the preconditioner reads transposed; a
            // middle axis is gathered into the scratch view (a permutation of g's axes) and
            // scattered back.
            let gathered = post != 1 && prefix != 1;
            let outcome = if !gathered {
                pre.precondition(B::reborrow(&mut g))
            } else {
                let view = B::view_mut(&mut self.view);
                self.be
                    .permute(B::freeze(&g), &[prefix, dim, post], &[0, 2, 1], view);
                let outcome = pre.precondition(B::view_mut(&mut self.view));
                self.be.permute(
                    B::view(&self.view),
                    &[prefix, post, dim],
                    &[0, 2, 1],
                    B::reborrow(&mut g),
                );
                outcome
            };
            on_axis(a, outcome);
        }
    }
}

/// All tensors of a model, in one element type.
#[derive(Clone, Debug)]
pub(super) struct Preconditioners<T: NgdReal, B: Backend = CpuBackend> {
    be: B,
    pub(super) tensors: Vec<TensorPreconditioner<T, B>>,
}

impl<T: NgdReal> Preconditioners<T> {
    /// On the CPU (the `--ngd-shadow-f64` comparison's, which runs on the host).
    pub(super) fn new(layout: &ParamLayout, cfg: &NgdConfig) -> Self {
        Self::new_on(CpuBackend, layout, cfg)
    }
}

impl<T: NgdReal, B: Backend> Preconditioners<T, B> {
    pub(super) fn new_on(be: B, layout: &ParamLayout, cfg: &NgdConfig) -> Self {
        Preconditioners {
            tensors: layout
                .tensors
                .iter()
                .map(|t| TensorPreconditioner::new_on(be.clone(), &t.shape, cfg))
                .collect(),
            be,
        }
    }

    /// Replaces each tensor's block of `grad` by its preconditioned direction (converted to `T`,
    /// preconditioned, rounded back to f32), counting into `stats`. Returns (Σ g², Σ d²) over
    /// the whole of `grad` before and after, each summed in f64 left to right (the bits of
    /// [`Backend::dot`]; the tensors are consecutive blocks of it), from the pass that hands each
    /// direction back.
    pub(super) fn precondition(
        &mut self,
        layout: &ParamLayout,
        mut grad: B::ViewMut<'_, f32>,
        stats: &mut EpochStats,
    ) -> [f64; 2] {
        let mut totals = [0.0; 2];
        let be = self.be.clone();
        for (ti, (spec, tp)) in layout
            .tensors
            .iter()
            .zip(self.tensors.iter_mut())
            .enumerate()
        {
            let mut g = B::slice_mut(B::reborrow(&mut grad), spec.range());
            let mut cur = std::mem::replace(&mut tp.cur, be.zeros(0));
            be.convert(B::freeze(&g), B::view_mut(&mut cur));
            let (mut fallbacks, mut ratio_sum, mut ratio_count) = (0u64, 0.0f64, 0u64);
            let (mut floor_sum, mut floor_count) = (0.0f64, 0u64);
            tp.precondition(B::view_mut(&mut cur), |_, o| {
                if o.nan_fallback {
                    fallbacks += 1;
                } else {
                    ratio_sum += o.norm_ratio;
                    ratio_count += 1;
                }
                if let Some(f) = o.floor_fraction {
                    floor_sum += f;
                    floor_count += 1;
                }
            });
            stats.nan_fallbacks += fallbacks;
            stats.ratio_sum += ratio_sum;
            stats.ratio_count += ratio_count;
            let ts = &mut stats.tensors[ti];
            ts.floor_sum += floor_sum;
            ts.floor_count += floor_count;
            // The cosine's sums and g ← cur rounded to f32, in one pass.
            let (dot, nd, ng) =
                be.convert_dot_norms(B::view(&cur), B::reborrow(&mut g), &mut totals);
            if nd > 0.0 && ng > 0.0 {
                ts.cosine_sum += dot / (nd * ng).sqrt();
                ts.cosine_count += 1;
            }
            tp.cur = cur;
        }
        totals
    }

    /// The state under `<prefix>.<tensor>.axis<a>.<t|rho|d|W>` (f64 values stored bit-exactly).
    pub(super) fn state(
        &self,
        layout: &ParamLayout,
        prefix: &str,
        out: &mut BTreeMap<String, Vec<f32>>,
    ) {
        for (spec, tp) in layout.tensors.iter().zip(&self.tensors) {
            for (a, p) in &tp.axes {
                let key = |what: &str| format!("{prefix}.{}.axis{a}.{what}", spec.name);
                out.insert(key("t"), encode_f64(&[p.t as f64]));
                out.insert(key("rho"), encode_f64(&[p.rho]));
                out.insert(key("d"), encode_f64(&to_f64(&p.d)));
                out.insert(key("W"), encode_f64(&to_f64(&download(&self.be, &p.w))));
            }
        }
    }

    /// Restores [`Preconditioners::state`]; `missing` says what a missing key means.
    pub(super) fn load_state(
        &mut self,
        layout: &ParamLayout,
        prefix: &str,
        missing: &str,
        st: &BTreeMap<String, Vec<f32>>,
    ) -> Result<()> {
        for (spec, tp) in layout.tensors.iter().zip(self.tensors.iter_mut()) {
            for (a, p) in tp.axes.iter_mut() {
                let key = |what: &str| format!("{prefix}.{}.axis{a}.{what}", spec.name);
                let get = |what: &str, len: usize| -> Result<Vec<f64>> {
                    let k = key(what);
                    let v = st.get(&k).ok_or_else(|| {
                        Error::invalid(format!("optimiser state lacks {k} ({missing})"))
                    })?;
                    let v = decode_f64(v);
                    if v.len() != len {
                        return Err(Error::invalid(format!(
                            "optimiser state {k} has {} values, expected {len} (different --ngd-rank?)",
                            v.len()
                        )));
                    }
                    Ok(v)
                };
                p.t = get("t", 1)?[0] as u64;
                p.rho = get("rho", 1)?[0];
                for (dst, v) in p.d.iter_mut().zip(get("d", p.rank)?) {
                    *dst = T::of_f64(v);
                }
                let w: Vec<T> = get("W", p.rank * p.dim)?
                    .into_iter()
                    .map(T::of_f64)
                    .collect();
                self.be.write(&w, B::view_mut(&mut p.w));
            }
        }
        Ok(())
    }
}

pub(super) fn to_f64<T: Real>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.as_f64()).collect()
}
