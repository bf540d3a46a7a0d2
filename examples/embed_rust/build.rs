//! Compiles LeNet-5 with deterministic random weights into `OUT_DIR` and links it.

fn main() -> Result<(), cnnc::build::Error> {
    cnnc::build::Model::new("../lenet5.cnn").random_weights(1).compile()?;
    Ok(())
}
