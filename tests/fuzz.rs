//! A seeded, bounded mutation fuzzer over the examples and the test programs, run by
//! every `cargo test`: each mutant goes through what `cnnc check`, `summary` and `ir` do
//! (elaboration, the summary table, the IR text, the -O2 pipeline, the memory budget)
//! and must come back in time, without a panic and within a memory budget.
//!
//! Longer runs outside CI: `CNNC_FUZZ_CASES=200000 CNNC_FUZZ_SEED=7 cargo test --test
//! fuzz -- --nocapture`. A failing case prints its seed and index, and the mutant is
//! written to `target/fuzz-failure.cnn`.
//!
//! The test binary counts live heap bytes with a global allocator: each case's peak is
//! checked against [`CASE_MEMORY`], and one allocation past it is refused (the process
//! aborts with "memory allocation failed", which fails the test as loudly as a panic).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cnnc::front::{BuildOptions, compile_bytes};
use cnnc::passes::OptLevel;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The most heap one case may hold at once. A program of `front::lower::MAX_NODES`
/// layers takes about 150 MiB; anything near a gigabyte is a runaway.
const CASE_MEMORY: usize = 1 << 30;

// SAFETY: forwards to the system allocator; only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > CASE_MEMORY {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > CASE_MEMORY {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Everything `check`, `summary` and `ir` do with a program, as library calls.
fn exercise(bytes: &[u8]) {
    let Ok(mut graph) = compile_bytes(bytes, &BuildOptions::default()) else { return };
    cnnc::ir::verify(&graph).expect("elaboration produced an invalid graph");
    let summary = cnnc::summary::summarize(&graph);
    let _ = cnnc::summary::render_table(&summary);
    let _ = cnnc::ir::print(&graph);
    let _ = cnnc::budget::need(&graph);
    cnnc::passes::optimize(&mut graph, OptLevel::O2).expect("the -O2 pipeline failed");
    let _ = cnnc::ir::print(&graph);
    let _ = cnnc::budget::need(&graph);
}

/// Tokens that the mutator splices in: the language's syntax, its limits and its
/// troublemakers (huge counts, deep nesting, long names).
const TOKENS: &[&str] = &[
    "repeat 1000000000 {",
    "repeat 3 {",
    "}",
    "{",
    "(",
    ")",
    "[",
    "]",
    "|>",
    ";",
    "\n",
    ",",
    "=",
    ":",
    "-",
    "- - - - - - - -",
    "+",
    "*",
    "/",
    "0",
    "1",
    "3",
    "-1",
    "99999999999",
    "9223372036854775807",
    "1e999",
    "0.5",
    "conv(",
    "conv(64, 3, pad=1)",
    "linear(1000000000)",
    "linear(16777216)",
    "relu",
    "max_pool(2)",
    "avg_pool(3, stride=2)",
    "batch_norm",
    "flatten",
    "add(in)",
    "concat(",
    "seq {",
    "block b(x) { conv(x, 3); b(x) }\n",
    "b(1)",
    "in",
    "x |>",
    "input y: [3, 65536, 65536]\n",
    "input z: [1]\n",
    "output",
    "same",
    "valid",
    "groups=",
    "dilation=",
    "stride=",
    "network m {",
    "#",
    "\u{00e9}",
    "\u{0}",
    "\u{feff}",
];

fn mutate(rng: &mut ChaCha8Rng, source: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut out = source.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = if out.is_empty() { 0 } else { rng.random_range(0..=out.len()) };
        match rng.random_range(0..8) {
            0 if !out.is_empty() => {
                let end = (at + rng.random_range(1..64)).min(out.len());
                out.drain(at.min(end)..end);
            }
            1 | 2 => {
                let token = TOKENS[rng.random_range(0..TOKENS.len())];
                out.splice(at..at, token.bytes());
            }
            3 if !out.is_empty() => {
                let i = rng.random_range(0..out.len());
                out[i] ^= 1 << rng.random_range(0..8);
            }
            4 if !out.is_empty() => {
                // Duplicate a span (repeats statements, brackets, blocks).
                let start = rng.random_range(0..out.len());
                let end = (start + rng.random_range(1..200)).min(out.len());
                let piece = out[start..end].to_vec();
                out.splice(at..at, piece);
            }
            5 => {
                // Splice in a piece of another program.
                let other = &corpus[rng.random_range(0..corpus.len())];
                if !other.is_empty() {
                    let start = rng.random_range(0..other.len());
                    let end = (start + rng.random_range(1..300)).min(other.len());
                    out.splice(at..at, other[start..end].iter().copied());
                }
            }
            6 => {
                // A long name or a long run of one character.
                let c = [b'a', b'-', b'(', b'{', b'1', b'\n'][rng.random_range(0..6)];
                let n = [10, 100, 1000, 70_000][rng.random_range(0..4)];
                out.splice(at..at, std::iter::repeat_n(c, n));
            }
            _ => {
                // Replace a number with a large or odd one.
                if let Some(pos) = out.iter().skip(at).position(u8::is_ascii_digit) {
                    let pos = at + pos;
                    let end = out[pos..].iter().position(|c| !c.is_ascii_digit()).map_or(out.len(), |e| pos + e);
                    let n = ["0", "1", "4096", "65536", "1000000", "16777216", "4294967296"][rng.random_range(0..7)];
                    out.splice(pos..end, n.bytes());
                }
            }
        }
    }
    out
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["examples", "tests/programs", "tests/broken"] {
        let mut paths: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
            .collect();
        paths.sort();
        for path in paths {
            files.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    files
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The time one case may take. Real programs elaborate in milliseconds; the largest
/// legal expansion (200,000 layers) takes about a second on a slow, shared CI core.
const CASE_TIME: Duration = Duration::from_secs(20);

#[test]
fn mutants_of_the_corpus_never_panic_hang_or_run_away() {
    let cases = env_number("CNNC_FUZZ_CASES", 3000);
    let seed = env_number("CNNC_FUZZ_SEED", 0x5eed);
    let files = corpus();
    let corpus: Vec<Vec<u8>> = files.iter().map(|(_, b)| b.clone()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let started = Instant::now();
    let mut slowest = (Duration::ZERO, 0);
    for index in 0..cases {
        let base = rng.random_range(0..corpus.len());
        let mutant = mutate(&mut rng, &corpus[base], &corpus);
        let fail = |why: String| -> ! {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failure.cnn");
            let _ = std::fs::write(&path, &mutant);
            panic!(
                "fuzz case {index} (seed {seed:#x}, mutant of {}) {why}; the mutant is in {}",
                files[base].0,
                path.display()
            )
        };
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let case_started = Instant::now();
        // The case runs on its own thread, with the stack `cnnc`'s main thread has, so a
        // hang is reported (the thread is left behind) rather than waited on forever.
        let (done, result) = std::sync::mpsc::channel();
        let input = mutant.clone();
        let worker = std::thread::Builder::new()
            .stack_size(8 << 20)
            .spawn(move || {
                let outcome = std::panic::catch_unwind(|| exercise(&input));
                let _ = done.send(outcome.is_ok());
            })
            .unwrap();
        match result.recv_timeout(CASE_TIME) {
            Ok(true) => {}
            Ok(false) => fail("panicked".into()),
            Err(_) => fail(format!("took more than {CASE_TIME:?}")),
        }
        worker.join().unwrap();
        let elapsed = case_started.elapsed();
        if elapsed > slowest.0 {
            slowest = (elapsed, index);
        }
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
        if peak > CASE_MEMORY {
            fail(format!("held {peak} bytes at once"));
        }
    }
    eprintln!(
        "{cases} mutants in {:.1} s (slowest: case {} in {:.0} ms)",
        started.elapsed().as_secs_f64(),
        slowest.1,
        slowest.0.as_secs_f64() * 1e3
    );
}

mod shapes_and_flags {
    use cnnc::front::{BuildOptions, compile_bytes};
    use cnnc::passes::OptLevel;
    use proptest::prelude::*;

    fn examples() -> Vec<Vec<u8>> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut paths: Vec<_> = std::fs::read_dir(root)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
            .collect();
        paths.sort();
        paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
        /// Random batches, input shapes (tiny to 2^24 a side), --fully-conv, --average and
        /// optimization levels on every example: an error or a graph whose memory is known,
        /// never a panic or an abort (everything here is shapes, nothing is allocated).
        #[test]
        fn random_shapes_and_flags_never_abort(
            example in 0usize..64,
            batch in prop_oneof![1usize..=4, Just(65536usize)],
            channels in prop_oneof![Just(1usize), Just(3usize), 1usize..=8],
            side in prop_oneof![1usize..=300, Just(100_000usize), Just(1usize << 24)],
            other_side in 1usize..=300,
            reshape in any::<bool>(),
            fully_conv in any::<bool>(),
            average in any::<bool>(),
            level in 0u8..3,
        ) {
            let examples = examples();
            let source = &examples[example % examples.len()];
            let shape = vec![channels, side, other_side];
            let options = BuildOptions { batch, input_shape: (reshape && !fully_conv).then(|| shape.clone()) };
            let Ok(mut graph) = compile_bytes(source, &options) else { return Ok(()) };
            if fully_conv && cnnc::passes::make_fully_convolutional(&mut graph, &shape, average).is_err() {
                return Ok(());
            }
            let level = [OptLevel::O0, OptLevel::O1, OptLevel::O2][level as usize];
            let _ = cnnc::budget::need(&graph);
            let _ = cnnc::budget::check(&graph, Some(1 << 30));
            cnnc::passes::optimize(&mut graph, level).unwrap();
            let _ = cnnc::summary::render_table(&cnnc::summary::summarize(&graph));
            let _ = cnnc::budget::need(&graph);
        }
    }
}
