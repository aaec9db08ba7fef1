//! Streaming a dump through the CUDA engine: a reader thread decodes the next batch from
//! disk (memory-mapped shards) while the engine encodes the current one, which itself
//! stages its row chunks through pinned double buffers. Memory stays bounded: at most two
//! batches are alive on the host, and the device holds only the engine's workspace.

use std::sync::mpsc::sync_channel;
use std::time::Instant;

use crate::backend::Engine;
use crate::codes::Encoded;
use crate::dump::{Batch, Dump};
use crate::error::{Error, Result};

/// What a streaming pass did.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StreamReport {
    /// Rows encoded.
    pub rows: u64,
    /// Batches read.
    pub batches: u64,
    /// Wall-clock seconds of the pass.
    pub seconds: f64,
    /// Seconds the encoder waited for the reader (disk-bound when large).
    pub wait_seconds: f64,
}

impl StreamReport {
    /// Rows per second over the whole pass.
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.seconds.max(1e-12)
    }
}

/// Encodes every batch of `dump` with `engine`, calling `sink` in dump order.
pub fn encode_dump(
    engine: &dyn Engine,
    dump: &Dump,
    batch_rows: usize,
    mut sink: impl FnMut(&Batch, Encoded) -> Result<()>,
) -> Result<StreamReport> {
    dump.check_width(engine.sae().d_in())?;
    let t0 = Instant::now();
    let mut report = StreamReport {
        rows: 0,
        batches: 0,
        seconds: 0.0,
        wait_seconds: 0.0,
    };
    std::thread::scope(|scope| -> Result<()> {
        // Capacity 1: one batch queued while one is being encoded (double buffering).
        let (tx, rx) = sync_channel::<Result<Batch>>(1);
        let reader = scope.spawn(move || {
            for b in dump.batches(batch_rows) {
                let stop = b.is_err();
                if tx.send(b).is_err() || stop {
                    break;
                }
            }
        });
        let mut result = Ok(());
        loop {
            let w = Instant::now();
            let next = rx.recv();
            report.wait_seconds += w.elapsed().as_secs_f64();
            let batch = match next {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    result = Err(e);
                    break;
                }
                Err(_) => break,
            };
            let enc = match engine.encode(&batch.acts, batch.rows, batch.start) {
                Ok(e) => e,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            report.rows += batch.rows as u64;
            report.batches += 1;
            if let Err(e) = sink(&batch, enc) {
                result = Err(e);
                break;
            }
        }
        drop(rx);
        reader
            .join()
            .map_err(|_| Error::Cuda("dump reader thread panicked".into()))?;
        result
    })?;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}
