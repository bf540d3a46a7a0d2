//! The memory a network needs, computed from the graph alone (shapes, parameters, the
//! memory plan) before anything is allocated, and the limit it is checked against.
//!
//! `cnnc run`, `build` and `bench` call [`check`] after elaborating the network and
//! before binding weights, and again after `--fully-conv` changed the shapes, so that a
//! network too large for the machine is refused with an error naming its size and the
//! flag that raises the limit (`--max-memory`), never an allocation failure (SIGABRT).
//! `check` and `summary` report the same figures ([`need`]).

use serde::Serialize;

use crate::ir::{Graph, Op};

/// The memory one network needs to run, in bytes, by kind. Every figure is an upper
/// estimate of what the backends allocate (the CPU backend's repacked weights and code
/// included, which the reference interpreter does not need).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryNeed {
    /// Parameter values as bound (float32), BatchNorm statistics included.
    pub weights: u64,
    /// The CPU backend's repacked copy of the conv and linear weights (output channels
    /// rounded up to whole vectors; 3x3 filters counted at the 6x6 of Winograd F(4x4)).
    pub packed_weights: u64,
    /// The intermediates: the memory plan's arena (planned on a copy if the graph has
    /// no plan yet).
    pub activations: u64,
    /// The input tensors, batch included.
    pub inputs: u64,
    /// The output tensors, batch included.
    pub outputs: u64,
    /// Native code and per-kernel data, estimated per node.
    pub code: u64,
    /// The sum of the above.
    pub total: u64,
}

/// The estimate of native code per node, and for the module as a whole.
const CODE_PER_NODE: u64 = 16 << 10;
const CODE_BASE: u64 = 1 << 20;

/// Why a network cannot run within the budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetError(pub String);

impl std::fmt::Display for BudgetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BudgetError {}

/// Bytes of `elements` float32 values, or `None` on overflow.
fn float_bytes(shape: &[usize]) -> Option<u128> {
    shape.iter().try_fold(4u128, |acc, &d| acc.checked_mul(d as u128))
}

fn too_large() -> BudgetError {
    BudgetError("the network's memory does not fit in 64 bits: it cannot run on any machine".to_string())
}

/// The memory `graph` needs, with checked arithmetic. Uses the graph's memory plan, or
/// plans a copy of its structure (no weights copied) when it has none.
pub fn need(graph: &Graph) -> Result<MemoryNeed, BudgetError> {
    let mut weights = 0u128;
    let mut packed = 0u128;
    let mut nodes = 0u128;
    for id in graph.node_ids() {
        let node = graph.node(id);
        nodes += 1;
        for param in &node.params {
            weights = weights.checked_add(float_bytes(&param.shape).ok_or_else(too_large)?).ok_or_else(too_large)?;
        }
        let (filters, winograd) = match &node.op {
            Op::Conv(c) => (true, c.kernel.h == 3 && c.kernel.w == 3 && c.stride.h == 1 && c.stride.w == 1),
            Op::Linear { .. } => (true, false),
            _ => (false, false),
        };
        if filters {
            for param in &node.params {
                let mut shape = param.shape.clone();
                if let Some(out) = shape.first_mut() {
                    *out = out.div_ceil(16).saturating_mul(16);
                }
                let mut bytes = float_bytes(&shape).ok_or_else(too_large)?;
                if winograd && shape.len() == 4 {
                    // 6x6 transformed filters in place of 3x3.
                    bytes = bytes.checked_mul(4).ok_or_else(too_large)?;
                }
                packed = packed.checked_add(bytes).ok_or_else(too_large)?;
            }
        }
    }
    let mut inputs = 0u128;
    for &id in &graph.inputs {
        inputs = inputs.checked_add(float_bytes(&graph.node(id).shape).ok_or_else(too_large)?).ok_or_else(too_large)?;
    }
    let mut outputs = 0u128;
    for output in &graph.outputs {
        let bytes = float_bytes(&graph.node(output.node).shape).ok_or_else(too_large)?;
        outputs = outputs.checked_add(bytes).ok_or_else(too_large)?;
    }
    let activations = match &graph.memory {
        Some(plan) => plan.arena_bytes as u128,
        None => {
            // Every shape is at most `shape::MAX_ELEMENTS`, so the plan's own arithmetic
            // cannot overflow for the at most `front::lower::MAX_NODES` nodes.
            let mut copy = graph.structure();
            crate::passes::plan_memory(&mut copy);
            copy.memory.as_ref().map_or(0, |plan| plan.arena_bytes as u128)
        }
    };
    let code = (CODE_BASE as u128) + nodes * CODE_PER_NODE as u128;
    let total = [weights, packed, activations, inputs, outputs, code]
        .iter()
        .try_fold(0u128, |acc, &x| acc.checked_add(x))
        .ok_or_else(too_large)?;
    let fit = |x: u128| u64::try_from(x).map_err(|_| too_large());
    Ok(MemoryNeed {
        weights: fit(weights)?,
        packed_weights: fit(packed)?,
        activations: fit(activations)?,
        inputs: fit(inputs)?,
        outputs: fit(outputs)?,
        code: fit(code)?,
        total: fit(total)?,
    })
}

/// The machine's physical memory in bytes: `MemTotal` of /proc/meminfo, else sysconf.
pub fn physical_memory() -> Option<u64> {
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo")
        && let Some(line) = text.lines().find(|l| l.starts_with("MemTotal:"))
        && let Some(kib) = line.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok())
    {
        return kib.checked_mul(1024);
    }
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
        if pages > 0 && size > 0 {
            return (pages as u64).checked_mul(size as u64);
        }
    }
    None
}

/// The process's address-space limit (`ulimit -v`, RLIMIT_AS), if one is set.
pub fn address_space_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0 && limit.rlim_cur != libc::RLIM_INFINITY {
            #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere.
            return Some(limit.rlim_cur as u64);
        }
    }
    None
}

/// When neither physical memory nor an address-space limit can be read.
const FALLBACK_LIMIT: u64 = 4 << 30;

/// The default budget: half of the smaller of physical memory and the address-space
/// limit (the other half is for the rest of the process: the program's own code, the
/// graph, threads' stacks, the compiler's working memory).
pub fn default_limit() -> u64 {
    match (physical_memory(), address_space_limit()) {
        (Some(a), Some(b)) => a.min(b) / 2,
        (Some(a), None) | (None, Some(a)) => a / 2,
        (None, None) => FALLBACK_LIMIT,
    }
}

/// Checks `graph` against `limit` bytes (`None`: [`default_limit`]); returns what it
/// needs, or an error that names the size and the flag that raises the limit.
pub fn check(graph: &Graph, limit: Option<u64>) -> Result<MemoryNeed, BudgetError> {
    let need = need(graph)?;
    let (limit, whence) = match limit {
        Some(limit) => (limit, "set by --max-memory"),
        None => (default_limit(), "half of this machine's memory"),
    };
    if need.total > limit {
        return Err(BudgetError(format!(
            "network `{}` needs {} of memory ({}), more than the limit of {} ({whence}); \
             raise it with --max-memory SIZE (for example --max-memory {})",
            graph.name,
            fmt_bytes(need.total),
            breakdown(&need),
            fmt_bytes(limit),
            suggest_size(need.total),
        )));
    }
    Ok(need)
}

/// `weights 1.0 GiB, packed weights ..., ...`: the nonzero parts of a need.
pub fn breakdown(need: &MemoryNeed) -> String {
    [
        ("weights", need.weights),
        ("packed weights", need.packed_weights),
        ("activations", need.activations),
        ("input", need.inputs),
        ("output", need.outputs),
        ("code", need.code),
    ]
    .iter()
    .filter(|(_, bytes)| *bytes > 0)
    .map(|(what, bytes)| format!("{what} {}", fmt_bytes(*bytes)))
    .collect::<Vec<_>>()
    .join(", ")
}

/// A `--max-memory` value a little above `bytes`, in whole GiB.
fn suggest_size(bytes: u64) -> String {
    format!("{}G", (bytes >> 30).saturating_add(1))
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn fmt_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// Parses a `--max-memory` size: bytes, or a number with a binary suffix (`K`, `M`,
/// `G`, `T`, optionally followed by `iB` or `B`): `512M`, `16G`, `1.5GiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("`{text}` is not a size (write bytes, or a number with K, M, G or T)")),
    };
    let value: f64 = number.parse().map_err(|_| format!("`{text}` is not a size (for example 512M or 16G)"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes >= u64::MAX as f64 {
        return Err(format!("`{text}` is not a size between 1 byte and 16 EiB"));
    }
    Ok(bytes as u64)
}
