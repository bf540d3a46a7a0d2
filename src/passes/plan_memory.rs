//! `plan_memory`: gives every intermediate value an offset in one arena, reusing the
//! space of values that are dead, and eliminates concatenations.
//!
//! Liveness comes from the topological order the backends run: a value is live from the
//! node that computes it to its last user. Offsets are chosen first-fit among free
//! ranges in order of birth (freed neighbours merge), sizes rounded up to 64 bytes. An
//! elementwise op (activation, scale-shift, scale, flatten, a residual epilogue's add)
//! whose first operand dies at it reuses that operand's slot (in place). Ops that move
//! values (slice, channel_shuffle, permute) or read a whole row before writing it
//! (layer_norm) get a slot of their own.
//!
//! Concat elimination: an operand of a channel `concat` is computed straight into its
//! channel slice of the concat's slot (`MemoryPlan::in_concat`), so the concat copies
//! nothing for it; a concat whose operands are all placed so has no kernel at all
//! ([`concat_is_free`]). Nested concats (DenseNet's chain, where each concat is an operand
//! of the next) place their operands in the outermost slot. The concat and its placed
//! operands share one allocation, live from the first of them to be computed until the
//! last of them dies, and none of them is computed in place over another value.
//! Requires: batch 1, where a slice of channels is contiguous (at batch N it is N
//! strided pieces, which the kernels do not write; those concats copy); the concat and
//! the operand in the arena (not a network input or output); the operand read once by the
//! concat and placed in one concat only (the last to read it).
//!
//! Leaves alone: inputs and outputs (they live in the caller's buffers); the graph itself.
//! Always reports no change to the graph (it only records `Graph::memory`).

use std::collections::{BTreeMap, HashMap};

use crate::ir::{Graph, MemoryPlan, NodeId, Op, Slot};

const ALIGN: usize = 64;

/// Whether an op may write its result over its first operand (elementwise ops).
pub fn can_run_in_place(op: &Op) -> bool {
    matches!(
        op,
        Op::Activation(_)
            | Op::ScaleShift
            | Op::Scale
            | Op::Flatten
            | Op::Reshape { .. }
            | Op::Identity
            | Op::Dropout { .. }
            | Op::StochasticDepth { .. }
    )
}

/// Whether a planned concat has nothing left to copy: every operand was computed in its
/// slice of the concat's slot.
pub fn concat_is_free(graph: &Graph, id: NodeId) -> bool {
    let Some(plan) = &graph.memory else { return false };
    matches!(graph.node(id).op, Op::Concat) && graph.operands(id).iter().all(|o| plan.in_concat.get(o) == Some(&id))
}

/// The byte offset of each operand's slice in a channel concat's value, per image.
pub fn concat_offsets(graph: &Graph, id: NodeId) -> Vec<usize> {
    let mut offset = 0;
    graph
        .operands(id)
        .iter()
        .map(|&operand| {
            let at = offset;
            offset += 4 * graph.node(operand).shape.iter().skip(1).product::<usize>();
            at
        })
        .collect()
}

/// Chooses which concat operands are computed in place: value -> (the allocation it
/// lives in, named by its outermost concat, and its byte offset there), plus
/// `in_concat` (value -> the concat that reads it in place).
fn place_concat_operands(
    graph: &Graph,
    order: &[NodeId],
    in_arena: &dyn Fn(NodeId) -> bool,
) -> (HashMap<NodeId, (NodeId, usize)>, BTreeMap<NodeId, NodeId>) {
    let mut place: HashMap<NodeId, (NodeId, usize)> = HashMap::new();
    let mut in_concat = BTreeMap::new();
    // Users before operands: an outer concat places an inner one before the inner one
    // places its own operands.
    for &id in order.iter().rev() {
        let node = graph.node(id);
        if !matches!(node.op, Op::Concat) || !node.epilogue.is_empty() || node.shape[0] != 1 || !in_arena(id) {
            continue;
        }
        let (root, base) = place.get(&id).copied().unwrap_or((id, 0));
        let operands = graph.operands(id);
        for (&operand, offset) in operands.iter().zip(concat_offsets(graph, id)) {
            let once = operands.iter().filter(|&&o| o == operand).count() == 1;
            if once && in_arena(operand) && !place.contains_key(&operand) {
                place.insert(operand, (root, base + offset));
                in_concat.insert(operand, id);
            }
        }
    }
    (place, in_concat)
}

pub fn plan_memory(graph: &mut Graph) -> bool {
    let Some(order) = graph.topo_order() else { return false };
    let position: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let last_use: HashMap<NodeId, usize> = order
        .iter()
        .map(|id| (*id, graph.users(*id).iter().map(|u| position[u]).max().unwrap_or(position[id])))
        .collect();
    let in_arena = |id: NodeId| !matches!(graph.node(id).op, Op::Input { .. }) && !graph.is_output(id);
    let rounded = |id: NodeId| (4 * graph.node(id).shape.iter().product::<usize>()).div_ceil(ALIGN) * ALIGN;

    let (place, in_concat) = place_concat_operands(graph, &order, &in_arena);
    // Each allocation shared by a concat and its placed operands dies with the last of
    // them.
    let mut group_death: HashMap<NodeId, usize> = HashMap::new();
    for (&member, &(root, _)) in &place {
        for id in [member, root] {
            let death = group_death.entry(root).or_insert(0);
            *death = (*death).max(last_use[&id]);
        }
    }
    let grouped = |id: NodeId| place.contains_key(&id) || group_death.contains_key(&id);

    // Free ranges by offset; the arena grows at the end when nothing fits.
    let mut free: BTreeMap<usize, usize> = BTreeMap::new();
    let mut arena_bytes = 0usize;
    let mut slots: BTreeMap<NodeId, Slot> = BTreeMap::new();
    // The allocation of each concat group, by its root.
    let mut groups: HashMap<NodeId, Slot> = HashMap::new();
    let mut unplanned_bytes = 0usize;
    // Allocations whose last use is at each position, to free after that node runs.
    let mut dying: HashMap<usize, Vec<Slot>> = HashMap::new();

    for (index, &id) in order.iter().enumerate() {
        let node = graph.node(id);
        if in_arena(id) {
            let bytes = rounded(id);
            unplanned_bytes += bytes;
            let slot = if grouped(id) {
                let (root, offset) = place.get(&id).copied().unwrap_or((id, 0));
                let group = *groups.entry(root).or_insert_with(|| {
                    let slot = allocate(&mut free, &mut arena_bytes, rounded(root));
                    dying.entry(group_death[&root]).or_default().push(slot);
                    slot
                });
                let bytes = if root == id { group.bytes } else { 4 * node.shape.iter().product::<usize>() };
                Slot { offset: group.offset + offset, bytes }
            } else {
                let operands = graph.op_operands(id);
                let in_place = operands.first().copied().filter(|&operand| {
                    can_run_in_place(&node.op)
                        && !grouped(operand)
                        && graph.operands(id).iter().filter(|&&o| o == operand).count() == 1
                        && last_use[&operand] == index
                        && slots.get(&operand).is_some_and(|s| s.bytes == bytes)
                });
                match in_place {
                    Some(operand) => {
                        // Take over the operand's slot: it must not be freed when the
                        // operand dies here.
                        let slot = slots[&operand];
                        if let Some(list) = dying.get_mut(&index) {
                            list.retain(|&d| d != slot);
                        }
                        slot
                    }
                    None => allocate(&mut free, &mut arena_bytes, bytes),
                }
            };
            slots.insert(id, slot);
            if !grouped(id) {
                dying.entry(last_use[&id]).or_default().push(slot);
            }
        }
        for dead in dying.remove(&index).unwrap_or_default() {
            release(&mut free, dead);
        }
    }
    graph.memory = Some(MemoryPlan { slots, arena_bytes, unplanned_bytes, in_concat });
    false
}

fn allocate(free: &mut BTreeMap<usize, usize>, arena_bytes: &mut usize, bytes: usize) -> Slot {
    if let Some((&offset, &size)) = free.iter().find(|&(_, &size)| size >= bytes) {
        free.remove(&offset);
        if size > bytes {
            free.insert(offset + bytes, size - bytes);
        }
        return Slot { offset, bytes };
    }
    // Grow the arena, starting inside a free range that touches its end.
    let offset = match free.iter().next_back() {
        Some((&offset, &size)) if offset + size == *arena_bytes => {
            free.remove(&offset);
            offset
        }
        _ => *arena_bytes,
    };
    *arena_bytes = offset + bytes;
    Slot { offset, bytes }
}

fn release(free: &mut BTreeMap<usize, usize>, slot: Slot) {
    let mut offset = slot.offset;
    let mut size = slot.bytes;
    // Merge with the free neighbours.
    if let Some((&before, &before_size)) = free.range(..offset).next_back()
        && before + before_size == offset
    {
        free.remove(&before);
        offset = before;
        size += before_size;
    }
    if let Some(&after_size) = free.get(&(offset + size)) {
        free.remove(&(offset + size));
        size += after_size;
    }
    free.insert(offset, size);
}
