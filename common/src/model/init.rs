//! PyTorch's default initialisation.

use super::layout::Init;
use super::network::Network;
use crate::rng::{stream, Purpose};
use crate::Real;

/// Draws every tensor as its [`Init`] says, in layout order from the `(seed, Init)` stream. For the
/// layers here that is PyTorch's `reset_parameters` of `nn.Linear` / `nn.Conv2d`: weights
/// Kaiming-uniform with a = √5, i.e. U(−b, b) with b = gain·√(3/fan_in), gain = √(2/(1+a²)), which is
/// b = 1/√fan_in; biases U(−1/√fan_in, 1/√fan_in). fan_in = in (Linear) or in·kh·kw (Conv2d).
/// `nn.LayerNorm`'s weight is 1 and its bias 0 (they draw nothing, so the stream of the other
/// tensors does not depend on them). `nn.Embedding`'s weight is N(0, 1), and
/// `nn.MultiheadAttention`'s `in_proj_weight` Xavier-uniform with its biases 0.
///
/// Two runs with the same seed (and an SGD and an NGD run with the same seed) start from identical
/// weights. They are not PyTorch's random numbers: the distribution is the same, the stream is ours.
pub fn initialise<T: Real>(net: &Network, seed: u64) -> Vec<T> {
    let layout = &net.layout;
    let mut params = vec![T::zero(); layout.total()];
    let mut rng = stream(seed, Purpose::Init, 0);
    for t in &layout.tensors {
        match t.init {
            Init::UniformFanIn { fan_in } => {
                // fan_in ≥ 1 in a network that passed `Architecture::size`; the guard keeps an
                // empty layer from dividing by zero.
                let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                for p in &mut params[t.range()] {
                    *p = T::of_f64(rng.uniform_in(-bound, bound));
                }
            }
            Init::Ones => params[t.range()].iter_mut().for_each(|p| *p = T::one()),
            Init::Zeros => {}
            Init::StandardNormal => {
                for p in &mut params[t.range()] {
                    *p = T::of_f64(rng.normal());
                }
            }
            Init::XavierUniform { fan_in, fan_out } => {
                let bound = (6.0 / (fan_in + fan_out).max(1) as f64).sqrt();
                for p in &mut params[t.range()] {
                    *p = T::of_f64(rng.uniform_in(-bound, bound));
                }
            }
        }
    }
    params
}
