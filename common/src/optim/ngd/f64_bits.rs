//! f64 state in the f32 optimiser sidecar, bit for bit.

/// f64 values stored exactly in an f32 sidecar tensor: each value as two 32-bit words (low, high)
/// reinterpreted as f32 bit patterns.
pub(in crate::optim) fn encode_f64(v: &[f64]) -> Vec<f32> {
    v.iter()
        .flat_map(|x| {
            let b = x.to_bits();
            [f32::from_bits(b as u32), f32::from_bits((b >> 32) as u32)]
        })
        .collect()
}

pub(in crate::optim) fn decode_f64(v: &[f32]) -> Vec<f64> {
    v.chunks_exact(2)
        .map(|p| f64::from_bits(p[0].to_bits() as u64 | ((p[1].to_bits() as u64) << 32)))
        .collect()
}
