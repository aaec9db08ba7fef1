//! Device-memory plans, decided before anything is uploaded: which weight matrices go on
//! the device (W_dec only when the engine will decode), how much workspace the encode tiles
//! get beside them within the free memory (`cuMemGetInfo`) and an optional limit, and the
//! tiles that workspace allows, or a refusal that names the sizes. Pure: unit-tested
//! without a GPU.

use super::encode::{plan_tiles, Plan, Precision, TileShape};
use crate::backend::Workload;
use crate::error::{Error, Result};
use crate::provenance::human_bytes;

/// Free memory kept out of every plan: allocation granularity and the driver's own
/// bookkeeping (module images and cuBLAS handles are loaded before the free figure is read).
pub const HEADROOM: u64 = 64 << 20;

/// Device memory as `cuMemGetInfo` reports it for the engine's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Free bytes.
    pub free: u64,
    /// Total bytes.
    pub total: u64,
}

/// Everything a plan depends on besides the device's memory.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryRequest {
    /// The SAE's shape and encoder dtype, as the tile planner sees it.
    pub shape: TileShape,
    /// W_enc's stored bytes.
    pub encoder_bytes: u64,
    /// W_dec's stored bytes.
    pub decoder_bytes: u64,
    /// Biases, thresholds, norms and per-block bounds, uploaded as f32.
    pub vector_bytes: u64,
    /// What the engine will do.
    pub workload: Workload,
    /// Requested workspace beyond the weights (`EngineOptions::workspace_bytes`).
    pub workspace_bytes: usize,
    /// Most rows per encode chunk (the batch size the engine is fed, at most).
    pub max_rows: usize,
    /// GEMM arithmetic, latents-per-tile override and bf16-score choice (tile planning).
    pub precision: Precision,
    /// Latents per tile instead of the planned width (`EngineOptions`).
    pub tile_override: Option<usize>,
    /// Force bf16 scores on or off instead of the planner's choice.
    pub bf16_scores: Option<bool>,
    /// At most this many bytes of device memory for the engine (`EngineOptions::device_memory_limit`).
    pub limit: Option<u64>,
}

/// What to upload and how big the workspace is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Upload W_dec (only when the workload decodes).
    pub upload_decoder: bool,
    /// Bytes the uploaded tensors take.
    pub weight_bytes: u64,
    /// The workspace budget the engine runs with: the requested one, shrunk to what is left.
    pub workspace_bytes: usize,
    /// Rows per chunk and latents per tile within that workspace.
    pub tiles: Plan,
    /// Bytes the engine may use in all: free memory, capped by the limit, less [`HEADROOM`].
    pub usable: u64,
}

/// Plans the engine's device memory. Decode allocates up to half the workspace per call
/// beside the encode workspace (see `CudaEngine::decode_with_metrics`), so with
/// [`Workload::EncodeDecode`] the workspace takes at most 2/3 of what the weights leave.
pub fn plan_memory(req: &MemoryRequest, mem: DeviceMemory) -> Result<MemoryPlan> {
    let cap = req.limit.map_or(mem.free, |l| l.min(mem.free));
    let usable = cap.saturating_sub(HEADROOM);
    let upload_decoder = req.workload.needs_decoder();
    let weight_bytes =
        req.encoder_bytes + req.vector_bytes + if upload_decoder { req.decoder_bytes } else { 0 };
    let where_ = || {
        let limit = req
            .limit
            .map(|l| format!(", limit {}", human_bytes(l)))
            .unwrap_or_default();
        format!(
            "the device has {} free of {}{limit}",
            human_bytes(mem.free),
            human_bytes(mem.total)
        )
    };
    if weight_bytes > usable {
        let what = if upload_decoder {
            format!(
                "the SAE's encoder and decoder need {} ({} + {}, vectors {})",
                human_bytes(weight_bytes),
                human_bytes(req.encoder_bytes),
                human_bytes(req.decoder_bytes),
                human_bytes(req.vector_bytes)
            )
        } else {
            format!(
                "the SAE's encoder needs {} (vectors {})",
                human_bytes(weight_bytes),
                human_bytes(req.vector_bytes)
            )
        };
        return Err(Error::invalid(format!(
            "{what}; {}: the weights do not fit (split the SAE over devices with \
             --latent-shards{})",
            where_(),
            if upload_decoder {
                ", or run commands that only encode, which leave W_dec on the host"
            } else {
                ""
            }
        )));
    }
    let left = usable - weight_bytes;
    let for_workspace = if upload_decoder { left / 3 * 2 } else { left };
    let workspace_bytes = (req.workspace_bytes as u64).min(for_workspace) as usize;
    let tiles = plan_tiles(
        &req.shape,
        req.precision,
        workspace_bytes,
        req.max_rows,
        req.tile_override,
        req.bf16_scores,
    )
    .map_err(|e| {
        Error::invalid(format!(
            "after the SAE's weights ({}), {} of device memory are left; {}: {e}",
            human_bytes(weight_bytes),
            human_bytes(left),
            where_()
        ))
    })?;
    Ok(MemoryPlan {
        upload_decoder,
        weight_bytes,
        workspace_bytes,
        tiles,
        usable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    const GB: u64 = 1 << 30;

    /// The paper shape: 2^21 latents, d = 4096, bf16, k = 64 (17.2 GB = 16 GiB per matrix).
    fn paper(workload: Workload, limit: Option<u64>) -> MemoryRequest {
        let (l, d) = (1usize << 21, 4096usize);
        MemoryRequest {
            shape: TileShape {
                d_in: d,
                n_latents: l,
                k: 64,
                dtype: DType::BF16,
            },
            encoder_bytes: (l * d * 2) as u64,
            decoder_bytes: (l * d * 2) as u64,
            vector_bytes: (3 * l * 4 + d * 4) as u64,
            workload,
            workspace_bytes: 1 << 30,
            max_rows: 4096,
            precision: Precision::Exact,
            tile_override: None,
            bf16_scores: None,
            limit,
        }
    }

    fn card(free_gib: u64, total_gib: u64) -> DeviceMemory {
        DeviceMemory {
            free: free_gib * GB,
            total: total_gib * GB,
        }
    }

    #[test]
    fn fits_with_the_requested_workspace() {
        let p = plan_memory(&paper(Workload::EncodeDecode, None), card(139, 141)).unwrap();
        assert!(p.upload_decoder);
        assert_eq!(p.workspace_bytes, 1 << 30);
        assert!(p.weight_bytes > 32 * GB && p.weight_bytes < 33 * GB);
        let full = plan_tiles(
            &paper(Workload::EncodeDecode, None).shape,
            Precision::Exact,
            1 << 30,
            4096,
            None,
            None,
        )
        .unwrap();
        assert_eq!(p.tiles, full);
    }

    #[test]
    fn a_nearly_full_card_shrinks_the_tiles_instead_of_failing_later() {
        // 16 GiB encoder + 24 MiB of vectors + 64 MiB headroom on 16.25 GiB free: about
        // 170 MiB left for the workspace, far below the 1 GiB asked for.
        let free = 16 * GB + GB / 4;
        let req = paper(Workload::Encode, None);
        let p = plan_memory(
            &req,
            DeviceMemory {
                free,
                total: 24 * GB,
            },
        )
        .unwrap();
        assert!(!p.upload_decoder);
        assert!(p.workspace_bytes < 200 << 20, "{}", p.workspace_bytes);
        assert!(p.weight_bytes + p.workspace_bytes as u64 <= free - HEADROOM);
        let roomy = plan_memory(&req, card(139, 141)).unwrap();
        assert!(
            p.tiles.rows * p.tiles.tile < roomy.tiles.rows * roomy.tiles.tile,
            "{:?} vs {:?}",
            p.tiles,
            roomy.tiles
        );
    }

    #[test]
    fn weights_that_cannot_fit_are_refused_before_upload_naming_the_sizes() {
        let e = plan_memory(&paper(Workload::EncodeDecode, None), card(23, 24))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the SAE's encoder and decoder need 32.0 GiB"),
            "{e}"
        );
        assert!(e.contains("23.0 GiB free of 24.0 GiB"), "{e}");
        assert!(e.contains("only encode"), "{e}");
        // The 2^22-latent encoder alone (32 GiB) fits no 24 GB card either.
        let mut big = paper(Workload::Encode, None);
        big.shape.n_latents = 1 << 22;
        big.encoder_bytes *= 2;
        let e = plan_memory(&big, card(23, 24)).unwrap_err().to_string();
        assert!(e.contains("the SAE's encoder needs 32.0 GiB"), "{e}");
        assert!(!e.contains("only encode"), "{e}");
        // Weights that fit with nothing left for a workspace are refused too.
        let req = paper(Workload::Encode, None);
        let free = req.encoder_bytes + req.vector_bytes + HEADROOM + (1 << 10);
        let e = plan_memory(
            &req,
            DeviceMemory {
                free,
                total: 24 * GB,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("after the SAE's weights"), "{e}");
    }

    #[test]
    fn encode_only_leaves_the_decoder_on_the_host() {
        // 16 GiB encoder on a 24 GB card: fits for encoding, not with the decoder.
        let enc = plan_memory(&paper(Workload::Encode, None), card(23, 24)).unwrap();
        assert!(!enc.upload_decoder);
        assert!(enc.weight_bytes < 17 * GB);
        assert_eq!(enc.workspace_bytes, 1 << 30);
        assert!(plan_memory(&paper(Workload::EncodeDecode, None), card(23, 24)).is_err());
    }

    #[test]
    fn a_limit_below_free_memory_emulates_a_smaller_card() {
        // An H200 (139 GiB free) limited to 24 GiB behaves like the 24 GB card.
        let limited = plan_memory(
            &paper(Workload::EncodeDecode, Some(24 * GB)),
            card(139, 141),
        )
        .unwrap_err()
        .to_string();
        assert!(limited.contains("limit 24.0 GiB"), "{limited}");
        let p = plan_memory(&paper(Workload::Encode, Some(17 * GB)), card(139, 141)).unwrap();
        assert_eq!(p.usable, 17 * GB - HEADROOM);
        assert!(p.weight_bytes + p.workspace_bytes as u64 <= p.usable);
        assert!(p.workspace_bytes < 1 << 30);
        // A limit above free memory changes nothing.
        let a = plan_memory(&paper(Workload::Encode, Some(1 << 50)), card(30, 32)).unwrap();
        let b = plan_memory(&paper(Workload::Encode, None), card(30, 32)).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn decoding_keeps_room_for_decode_buffers() {
        // 16 GiB encoder + 16 GiB decoder with 1.5 GiB left: the workspace takes at most
        // 2/3 of it, so decode's half-workspace chunks fit beside it.
        let req = paper(Workload::EncodeDecode, None);
        let free = req.encoder_bytes + req.decoder_bytes + req.vector_bytes + HEADROOM + GB;
        let p = plan_memory(
            &req,
            DeviceMemory {
                free,
                total: 48 * GB,
            },
        )
        .unwrap();
        assert!(
            p.workspace_bytes as u64 * 3 / 2 <= GB,
            "{}",
            p.workspace_bytes
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Whatever the shapes and memory: a plan keeps weights, workspace and decode's
        /// half-workspace within the usable memory and uploads W_dec exactly when decoding;
        /// a refusal says whether the weights or the workspace did not fit.
        #[test]
        fn plans_stay_within_usable_memory(
            l in 1usize..(1 << 22),
            d in 1usize..8192,
            k in 0usize..512,
            bf16 in proptest::bool::ANY,
            decode in proptest::bool::ANY,
            free_mib in 1u64..200_000,
            limit_mib in proptest::option::of(1u64..200_000),
            ws_mib in 1usize..4096,
            rows in 1usize..16384,
        ) {
            let dtype = if bf16 { DType::BF16 } else { DType::F32 };
            let w = (l * d * dtype.size()) as u64;
            let req = MemoryRequest {
                shape: TileShape { d_in: d, n_latents: l, k: k.min(l), dtype },
                encoder_bytes: w,
                decoder_bytes: w,
                vector_bytes: (3 * l + d) as u64 * 4,
                workload: if decode { Workload::EncodeDecode } else { Workload::Encode },
                workspace_bytes: ws_mib << 20,
                max_rows: rows,
                precision: Precision::Exact,
                tile_override: None,
                bf16_scores: None,
                limit: limit_mib.map(|m| m << 20),
            };
            let mem = DeviceMemory { free: free_mib << 20, total: 200_000 << 20 };
            let weights = w + req.vector_bytes + if decode { w } else { 0 };
            match plan_memory(&req, mem) {
                Ok(p) => {
                    proptest::prop_assert_eq!(p.upload_decoder, decode);
                    proptest::prop_assert_eq!(p.weight_bytes, weights);
                    let ws = p.workspace_bytes as u64;
                    let peak = weights + if decode { ws + ws / 2 } else { ws };
                    proptest::prop_assert!(peak <= p.usable, "{:?}", p);
                    proptest::prop_assert!(p.usable <= req.limit.unwrap_or(u64::MAX));
                    proptest::prop_assert!(ws <= req.workspace_bytes as u64);
                    proptest::prop_assert!(p.tiles.rows >= 1 && p.tiles.rows <= rows);
                }
                Err(e) => {
                    let e = e.to_string();
                    let usable = mem.free.min(req.limit.unwrap_or(u64::MAX)).saturating_sub(HEADROOM);
                    if weights > usable {
                        proptest::prop_assert!(e.contains("do not fit"), "{}", e);
                    } else {
                        proptest::prop_assert!(e.contains("after the SAE's weights"), "{}", e);
                    }
                }
            }
        }
    }
}
