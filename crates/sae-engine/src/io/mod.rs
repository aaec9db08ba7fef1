//! Files: atomic writes, mapped safetensors, npy, and the engine's codes and statistics files
//! ([`codes_file`], [`stats_file`]: the types they hold live in `crate::codes`, `crate::stats`);
//! console lines that survive a closed pipe.
//! Every writer writes to a temporary name beside the target and renames when complete;
//! [`guard`] keeps outputs off inputs.
pub mod atomic;
pub mod codes_file;
pub mod console;
pub mod guard;
pub mod mapped;
pub mod npy;
pub mod stats_file;
