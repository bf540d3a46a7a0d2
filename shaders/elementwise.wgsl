// One output value per invocation: `value(i)` (generated per op: a copy, a per-channel
// scale and shift, a broadcasting sum or product) followed by the node's epilogue.
//
// Constants: TOTAL (output values).

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) num_workgroups: vec3<u32>) {
    let i = flat_index(gid, num_workgroups);
    if (i >= TOTAL) {
        return;
    }
    store_y(i, epilogue(i, value(i)));
}
