//! Compiles LeNet-5 with deterministic random weights into `OUT_DIR` and links it: the
//! module `lenet5` that `src/main.rs` runs.
//!
//! cnnc's tests run every example network through this crate too: a second model, the
//! module `network` that `src/bin/network.rs` runs, is the `.cnn` file, batch size and
//! weight seed given in `EMBED_RUST_NETWORK`, `EMBED_RUST_BATCH` and `EMBED_RUST_SEED`
//! (LeNet-5, 1 and 1 when unset). Changing them reruns only this script and relinks.

fn main() -> Result<(), cnnc::build::Error> {
    cnnc::build::Model::new("../lenet5.cnn").random_weights(1).compile()?;

    let setting = |name: &str, default: &str| -> String {
        println!("cargo:rerun-if-env-changed={name}");
        std::env::var(name).unwrap_or_else(|_| default.to_string())
    };
    let number = |name: &str| -> u64 {
        let text = setting(name, "1");
        text.parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number"))
    };
    let network = setting("EMBED_RUST_NETWORK", "../lenet5.cnn");
    let (batch, seed) = (number("EMBED_RUST_BATCH"), number("EMBED_RUST_SEED"));
    cnnc::build::Model::new(network).name("network").batch(batch as usize).random_weights(seed).compile()?;
    Ok(())
}
