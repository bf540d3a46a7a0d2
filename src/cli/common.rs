//! The steps several commands share: reading files within limits, building the graph the
//! shape arguments ask for, binding weights; and the error every command returns.

use std::path::Path;

use cnnc::front::BuildOptions;
use cnnc::ir::Graph;
use cnnc::passes;

use super::args::{ShapeArgs, WeightArgs};

/// An error in the user's input, already rendered; exit code 1.
pub struct UserError(pub String);

impl From<String> for UserError {
    fn from(s: String) -> Self {
        UserError(s)
    }
}

/// An `error: ...` line from any displayable error.
pub fn error(e: impl std::fmt::Display) -> UserError {
    UserError(format!("error: {e}"))
}

/// Source files larger than this are refused rather than read whole.
const MAX_SOURCE_BYTES: u64 = 16 << 20;
/// Weights files larger than this are refused (VGG-16 in f32 is 553 MB).
const MAX_WEIGHTS_BYTES: u64 = 8 << 30;
/// Input tensors and images larger than this are refused.
pub const MAX_INPUT_BYTES: u64 = 2 << 30;

/// Reads a whole file, refusing directories and files over `limit` bytes (also those
/// whose size is unknown beforehand, such as /dev/zero); `what` names the file's role in
/// the messages.
pub fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, UserError> {
    cnnc::io::read_file(path, limit, what).map_err(error)
}

/// Refuses a network that needs more memory than the budget, naming the size and the
/// flag; checked before weights are bound or any tensor is allocated.
pub fn check_budget(path: &Path, graph: &Graph, max_memory: Option<u64>) -> Result<(), UserError> {
    cnnc::budget::check(graph, max_memory).map(|_| ()).map_err(|e| UserError(format!("error: {}: {e}", path.display())))
}

fn parse_input_shape(text: &str) -> Result<Vec<usize>, UserError> {
    let dims: Result<Vec<usize>, _> = text.split(['x', 'X', ',']).map(|d| d.trim().parse::<usize>()).collect();
    match dims {
        Ok(dims) if !dims.is_empty() && dims.iter().all(|&d| (1..=1 << 24).contains(&d)) => Ok(dims),
        _ => Err(UserError(format!(
            "error: --input-shape `{text}` is not CxHxW with positive sizes (for example 3x224x224)"
        ))),
    }
}

/// Builds the graph the shape arguments ask for, binds weights if given, and applies
/// --fully-conv (after binding: the weights are reshaped at the declared size).
pub fn prepare(path: &Path, shape: &ShapeArgs, batch: usize, weights: Option<&WeightArgs>) -> Result<Graph, UserError> {
    let input_shape = shape.input_shape.as_deref().map(parse_input_shape).transpose()?;
    let options = BuildOptions { batch, input_shape: if shape.fully_conv { None } else { input_shape.clone() } };
    let mut graph = load(path, &options)?;
    if let Some(weights) = weights {
        check_budget(path, &graph, weights.memory.max_memory)?;
        bind_weights(&mut graph, weights)?;
    }
    if shape.fully_conv {
        let declared: Vec<usize> = graph.inputs.first().map(|&i| graph.node(i).shape[1..].to_vec()).unwrap_or_default();
        let target = input_shape.unwrap_or(declared);
        passes::make_fully_convolutional(&mut graph, &target, shape.average)
            .map_err(|e| UserError(format!("error: {}: --fully-conv: {e}", path.display())))?;
        if let Some(weights) = weights {
            check_budget(path, &graph, weights.memory.max_memory)?;
        }
    }
    Ok(graph)
}

/// Reads, parses and elaborates a program; its errors rendered with their locations.
pub fn load(path: &Path, options: &BuildOptions) -> Result<Graph, UserError> {
    let bytes = read_limited(path, MAX_SOURCE_BYTES, "program")?;
    let file_name = path.display().to_string();
    cnnc::front::compile_bytes(&bytes, options).map_err(|diags| {
        let source = String::from_utf8_lossy(&bytes);
        let mut text = cnnc::diag::render(&file_name, &source, &diags);
        if diags.len() > 1 {
            text += &format!("error: {} errors in {file_name}\n", diags.len());
        }
        UserError(text)
    })
}

fn bind_weights(graph: &mut Graph, args: &WeightArgs) -> Result<(), UserError> {
    graph.weights = match &args.source.weights {
        Some(path) => {
            let bytes = cnnc::io::map_file(path, MAX_WEIGHTS_BYTES, "weights file").map_err(error)?;
            let max_rows = if args.verbose { None } else { Some(cnnc::weights::DEFAULT_LISTED_LAYERS) };
            cnnc::weights::load_safetensors_listing(&bytes, graph, args.allow_unused_weights, max_rows).map_err(
                |e| {
                    // The conversion command of a torch.save file, with this file's names.
                    let message = e
                        .to_string()
                        .replace("FILE.pt", &path.display().to_string())
                        .replace("FILE.safetensors", &path.with_extension("safetensors").display().to_string());
                    UserError(format!("error: {}: {message}", path.display()))
                },
            )?
        }
        None => cnnc::weights::random_weights(graph, args.seed),
    };
    Ok(())
}

/// The error of a feature this version does not have.
pub fn not_built(what: &str) -> UserError {
    UserError(format!("error: {what} is not built yet in this version of cnnc"))
}
