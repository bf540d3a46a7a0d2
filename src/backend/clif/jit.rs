//! The JIT: the model compiled by [`codegen::define_model`] into executable memory of
//! this process through `cranelift-jit`, and called with Rust-owned buffers.

use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::Linkage;

use super::codegen::{self, CodegenOptions, KernelInfo, MAX_PARTS, Symbols};
use super::threads::{Barrier, Pool, barrier_wait};

/// The most threads a run can use.
pub const MAX_THREADS: usize = MAX_PARTS;
use crate::ir::Graph;
use crate::tensor::Tensor;

extern "C" fn cnnc_expf(x: f32) -> f32 {
    x.exp()
}

extern "C" fn cnnc_powf(x: f32, y: f32) -> f32 {
    x.powf(y)
}

thread_local! {
    /// The profiling ticks of the running thread: (kernel index, when).
    static TICKS: std::cell::RefCell<Vec<(u32, std::time::Instant)>> = const { std::cell::RefCell::new(Vec::new()) };
}

extern "C" fn cnnc_profile_tick(kernel: u32) {
    let now = std::time::Instant::now();
    TICKS.with(|ticks| ticks.borrow_mut().push((kernel, now)));
}

/// The signature of the generated `infer`.
type InferFn = unsafe extern "C" fn(*const f32, *mut f32, *mut u8) -> i32;

/// The signature of the generated `infer_part`.
type InferPartFn =
    unsafe extern "C" fn(*const f32, *mut f32, *mut u8, usize, usize, extern "C" fn(*mut u8), *mut u8) -> i32;

/// The buffers of one run, shared by its threads.
struct RunBuffers {
    input: *const f32,
    output: *mut f32,
    arena: *mut u8,
}

// SAFETY: the threads of a run write disjoint parts of `output` and `arena` between
// barriers (the kernels split their work by part), and only read `input`.
unsafe impl Sync for RunBuffers {}

impl RunBuffers {
    /// The pointers (a method, so that closures capture the whole `Sync` struct).
    fn get(&self) -> (*const f32, *mut f32, *mut u8) {
        (self.input, self.output, self.arena)
    }
}

/// A model compiled to native code in this process.
pub struct JitModel {
    /// Owns the code and the weights; `None` only while dropping.
    module: Option<JITModule>,
    infer: InferFn,
    infer_part: InferPartFn,
    /// Threads per run, and their pool (started on the first multithreaded run; busy
    /// while a run holds it, when other runs at the same time go single-threaded).
    threads: usize,
    pool: std::sync::Mutex<Option<Pool>>,
    arena_bytes: usize,
    /// The arena and output buffer of the last run, kept for the next: fresh ones would
    /// cost a page fault per 4 KiB touched on every run (the kernels write every value
    /// before reading it, so they need no clearing).
    spare: std::sync::Mutex<Option<Buffers>>,
    input_shapes: Vec<Vec<usize>>,
    output_shapes: Vec<Vec<usize>>,
    /// What each kernel computes, in call order.
    kernels: Vec<KernelInfo>,
    profiled: bool,
}

// SAFETY: after `finalize_definitions` the module's code and data are never written
// again; `run` only calls `infer`, which reads the weights and writes nothing but the
// buffers `run` passes it (each call its own output and arena). The module itself is
// touched again only by `Drop`, which has exclusive access.
unsafe impl Send for JitModel {}
unsafe impl Sync for JitModel {}

impl Drop for JitModel {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: no reference to the module's code or data outlives `self`.
            unsafe { module.free_memory() };
        }
    }
}

/// A run's scratch: the arena and the output buffer.
struct Buffers {
    arena: Vec<Line>,
    output: Vec<f32>,
}

/// An arena allocation aligned to a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

impl JitModel {
    /// Runs the model: `inputs` in `Graph::inputs` order, each of exactly its input's
    /// shape (batch included); returns the outputs in `Graph::outputs` order.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        if inputs.len() != self.input_shapes.len() {
            return Err(format!("the model takes {} input(s), got {}", self.input_shapes.len(), inputs.len()));
        }
        for (position, (tensor, shape)) in inputs.iter().zip(&self.input_shapes).enumerate() {
            if &tensor.shape != shape || tensor.data.len() != shape.iter().product::<usize>() {
                return Err(format!(
                    "input {position} must have shape {}, got {} ({} values)",
                    crate::ir::shape::fmt_shape(shape),
                    tensor.shape_string(),
                    tensor.data.len()
                ));
            }
        }
        // One input is read where it is; several are laid out one after another.
        let joined: Vec<f32>;
        let input: &[f32] = if inputs.len() == 1 {
            &inputs[0].data
        } else {
            joined = inputs.iter().flat_map(|t| t.data.iter().copied()).collect();
            &joined
        };
        // The spare buffers, unless another run has them.
        let spare = self.spare.try_lock().ok().and_then(|mut spare| spare.take());
        let Buffers { mut arena, mut output } = spare.unwrap_or_else(|| Buffers {
            arena: vec![Line([0; 64]); self.arena_bytes.div_ceil(64)],
            output: vec![0.0; self.output_floats()],
        });
        // SAFETY: `infer` reads exactly the input floats of the model's inputs (checked
        // above), writes exactly `output_floats` floats and at most `arena_bytes` bytes of
        // the arena, all of which these buffers hold.
        let status = unsafe { self.run_raw(input.as_ptr(), output.as_mut_ptr(), arena.as_mut_ptr().cast::<u8>()) };
        let mut outputs = Vec::with_capacity(self.output_shapes.len());
        let mut rest = output.as_slice();
        for shape in &self.output_shapes {
            let (head, tail) = rest.split_at(shape.iter().product());
            outputs.push(Tensor { shape: shape.clone(), data: head.to_vec() });
            rest = tail;
        }
        if let Ok(mut spare) = self.spare.try_lock() {
            *spare = Some(Buffers { arena, output });
        }
        if status != 0 {
            return Err(format!("the compiled model failed with status {status}"));
        }
        Ok(outputs)
    }

    /// Runs the model once and returns how long each kernel took, in call order, as
    /// (what it computes, seconds). Needs a model compiled with
    /// `CodegenOptions::profile`.
    pub fn profile(&self, inputs: &[Tensor]) -> Result<Vec<(String, f64)>, String> {
        if !self.profiled {
            return Err("the model was compiled without profiling".into());
        }
        TICKS.with(|ticks| ticks.borrow_mut().clear());
        self.run(inputs)?;
        let ticks = TICKS.with(|ticks| std::mem::take(&mut *ticks.borrow_mut()));
        Ok(ticks
            .windows(2)
            .map(|pair| {
                let name = self.kernels.get(pair[0].0 as usize).map(|k| k.name.clone()).unwrap_or_default();
                (name, pair[1].1.duration_since(pair[0].1).as_secs_f64())
            })
            .collect())
    }

    /// The kernels the model runs, in call order (as [`Self::profile`] reports them).
    pub fn kernels(&self) -> &[KernelInfo] {
        &self.kernels
    }

    /// Floats of the input buffer: every input, one after another in `Graph::inputs`
    /// order.
    pub fn input_floats(&self) -> usize {
        self.input_shapes.iter().map(|s| s.iter().product::<usize>()).sum()
    }

    /// Floats of the output buffer: every output, one after another in `Graph::outputs`
    /// order.
    pub fn output_floats(&self) -> usize {
        self.output_shapes.iter().map(|s| s.iter().product::<usize>()).sum()
    }

    /// Runs the model on caller-owned buffers, as the C entry point `NAME_infer` does;
    /// returns its status (0).
    ///
    /// # Safety
    ///
    /// `input` must be valid for reading [`Self::input_floats`] floats, `output` for
    /// writing [`Self::output_floats`] floats and `arena` for writing
    /// [`Self::arena_bytes`] bytes (any alignment); the three must not overlap.
    pub unsafe fn run_raw(&self, input: *const f32, output: *mut f32, arena: *mut u8) -> i32 {
        if self.threads > 1
            && let Ok(mut pool) = self.pool.try_lock()
        {
            if pool.as_ref().is_none_or(|p| p.threads() != self.threads) {
                match Pool::new(self.threads) {
                    Ok(p) => *pool = Some(p),
                    // No threads to be had: run on this one.
                    Err(_) => return unsafe { (self.infer)(input, output, arena) },
                }
            }
            let pool = pool.as_mut().expect("started above");
            let parts = pool.threads();
            let barrier = Barrier::new(parts);
            let buffers = RunBuffers { input, output, arena };
            let status = std::sync::atomic::AtomicI32::new(0);
            let infer_part = self.infer_part;
            pool.run(&|part| {
                let context = &barrier as *const Barrier as *mut u8;
                let (input, output, arena) = buffers.get();
                // SAFETY: the caller's buffer contract, shared by `parts` threads that all
                // call `infer_part` with the same buffers and barrier.
                let s = unsafe { infer_part(input, output, arena, part, parts, barrier_wait, context) };
                if s != 0 {
                    status.store(s, std::sync::atomic::Ordering::Relaxed);
                }
            });
            return status.into_inner();
        }
        // SAFETY: the caller upholds the buffer contract `infer` relies on.
        unsafe { (self.infer)(input, output, arena) }
    }

    /// Sets how many threads share each run (1 to [`MAX_THREADS`]; more are clamped).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.clamp(1, MAX_THREADS);
    }

    /// Threads per run.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The bytes of scratch memory a run needs (the memory plan's arena plus the
    /// kernels' scratch space).
    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }
}

/// Compiles a graph (optimized, with bound weights) with the default options.
pub fn compile_jit(graph: &Graph) -> Result<JitModel, String> {
    compile_jit_with(graph, &CodegenOptions::default())
}

/// Compiles a graph with the given code generator options. A graph without a memory
/// plan is planned first (on a copy).
pub fn compile_jit_with(graph: &Graph, options: &CodegenOptions) -> Result<JitModel, String> {
    if graph.memory.is_none() {
        let mut planned = graph.clone();
        crate::passes::plan_memory(&mut planned);
        return compile_jit_with(&planned, options);
    }
    compile(graph, None, options)
}

/// [`compile_jit_with`] on a graph the caller gives up: each layer's weights are freed as
/// soon as they are packed into the model, which lowers the peak memory of compiling a
/// large network by about the size of its weights.
pub fn compile_jit_owned(mut graph: Graph, options: &CodegenOptions) -> Result<JitModel, String> {
    if graph.memory.is_none() {
        crate::passes::plan_memory(&mut graph);
    }
    let mut weights = std::mem::take(&mut graph.weights);
    compile(&graph, Some(&mut weights), options)
}

/// The most kernels one JIT-compiled model may have. cranelift-jit maps code and data
/// in separate allocations, and a network of 100,000 layers exceeded the kernel's limit
/// on mappings per process (`vm.max_map_count`, 65,530): "unable to make memory
/// readonly". 40,000 kernels were measured to compile and run; `cnnc build` (an object
/// file) has no such limit.
pub const MAX_JIT_KERNELS: usize = 40_000;

fn compile(
    graph: &Graph,
    weights: Option<&mut crate::weights::Weights>,
    options: &CodegenOptions,
) -> Result<JitModel, String> {
    crate::ir::verify(graph).map_err(|e| format!("internal error: the graph is not valid:\n{e}"))?;
    if graph.node_count() > MAX_JIT_KERNELS {
        return Err(format!(
            "network `{}` has {} layers; the JIT compiles at most {MAX_JIT_KERNELS} (each takes memory \
             mappings, of which a process has 65,530); build an object file with `cnnc build` instead",
            graph.name,
            graph.node_count()
        ));
    }
    if let Some(level) = options.cpu
        && !level.host_has()
    {
        return Err(format!("this CPU cannot run {} code", level.name()));
    }
    let isa = codegen::build_isa(None, options, false)?;
    let mut builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
    builder.symbol("expf", cnnc_expf as *const u8);
    builder.symbol("powf", cnnc_powf as *const u8);
    builder.symbol("cnnc_profile_tick", cnnc_profile_tick as *const u8);
    let mut module = JITModule::new(builder);
    let symbols = Symbols {
        prefix: "cnnc",
        infer_name: "cnnc_infer",
        infer_part_name: "cnnc_infer_part",
        infer_linkage: Linkage::Local,
        far_data: true,
    };
    let defined = codegen::define_model(&mut module, graph, weights, options, &symbols);
    let defined = match defined {
        Ok(d) => d,
        Err(e) => {
            // SAFETY: nothing was finalized, so nothing refers to the module's memory.
            unsafe { module.free_memory() };
            return Err(e);
        }
    };
    if let Err(e) = module.finalize_definitions() {
        // SAFETY: as above; no code of the module has run.
        unsafe { module.free_memory() };
        return Err(format!("internal error: Cranelift: {e:?}"));
    }
    let code = module.get_finalized_function(defined.infer);
    // SAFETY: `infer` was defined with the signature `(ptr, ptr, ptr) -> i32` in the
    // host's default calling convention, which is `extern "C"`.
    let infer = unsafe { std::mem::transmute::<*const u8, InferFn>(code) };
    let code = module.get_finalized_function(defined.infer_part);
    // SAFETY: `infer_part` was defined with `(ptr, ptr, ptr, ptr, ptr, ptr, ptr) -> i32`.
    let infer_part = unsafe { std::mem::transmute::<*const u8, InferPartFn>(code) };
    Ok(JitModel {
        module: Some(module),
        infer,
        infer_part,
        threads: 1,
        pool: std::sync::Mutex::new(None),
        arena_bytes: defined.arena_bytes,
        spare: std::sync::Mutex::new(None),
        input_shapes: graph.inputs.iter().map(|&id| graph.node(id).shape.clone()).collect(),
        output_shapes: graph.outputs.iter().map(|o| graph.node(o.node).shape.clone()).collect(),
        kernels: defined.kernels,
        profiled: options.profile,
    })
}
