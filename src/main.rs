//! The `cnnc` binary; the command line is in `cli/`, the work in the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
