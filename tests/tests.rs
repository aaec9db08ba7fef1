//! The integration tests: one binary (ripgrep's layout) whose modules are the files of
//! this folder, sharing `common` (running `sae`, writing SAEs and dumps). tests/fixtures/
//! holds the files made by the libraries themselves. Run one module with
//! `cargo test --test integration cli::`; GPU tests are in `cuda_parity` (see there).

mod common;

mod caches;
mod cli;
mod cli_plumbing;
mod cli_workflow;
mod cluster_recipe;
mod cpu_engine;
mod cuda_parity;
mod cuda_shards_memory;
mod dumps;
mod formats;
mod hub;
mod library_fixtures;
mod pickle;
mod safety;
mod scaleout;
mod small_things;
mod steer_checks;
mod workflow;
