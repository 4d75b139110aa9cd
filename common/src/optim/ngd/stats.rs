//! What the online NGD counts over an epoch for its records: NaN fallbacks, the norm ratio before the
//! rescaling, and per tensor the cosine with the gradient and the rank on the floor.

/// Running statistics of one tensor over an epoch.
#[derive(Clone, Debug, Default)]
pub(super) struct TensorStats {
    pub(super) cosine_sum: f64,
    pub(super) cosine_count: u64,
    pub(super) floor_sum: f64,
    pub(super) floor_count: u64,
}

#[derive(Clone, Debug, Default)]
pub(super) struct EpochStats {
    pub(super) nan_fallbacks: u64,
    pub(super) ratio_sum: f64,
    pub(super) ratio_count: u64,
    pub(super) tensors: Vec<TensorStats>,
}

impl EpochStats {
    pub(super) fn new(tensors: usize) -> Self {
        EpochStats {
            tensors: vec![TensorStats::default(); tensors],
            ..Default::default()
        }
    }
}
