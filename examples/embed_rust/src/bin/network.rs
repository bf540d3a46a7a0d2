//! Runs the model `network` (see `build.rs`; LeNet-5 unless `EMBED_RUST_NETWORK` names
//! another) on a raw float32 input file and writes the raw float32 output file, as
//! `examples/embed_c/main.c` does: cnnc's tests run every example network through this.
//!
//! Usage: `network INPUT.f32 OUTPUT.f32` (native byte order, `network::INPUT_LEN` values
//! in, `network::OUTPUT_LEN` out).

include!(concat!(env!("OUT_DIR"), "/network.rs"));

fn main() {
    let args: Vec<std::path::PathBuf> = std::env::args_os().skip(1).map(Into::into).collect();
    let [input_path, output_path] = args.as_slice() else {
        eprintln!("usage: network INPUT.f32 OUTPUT.f32");
        std::process::exit(2);
    };
    let bytes = std::fs::read(input_path).unwrap_or_else(|e| {
        eprintln!("cannot read {}: {e}", input_path.display());
        std::process::exit(1)
    });
    if bytes.len() != 4 * network::INPUT_LEN {
        eprintln!("{}: expected exactly {} float32 values", input_path.display(), network::INPUT_LEN);
        std::process::exit(1);
    }
    let input: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_ne_bytes(c.try_into().expect("4 bytes"))).collect();
    let mut output = vec![0.0f32; network::OUTPUT_LEN];
    // Checked slices: the same call for every network (fixed-size arrays need the sizes).
    network::Model::new().infer_slices(&input, &mut output).expect("the lengths match the model");
    let bytes: Vec<u8> = output.iter().flat_map(|v| v.to_ne_bytes()).collect();
    std::fs::write(output_path, bytes).unwrap_or_else(|e| {
        eprintln!("cannot write {}: {e}", output_path.display());
        std::process::exit(1)
    });
}
