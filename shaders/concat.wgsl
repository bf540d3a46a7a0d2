// Concatenation along dimension 1, for a run of consecutive operands: each batch row of
// the output holds OUT_ROW values, of which these operands fill PART_ROW values from
// PART_OFFSET on. `part_value(n, r)` (generated) reads value `r` of the run's row `n`.
//
// Constants: TOTAL (= batch * PART_ROW), OUT_ROW, PART_ROW, PART_OFFSET.

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) num_workgroups: vec3<u32>) {
    let i = flat_index(gid, num_workgroups);
    if (i >= TOTAL) {
        return;
    }
    let n = i / PART_ROW;
    let r = i % PART_ROW;
    let out_index = n * OUT_ROW + PART_OFFSET + r;
    store_y(out_index, epilogue(out_index, part_value(n, r)));
}
