//! One CUDA device: context, stream, cuBLAS handle, kernels, and raw device buffers.
//! Kernels take raw device pointers (u64) so buffers of any element type pass uniformly;
//! everything runs on one stream, so stream order is the only synchronization needed.

use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    result as drv, CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg,
};

use super::gemm::Gemm;
use super::kernels::{KernelSource, Kernels};
use super::loader::{self, Lib};
use crate::error::{Error, Result};

/// What we know about the device, for names, planning and peak numbers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    /// CUDA device ordinal.
    pub ordinal: usize,
    /// The device's name as the driver reports it.
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Number of streaming multiprocessors.
    pub multiprocessors: i32,
    /// Total device memory in bytes.
    pub total_mem: usize,
    /// Each kernel module and how its code was obtained.
    pub kernel_sources: Vec<(String, KernelSource)>,
}

impl DeviceInfo {
    /// Vendor peak figures (dense bf16 TFLOP/s, memory TB/s) for the cards we measure on;
    /// None for others. Leads, not measurements: sae-bench reports fractions of these.
    pub fn peaks(&self) -> Option<(f64, f64)> {
        let n = self.name.to_ascii_uppercase();
        if n.contains("H200") {
            Some((989.0, 4.8))
        } else if n.contains("H100") && (n.contains("PCIE") || n.contains("NVL")) {
            Some((756.0, 2.0))
        } else if n.contains("H100") {
            Some((989.0, 3.35))
        } else if n.contains("A100") {
            Some((312.0, 2.0))
        } else {
            None
        }
    }
}

pub(crate) fn cuda_err(what: &str) -> impl Fn(drv::DriverError) -> Error + '_ {
    move |e| Error::Cuda(format!("{what}: {e}"))
}

/// A device and its per-process resources.
pub struct Gpu {
    /// The device's primary context.
    pub ctx: Arc<CudaContext>,
    /// The main stream: launches and copies are ordered on it.
    pub stream: Arc<CudaStream>,
    /// A second stream: the top-k pass of a double-buffered encode runs here while the next
    /// tile's GEMM runs on `stream` (ordered by events, see encode::Overlap).
    pub aux: Arc<CudaStream>,
    /// cuBLAS handle.
    pub blas: CudaBlas,
    /// cuBLASLt handle and the encoder GEMM's algorithm choices (see [`super::gemm`]).
    pub gemm: Gemm,
    /// The loaded kernel modules and their functions.
    pub kernels: Kernels,
    /// Name, memory and capability of the device.
    pub info: DeviceInfo,
}

impl Gpu {
    /// Opens device `ordinal` with the embedded fatbins where they load (see [`Gpu::open_with`]).
    pub fn open(ordinal: usize) -> Result<Gpu> {
        Gpu::open_with(ordinal, false)
    }

    /// Opens device `ordinal`: checks the driver and cuBLAS first so that nothing panics.
    /// `force_nvrtc` compiles the kernel sources with NVRTC even when fatbins are embedded.
    pub fn open_with(ordinal: usize, force_nvrtc: bool) -> Result<Gpu> {
        let n = loader::device_count()?;
        if ordinal >= n {
            return Err(Error::BackendUnavailable(format!(
                "CUDA device {ordinal} requested, but only {} present",
                crate::plural::count(n as u64, "device")
            )));
        }
        loader::ensure(Lib::Cublas)?;
        let ctx = CudaContext::new(ordinal).map_err(cuda_err("creating the CUDA context"))?;
        // One stream, raw pointers: cudarc's per-buffer event tracking would only add overhead.
        // SAFETY: every buffer of this engine is used on `stream` alone, in stream order.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let aux = ctx
            .new_stream()
            .map_err(cuda_err("creating the second stream"))?;
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| Error::Cuda(format!("creating the cuBLAS handle: {e}")))?;
        let cc = ctx
            .compute_capability()
            .map_err(cuda_err("compute capability"))?;
        if cc.0 < 7 {
            return Err(Error::BackendUnavailable(format!(
                "CUDA device {ordinal} has compute capability {}.{}; 7.0 or newer is needed",
                cc.0, cc.1
            )));
        }
        let kernels = Kernels::load(&ctx, cc, force_nvrtc)?;
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().map_err(cuda_err("device name"))?,
            compute_capability: cc,
            multiprocessors: ctx
                .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(cuda_err("multiprocessor count"))?,
            total_mem: ctx.total_mem().map_err(cuda_err("device memory size"))?,
            kernel_sources: kernels.sources.iter().map(|(m, s)| (m.to_string(), *s)).collect(),
        };
        Ok(Gpu {
            ctx,
            stream,
            aux,
            blas,
            gemm: Gemm::default(),
            kernels,
            info,
        })
    }

    /// Makes this context current on the calling thread (engines may move between threads).
    pub fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(cuda_err("binding the CUDA context"))
    }

    /// Allocates `bytes` of device memory (uninitialized).
    pub fn alloc(&self, bytes: usize) -> Result<DevBuf> {
        DevBuf::new(self.ctx.clone(), bytes)
    }

    /// A device buffer holding `data`.
    pub fn upload<T: Copy>(&self, data: &[T]) -> Result<DevBuf> {
        let b = self.alloc(std::mem::size_of_val(data))?;
        self.htod(b.ptr, data)?;
        Ok(b)
    }

    /// Copies host `src` to device address `dst` (returns once `src` may be reused).
    pub fn htod<T: Copy>(&self, dst: u64, src: &[T]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: dst is a live allocation of at least size_of_val(src) bytes (callers size
        // it); pageable copies are staged before the call returns.
        unsafe { drv::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(cuda_err("host-to-device copy"))
    }

    /// Copies device `src` into host `dst` and waits for it.
    pub fn dtoh<T: Copy>(&self, dst: &mut [T], src: u64) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: src holds at least size_of_val(dst) bytes written by earlier stream work.
        unsafe { drv::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(cuda_err("device-to-host copy"))?;
        self.sync()
    }

    /// Sets `bytes` bytes at `dst` to zero.
    pub fn zero(&self, dst: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: dst is a live allocation of at least `bytes` bytes.
        unsafe { drv::memset_d8_async(dst, 0, bytes, self.stream.cu_stream()) }
            .map_err(cuda_err("memset"))
    }

    /// Waits for all queued work and surfaces asynchronous errors.
    pub fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(cuda_err("stream synchronize"))
    }

    /// The kernel `name`.
    pub fn kernel(&self, name: &str) -> Result<&CudaFunction> {
        self.kernels.get(name)
    }

    /// A 1-D grid-stride launch configuration for `n` elements.
    pub fn grid_for(&self, n: usize, threads: u32) -> LaunchConfig {
        let blocks = n
            .div_ceil(threads as usize)
            .clamp(1, (self.info.multiprocessors.max(1) as usize) * 32);
        LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Median device time in ms of `reps` (at least one) runs of `f`, each between two CUDA
    /// events on the stream. No warm-up: callers run `f` once first when that matters.
    pub fn median_ms(&self, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        let err = cuda_err("timing event");
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let (a, b) = (
            self.ctx.new_event(flags).map_err(&err)?,
            self.ctx.new_event(flags).map_err(&err)?,
        );
        let mut t = Vec::with_capacity(reps.max(1));
        for _ in 0..reps.max(1) {
            a.record(&self.stream).map_err(&err)?;
            f()?;
            b.record(&self.stream).map_err(&err)?;
            b.synchronize().map_err(&err)?;
            t.push(a.elapsed_ms(&b).map_err(&err)? as f64);
        }
        t.sort_by(|x, y| x.total_cmp(y));
        Ok(t[t.len() / 2])
    }

    /// One block of `threads` threads per row: the launch shape of every per-row kernel.
    pub fn per_row(rows: usize, threads: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Fills `n` elements of dtype `dtype` at `dst` with uniform values in [-scale, scale).
    pub fn fill_random(
        &self,
        dtype: crate::DType,
        dst: u64,
        n: usize,
        seed: u64,
        scale: f32,
    ) -> Result<()> {
        let name = match dtype {
            crate::DType::F32 => "fill_random_f32",
            crate::DType::F16 => "fill_random_f16",
            crate::DType::BF16 => "fill_random_bf16",
        };
        let f = self.kernel(name)?;
        let n64 = n as i64;
        let mut b = self.stream.launch_builder(f);
        b.arg(&dst).arg(&n64).arg(&seed).arg(&scale);
        // SAFETY: fill_random_*(out, n, seed, scale): dst holds n elements of dtype.
        unsafe { b.launch(self.grid_for(n, 256)) }.map_err(cuda_err(name))?;
        Ok(())
    }
}

/// An owned device allocation, freed on drop.
pub struct DevBuf {
    /// Device address of the allocation.
    pub ptr: u64,
    /// Size of the allocation in bytes.
    pub bytes: usize,
    ctx: Arc<CudaContext>,
}

impl DevBuf {
    fn new(ctx: Arc<CudaContext>, bytes: usize) -> Result<DevBuf> {
        ctx.bind_to_thread()
            .map_err(cuda_err("binding the CUDA context"))?;
        // SAFETY: plain cuMemAlloc in the bound context; a zero-byte request is rounded up
        // because the driver rejects it.
        let ptr = unsafe { drv::malloc_sync(bytes.max(256)) }
            .map_err(|e| Error::Cuda(format!("allocating {bytes} bytes of device memory: {e}")))?;
        Ok(DevBuf { ptr, bytes, ctx })
    }

    /// Address `offset` bytes into the buffer.
    pub fn at(&self, offset: usize) -> u64 {
        debug_assert!(offset <= self.bytes);
        self.ptr + offset as u64
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        // Drop cannot report errors; a failed free leaks device memory until the context goes.
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: ptr came from malloc_sync in this context and is freed once. cuMemFree
            // waits for work using it (it synchronizes the device).
            let _ = unsafe { drv::free_sync(self.ptr) };
        }
    }
}
