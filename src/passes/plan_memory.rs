//! `plan_memory`: gives every intermediate value an offset in one arena, reusing the
//! space of values that are dead.
//!
//! Liveness comes from the topological order the backends run: a value is live from the
//! node that computes it to its last user. Offsets are chosen first-fit among free
//! ranges in order of birth (freed neighbours merge), sizes rounded up to 64 bytes. An
//! elementwise op (activation, scale-shift, flatten, a residual epilogue's add) whose
//! first operand dies at it reuses that operand's slot (in place).
//! Leaves alone: inputs and outputs (they live in the caller's buffers); the graph itself.
//! Always reports no change to the graph (it only records `Graph::memory`).

use std::collections::{BTreeMap, HashMap};

use crate::ir::{Graph, MemoryPlan, NodeId, Op, Slot};

const ALIGN: usize = 64;

/// Whether an op may write its result over its first operand (elementwise ops).
pub fn can_run_in_place(op: &Op) -> bool {
    matches!(
        op,
        Op::Relu | Op::LeakyRelu { .. } | Op::Sigmoid | Op::Tanh | Op::ScaleShift | Op::Flatten | Op::Dropout { .. }
    )
}

pub fn plan_memory(graph: &mut Graph) -> bool {
    let Some(order) = graph.topo_order() else { return false };
    let position: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let last_use: HashMap<NodeId, usize> = order
        .iter()
        .map(|id| (*id, graph.users(*id).iter().map(|u| position[u]).max().unwrap_or(position[id])))
        .collect();
    let in_arena = |id: NodeId| !matches!(graph.node(id).op, Op::Input { .. }) && !graph.is_output(id);

    // Free ranges by offset; the arena grows at the end when nothing fits.
    let mut free: BTreeMap<usize, usize> = BTreeMap::new();
    let mut arena_bytes = 0usize;
    let mut slots: BTreeMap<NodeId, Slot> = BTreeMap::new();
    let mut unplanned_bytes = 0usize;
    // Values whose last use is at each position, to free after that node runs.
    let mut dying: HashMap<usize, Vec<NodeId>> = HashMap::new();

    for (index, &id) in order.iter().enumerate() {
        let node = graph.node(id);
        if in_arena(id) {
            let bytes = (4 * node.shape.iter().product::<usize>()).div_ceil(ALIGN) * ALIGN;
            unplanned_bytes += bytes;
            let operands = graph.op_operands(id);
            let in_place = operands.first().copied().filter(|&operand| {
                can_run_in_place(&node.op)
                    && graph.operands(id).iter().filter(|&&o| o == operand).count() == 1
                    && last_use[&operand] == index
                    && slots.get(&operand).is_some_and(|s| s.bytes == bytes)
            });
            let slot = match in_place {
                Some(operand) => {
                    // Take over the operand's slot: it must not be freed when the
                    // operand dies here.
                    if let Some(list) = dying.get_mut(&index) {
                        list.retain(|&d| d != operand);
                    }
                    slots[&operand]
                }
                None => allocate(&mut free, &mut arena_bytes, bytes),
            };
            slots.insert(id, slot);
            dying.entry(last_use[&id]).or_default().push(id);
        }
        for dead in dying.remove(&index).unwrap_or_default() {
            release(&mut free, slots[&dead]);
        }
    }
    graph.memory = Some(MemoryPlan { slots, arena_bytes, unplanned_bytes });
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
