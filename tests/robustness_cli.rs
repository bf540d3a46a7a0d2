//! Issue 17 at the command line: every input either works or gets a clear error (exit
//! 1 and a message), never an abort, a panic or runaway memory. The commands run under
//! a 4 GiB address-space limit (`setrlimit(RLIMIT_AS)`, as `prlimit --as` would set it),
//! so an allocation the budget failed to stop would abort them (SIGABRT), and the test
//! would see a signal instead of exit 1.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ADDRESS_SPACE: u64 = 4 << 30;

fn cnnc(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cnnc"));
    command.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: ADDRESS_SPACE, rlim_max: ADDRESS_SPACE };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.output().unwrap()
}

/// Runs cnnc and expects exit 1 with `message` in its error output.
fn fails_with(args: &[&str], message: &str) -> String {
    let out = cnnc(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "cnnc {}: {:?}\n{stderr}", args.join(" "), out.status);
    assert!(stderr.contains(message), "cnnc {}: no `{message}` in\n{stderr}", args.join(" "));
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn succeeds(args: &[&str]) -> String {
    let out = cnnc(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "cnnc {}: {:?}\n{stderr}", args.join(" "), out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cnnc-robust-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Finding 2: networks that pass `check` but need more memory than there is are refused
/// by `run`, `build` and `bench` before anything is allocated, naming the size and the
/// flag.
#[test]
fn huge_networks_are_refused_before_allocating() {
    let dir = temp_dir("huge");
    let linear = write(&dir, "linear.cnn", "network n { input x: [3, 64, 64]; flatten; linear(16777216) }");
    let input = write(&dir, "input.cnn", "network n { input x: [3, 65536, 65536]; relu }");
    let npy = dir.join("x.npy");
    std::fs::write(&npy, cnnc::io::write_npy(&cnnc::tensor::Tensor::zeros(vec![1, 3, 64, 64]))).unwrap();
    let npy = npy.display().to_string();
    let out = dir.join("out").display().to_string();
    for net in [&linear, &input] {
        succeeds(&["check", net]);
        fails_with(&["bench", net, "--runs", "1"], "--max-memory");
        fails_with(&["build", net, "--random-weights", "-o", &out], "--max-memory");
    }
    let text = fails_with(&["run", &linear, "--random-weights", "--input", &npy], "--max-memory");
    assert!(text.contains("TiB") || text.contains("GiB"), "{text}");
    fails_with(
        &["build", "examples/lenet5.cnn", "--random-weights", "--input-shape", "3x100000x100000", "-o", &out],
        "--max-memory",
    );
    fails_with(
        &[
            "run",
            "examples/alexnet.cnn",
            "--random-weights",
            "--fully-conv",
            "--input-shape",
            "3x100000x100000",
            "--input",
            "examples/digits/3.png",
        ],
        "--max-memory",
    );
    // The flag sets the limit, and the message names it.
    let text = fails_with(
        &["run", "examples/lenet5.cnn", "--random-weights", "--input", &npy, "--max-memory", "1M"],
        "more than the limit of 1.0 MiB (set by --max-memory)",
    );
    assert!(text.contains("weights"), "{text}");
    assert!(!Path::new(&out).join("n.o").exists());
    // `check` and `summary` report what a network needs.
    assert!(succeeds(&["check", "examples/resnet18.cnn"]).contains("MiB of memory to run"));
    assert!(succeeds(&["summary", "examples/resnet18.cnn"]).contains("memory to run: "));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 3: a string that is no target triple panicked inside Cranelift.
#[test]
fn invalid_target_triples_exit_1() {
    let dir = temp_dir("triple");
    let out = dir.display().to_string();
    for triple in ["nonsense-unknown-linux", ""] {
        fails_with(
            &["build", "examples/lenet5.cnn", "--random-weights", "--target-triple", triple, "-o", &out],
            "target triple",
        );
    }
    // A CPU level that is not one of the three is a bad value, exit 1, with the choices.
    let cpu = cnnc(&["build", "examples/lenet5.cnn", "--random-weights", "--cpu", "pentium", "-o", &out]);
    assert_eq!(cpu.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&cpu.stderr);
    assert!(stderr.contains("pentium") && stderr.contains("x86-64-v3"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 4: a layer name of 65,536 characters or more panicked in fixed-width tables.
#[test]
fn long_layer_names_are_elided_in_tables() {
    let dir = temp_dir("names");
    let name = "a".repeat(70_000);
    let net = write(&dir, "long.cnn", &format!("network n {{ input x: [3, 8, 8]; {name}: conv(4, 3, pad=1); relu }}"));
    let npy = dir.join("x.npy");
    std::fs::write(&npy, cnnc::io::write_npy(&cnnc::tensor::Tensor::zeros(vec![1, 3, 8, 8]))).unwrap();
    let npy = npy.display().to_string();
    for args in [
        vec!["summary", &net],
        vec!["bench", &net, "--profile", "--runs", "1", "--warmup", "0"],
        vec!["run", &net, "--random-weights", "--input", &npy, "--compare", "cpu,reference"],
    ] {
        let text = succeeds(&args);
        assert!(text.contains("aaa...aaa"), "{}", &text[..text.len().min(500)]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 7: files of unknown size (/dev/zero) were read until memory ran out.
#[test]
fn endless_files_are_capped() {
    let dir = temp_dir("zero");
    let npy = dir.join("x.npy");
    std::fs::write(&npy, cnnc::io::write_npy(&cnnc::tensor::Tensor::zeros(vec![1, 1, 28, 28]))).unwrap();
    let npy = npy.display().to_string();
    fails_with(&["check", "/dev/zero"], "a program may be at most");
    // Under the 4 GiB limit the 8 GiB cap of a weights file is not reached: the read
    // runs out of memory first, which is an error too.
    let text = fails_with(&["run", "examples/lenet5.cnn", "--weights", "/dev/zero", "--input", &npy], "/dev/zero");
    assert!(text.contains("may be at most") || text.contains("too large to read"), "{text}");
    let text = fails_with(&["run", "examples/lenet5.cnn", "--random-weights", "--input", "/dev/zero"], "/dev/zero");
    assert!(text.contains("may be at most") || text.contains("too large to read"), "{text}");
    fails_with(
        &["run", "examples/lenet5.cnn", "--random-weights", "--input", &npy, "--top", "1", "--labels", "/dev/zero"],
        "may be at most",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 8: `--warmup` is bounded as `--runs` is.
#[test]
fn warmup_is_bounded() {
    let out = cnnc(&["bench", "examples/lenet5.cnn", "--warmup", "4000000000"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--warmup"));
}

/// Finding 9: a build that fails leaves the previous artifacts, never a new object beside
/// an old header.
#[test]
fn a_failed_build_leaves_the_old_artifacts() {
    let dir = temp_dir("atomic");
    let out = dir.display().to_string();
    succeeds(&["build", "examples/lenet5.cnn", "--random-weights", "-o", &out]);
    let object = std::fs::read(dir.join("lenet5.o")).unwrap();
    // The header cannot be replaced: a directory is in its place.
    std::fs::remove_file(dir.join("lenet5.h")).unwrap();
    std::fs::create_dir(dir.join("lenet5.h")).unwrap();
    fails_with(&["build", "examples/lenet5.cnn", "--random-weights", "--seed", "7", "-o", &out], "lenet5.h");
    assert_eq!(std::fs::read(dir.join("lenet5.o")).unwrap(), object, "the object was replaced");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "{left:?}");
    // A failing compile writes nothing either.
    std::fs::remove_dir(dir.join("lenet5.h")).unwrap();
    fails_with(&["build", "examples/lenet5.cnn", "--random-weights", "--target-triple", "bad", "-o", &out], "triple");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 6: 100,000 kernels ran out of memory mappings in the JIT (cranelift-jit maps
/// code and data separately, against `vm.max_map_count`, 65,530). The JIT refuses more
/// than `MAX_JIT_KERNELS` (40,000 were measured to work) with the limit stated.
#[test]
fn the_jit_states_its_kernel_limit() {
    let dir = temp_dir("many");
    let net = write(&dir, "many.cnn", "network n { input x: [1, 4, 4]; repeat 100000 { relu } }");
    let npy = dir.join("x.npy");
    std::fs::write(&npy, cnnc::io::write_npy(&cnnc::tensor::Tensor::zeros(vec![1, 1, 4, 4]))).unwrap();
    let npy = npy.display().to_string();
    fails_with(&["run", &net, "--random-weights", "--input", &npy, "-O0"], "the JIT compiles at most 40000");
    std::fs::remove_dir_all(&dir).unwrap();
}
