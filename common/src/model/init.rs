//! PyTorch's default initialisation.

use super::network::Network;
use crate::rng::{stream, Purpose};
use crate::Real;

/// Draws parameters as PyTorch's `nn.Linear` / `nn.Conv2d` `reset_parameters` do: weights
/// Kaiming-uniform with a = √5, i.e. U(−b, b) with b = gain·√(3/fan_in), gain = √(2/(1+a²)), which is
/// b = 1/√fan_in; biases U(−1/√fan_in, 1/√fan_in). fan_in = in (Linear) or in·kh·kw (Conv2d).
///
/// The values come from the `(seed, Init)` stream in tensor order, so two runs with the same seed (and
/// an SGD and an NGD run with the same seed) start from identical weights. They are not PyTorch's
/// random numbers: the distribution is the same, the stream is ours.
pub fn initialise<T: Real>(net: &Network, seed: u64) -> Vec<T> {
    let layout = &net.layout;
    let mut params = vec![T::zero(); layout.total()];
    let mut rng = stream(seed, Purpose::Init, 0);
    for t in &layout.tensors {
        // A weight's fan-in is its size divided by its leading (output) dimension; a bias takes the
        // fan-in of the weight before it. (Both are at least 1 in a network that passed
        // `Architecture::size`; the guards keep an empty tensor from dividing by zero.)
        let fan_in =
            |w: &crate::model::TensorSpec| w.numel.checked_div(w.shape[0]).unwrap_or(0).max(1);
        let fan_in = if t.shape.len() >= 2 {
            fan_in(t)
        } else {
            let w = layout
                .tensors
                .iter()
                .rev()
                .find(|w| w.offset < t.offset && w.shape.len() >= 2)
                .expect("a bias follows its weight");
            fan_in(w)
        };
        let bound = 1.0 / (fan_in as f64).sqrt();
        for p in &mut params[t.range()] {
            *p = T::of_f64(rng.uniform_in(-bound, bound));
        }
    }
    params
}
