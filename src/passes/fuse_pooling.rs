//! `fuse_pooling`: folds a windowed pooling into the convolution before it, so the
//! convolution's full-size output is never written to memory: the kernel computes, per
//! pooled value, the max or average of its window of epilogue(conv) values.
//!
//! Only for backends that run pooling epilogues (`Capabilities::fused_pooling`, the GPU);
//! the generic pipeline never runs it. Runs after `fuse_epilogues`, so that the
//! activation and residual between the conv and the pool are already in the conv's
//! epilogue, and before `plan_memory`.
//!
//! Rewrites: a conv N whose value has exactly one user, a `max_pool` or `avg_pool` P,
//! and is not a network output, when P's windows do not overlap (stride at least the
//! kernel in both dimensions): P becomes N's `epilogue.pool`, N takes P's shape, and P
//! goes away.
//!
//! Leaves alone:
//! - overlapping windows (AlexNet's and ResNet's 3x3 stride-2 pools): fused, every conv
//!   value under k x k windows at stride s would be computed about (k/s)^2 times (2.25
//!   for 3x3/2), which costs far more than the store and load it saves (AlexNet with its
//!   three pools fused by hand ran 1.5 times slower on lavapipe: 750 against 1140 ms);
//! - dilated max pools (the conv template's pooling stage has no dilation);
//! - global and adaptive pools: one output per plane would make one invocation compute a
//!   whole plane of the conv;
//! - values with several users or that are outputs (their unpooled value is needed),
//!   convs that already pool, and pools after anything but a conv.

use crate::ir::{Graph, Hw, Op, PoolEpilogue};

/// Whether a pooling's windows are disjoint, so that fusing computes each conv value at
/// most once.
fn windows_are_disjoint(pool: &PoolEpilogue) -> bool {
    let window = &pool.window;
    window.stride.h >= window.kernel.h && window.stride.w >= window.kernel.w
}

/// Whether the conv template's pooling stage computes this window: it walks the taps
/// one apart (no dilation).
fn fusable(pool: &PoolEpilogue) -> bool {
    pool.window.dilation == Hw::square(1)
}

pub fn fuse_pooling(graph: &mut Graph) -> bool {
    let mut changed = false;
    for id in graph.topo_order().unwrap_or_default() {
        if !graph.contains(id) {
            continue; // a pool fused earlier in the loop
        }
        let node = graph.node(id);
        if !matches!(node.op, Op::Conv(_)) || node.epilogue.pool.is_some() || graph.is_output(id) {
            continue;
        }
        let users = graph.users(id);
        let [user] = users[..] else { continue };
        let pool_node = graph.node(user);
        let Some(pool) = PoolEpilogue::of(&pool_node.op) else { continue };
        // A pool reads exactly one operand, so the conv is read once.
        if !pool_node.epilogue.is_empty() || !windows_are_disjoint(&pool) || !fusable(&pool) {
            continue;
        }
        let pooled_shape = pool_node.shape.clone();
        let conv = graph.node_mut(id);
        conv.epilogue.pool = Some(pool);
        conv.shape = pooled_shape;
        graph.replace_all_uses(user, id);
        graph.remove_node(user);
        changed = true;
    }
    changed
}
