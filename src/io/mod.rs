//! Files the engine writes and reads back: codes and statistics (safetensors).
//! Every writer writes to a temporary name beside the target and renames when complete.
pub mod codes;
pub mod stats;
