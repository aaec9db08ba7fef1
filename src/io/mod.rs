//! Files: atomic writes, mapped safetensors, npy, and the engine's codes and statistics files;
//! console lines that survive a closed pipe.
//! Every writer writes to a temporary name beside the target and renames when complete;
//! [`guard`] keeps outputs off inputs.
pub mod atomic;
pub mod codes;
pub mod console;
pub mod guard;
pub mod mapped;
pub mod npy;
pub mod stats;
