//! Files and streams: checkpoints, optimiser sidecars, JSON-lines records, atomic writes.

mod atomic;
mod checkpoint;
mod records;

pub use atomic::{atomic_write, check_path_component, check_writable_dir, remove_stale_temp_files};
pub use checkpoint::{
    encode_f32_safetensors, load_optimizer_state, natural_order, optimizer_sidecar_path,
    read_checkpoint_file, require_checkpoint_file, save_optimizer_state, Checkpoint,
    OptimizerState, MAX_CHECKPOINT_BYTES,
};
pub use records::{finite_or_null, read_records, Record, RecordWriter};
mod stream;
pub use stream::{fill_name, isolated, log_line, process_stream, require_file, StreamSummary};
