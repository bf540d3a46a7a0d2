//! Runs LeNet-5, compiled into this program by `build.rs`, on one input and prints the
//! output values one per line.
//!
//! Usage: `embed_rust [INPUT.f32]`: the input is a raw native-endian float32 file of
//! `lenet5::INPUT_LEN` values; without one, a deterministic input is made up.

include!(concat!(env!("OUT_DIR"), "/lenet5.rs"));

fn main() {
    let mut input = [0.0f32; lenet5::INPUT_LEN];
    match std::env::args_os().nth(1) {
        Some(path) => {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| {
                eprintln!("cannot read {}: {e}", path.display());
                std::process::exit(1)
            });
            if bytes.len() != 4 * input.len() {
                eprintln!("{}: expected exactly {} float32 values", path.display(), input.len());
                std::process::exit(1);
            }
            for (value, chunk) in input.iter_mut().zip(bytes.chunks_exact(4)) {
                *value = f32::from_ne_bytes(chunk.try_into().expect("4 bytes"));
            }
        }
        None => {
            for (i, value) in input.iter_mut().enumerate() {
                *value = deterministic_input(i);
            }
        }
    }
    let output = lenet5::infer(&input);
    for value in output {
        println!("{value:?}");
    }
}

/// The made-up input: a smooth pattern in [-1, 1], the same on every machine.
pub fn deterministic_input(i: usize) -> f32 {
    ((i % 97) as f32 / 48.0) - 1.0
}
