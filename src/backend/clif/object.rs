//! Ahead of time: the model as a relocatable object file (`cranelift-object`) and a C
//! header, to link into a C, C++ or Rust program.
//!
//! The object exports `NAME_infer`, `NAME_infer_part` (the same run shared by several
//! threads) and `NAME_arena_bytes`; every other symbol (kernels,
//! weights) is local, the weights are in read-only data and there is no writable global
//! state, so threads may run the model at once, each with its own arena. It imports
//! `expf` and `powf` (link with `-lm`).

use cranelift_module::Linkage;
use cranelift_object::{ObjectBuilder, ObjectModule};

use super::codegen::{self, CodegenOptions, MAX_PARTS, Symbols};
use crate::ir::shape::fmt_shape;
use crate::ir::{Graph, Op};

/// A compiled object file and the C header that declares its functions.
#[derive(Clone, Debug)]
pub struct ObjectArtifacts {
    pub object: Vec<u8>,
    pub header: String,
}

/// Whether `name` is a C identifier (the symbols are `NAME_infer`, `NAME_arena_bytes`).
fn is_c_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Compiles a graph (optimized, weights bound) into an object for `triple` (the host,
/// with all its CPU features, when `None`).
pub fn compile_object(graph: &Graph, name: &str, triple: Option<&str>) -> Result<ObjectArtifacts, String> {
    compile_object_with(graph, name, triple, &CodegenOptions { verify: false, ..CodegenOptions::default() })
}

/// Same, with the given code generator options.
pub fn compile_object_with(
    graph: &Graph,
    name: &str,
    triple: Option<&str>,
    options: &CodegenOptions,
) -> Result<ObjectArtifacts, String> {
    if options.profile {
        return Err("profiling is for the JIT only".into());
    }
    if !is_c_identifier(name) {
        return Err(format!(
            "`{name}` cannot name C functions: use letters, digits and `_`, not starting with a digit"
        ));
    }
    if graph.memory.is_none() {
        let mut planned = graph.clone();
        crate::passes::plan_memory(&mut planned);
        return compile_object_with(&planned, name, triple, options);
    }
    crate::ir::verify(graph).map_err(|e| format!("internal error: the graph is not valid:\n{e}"))?;
    let isa = codegen::build_isa(triple, options, true)?;
    let target = match (triple, options.cpu) {
        (_, Some(level)) => format!("{} ({} instructions only)", isa.triple(), level.name()),
        (Some(_), None) => format!("{} (baseline CPU features)", isa.triple()),
        (None, None) => format!("{} (the CPU features of the machine that built it)", isa.triple()),
    };
    let builder = ObjectBuilder::new(isa, format!("{name}.o"), cranelift_module::default_libcall_names())
        .map_err(|e| format!("cannot write an object for this target: {e:?}"))?;
    let mut module = ObjectModule::new(builder);
    let prefix = format!("__cnnc_{name}");
    let infer_name = format!("{name}_infer");
    let infer_part_name = format!("{name}_infer_part");
    let symbols = Symbols {
        prefix: &prefix,
        infer_name: &infer_name,
        infer_part_name: &infer_part_name,
        infer_linkage: Linkage::Export,
        far_data: false,
    };
    let defined = codegen::define_model(&mut module, graph, None, options, &symbols)?;
    codegen::define_constant_function(&mut module, &format!("{name}_arena_bytes"), defined.arena_bytes)?;
    let object = module.finish().emit().map_err(|e| format!("cannot write the object file: {e}"))?;
    Ok(ObjectArtifacts { object, header: header(graph, name, &target, defined.arena_bytes) })
}

/// The C header: the two functions, the buffers' sizes, every input's and output's
/// shape and place, and the layers that run in another precision than f32.
fn header(graph: &Graph, name: &str, target: &str, arena_bytes: usize) -> String {
    let upper = name.to_ascii_uppercase();
    let mut text = String::new();
    let mut line = |s: String| {
        text.push_str(&s);
        text.push('\n');
    };
    line(format!(
        "/* {name}.h: network `{}` compiled by cnnc (Cranelift), batch size fixed at build time. */",
        graph.name
    ));
    line(format!("/* Target: {target}. */"));
    line(format!("#ifndef {upper}_H"));
    line(format!("#define {upper}_H"));
    line(String::new());
    line("#include <stddef.h>".into());
    line(String::new());
    line("#ifdef __cplusplus".into());
    line("extern \"C\" {".into());
    line("#endif".into());
    line(String::new());
    line("/* Tensors are float32, row-major (NCHW), batch first. */".into());
    let order = graph.topo_order().unwrap_or_default();
    let reduced: Vec<_> =
        order.iter().map(|&id| graph.node(id)).filter(|n| n.precision != crate::precision::Precision::F32).collect();
    if !reduced.is_empty() {
        line("/* Layers that do not run in f32 (every other layer does); bf16: weights and the".into());
        line("   layer's input rounded to bf16 (to nearest even), f32 accumulation, bias and epilogue: */".into());
        if reduced.iter().any(|n| n.precision.is_int8()) {
            line("/* int8: weights s8 per output channel, the layer's input u8 with the scale and zero".into());
            line("   point given, exact integer sums, then f32 rescaling, bias and epilogue: */".into());
        }
        for node in reduced {
            let detail = match node.precision {
                crate::precision::Precision::Int8(q) => {
                    format!(" (input scale {:e}, zero point {})", q.scale(), q.zero_point())
                }
                _ => String::new(),
            };
            line(format!("/*   `{}` ({}): {}{detail} */", node.name, node.op.mnemonic(), node.precision));
        }
    }
    let mut offset = 0usize;
    line("/* Inputs, one after another in `in`: */".into());
    for &id in &graph.inputs {
        let node = graph.node(id);
        let input_name = match &node.op {
            Op::Input { name } => name.clone(),
            _ => node.name.clone(),
        };
        let floats: usize = node.shape.iter().product();
        line(format!("/*   `{input_name}`: {}, {floats} floats from in[{offset}] */", fmt_shape(&node.shape)));
        offset += floats;
    }
    line(format!("#define {upper}_INPUT_FLOATS {offset}"));
    let input_floats = offset;
    let mut offset = 0usize;
    line("/* Outputs, one after another in `out`: */".into());
    for output in &graph.outputs {
        let shape = &graph.node(output.node).shape;
        let floats: usize = shape.iter().product();
        line(format!("/*   `{}`: {}, {floats} floats from out[{offset}] */", output.name, fmt_shape(shape)));
        offset += floats;
    }
    line(format!("#define {upper}_OUTPUT_FLOATS {offset}"));
    line(format!("#define {upper}_ARENA_BYTES {arena_bytes}"));
    line("/* The same sizes as constants named after the functions, for token pasting. */".into());
    line(format!(
        "enum {{ {name}_input_floats = {input_floats}, {name}_output_floats = {offset}, {name}_arena_size = {arena_bytes} }};"
    ));
    line(String::new());
    line(format!("/* Bytes of scratch memory `{name}_infer` needs (= {upper}_ARENA_BYTES). */"));
    line(format!("size_t {name}_arena_bytes(void);"));
    line(String::new());
    line("/* Runs the network: reads `in`, writes `out`, uses `arena` (any alignment, at least".into());
    line(format!("   {name}_arena_bytes() bytes) as scratch. No global state: threads may call it at"));
    line("   once with their own arenas. Returns 0. */".into());
    line(format!("int {name}_infer(const float *in, float *out, void *arena);"));
    line(String::new());
    line(format!("/* The same run shared by `parts` threads (1 to {MAX_PARTS}) that call this at once with"));
    line("   the same buffers and their own `part` (0 to parts - 1). Between layers each calls".into());
    line("   `sync(sync_ctx)`, which must return only once all `parts` threads have called it (a".into());
    line("   barrier). When every call has returned, `out` holds the result. The arena must".into());
    line(format!("   hold {name}_arena_bytes() bytes. Returns 0, or 1 if `part` or `parts` is out of range. */"));
    line(format!("int {name}_infer_part(const float *in, float *out, void *arena, size_t part, size_t parts,"));
    line("    void (*sync)(void *sync_ctx), void *sync_ctx);".into());
    line(String::new());
    line("#ifdef __cplusplus".into());
    line("}".into());
    line("#endif".into());
    line(String::new());
    line(format!("#endif /* {upper}_H */"));
    text
}
