//! Replays the saved fuzz inputs (`fuzz/regressions/<target>/`) through the
//! checks of their fuzz target, so that a bug found by fuzzing stays fixed.
//!
//! The decoders are `kvirt_model::fuzz`, the very functions the cargo-fuzz
//! targets call (the checks are the model's).
//! It decodes the raw bytes itself, so an input means the same here as under
//! libFuzzer. `kvirt_api` inputs replay one after the other on the spaces
//! the target reuses (as in a fuzzing run), and each on spaces of its own
//! (as libFuzzer replays a crash). Each target has at least one committed
//! hand-made seed; the test still passes, and says so, if a target's
//! directory is empty.

use std::path::{Path, PathBuf};

use kvirt_model::fuzz;

/// The saved inputs of `target`, sorted by name (the README is not one).
fn saved_inputs(target: &str) -> (PathBuf, Vec<PathBuf>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions").join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.expect("a readable directory entry").path())
            .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot read {}: {e}", dir.display()),
    };
    files.sort();
    (dir, files)
}

fn replay(target: &str) {
    let run =
        fuzz::TARGETS.iter().find(|(name, _)| *name == target).map(|(_, run)| *run).expect("a known target");
    replay_with(target, run);
}

fn replay_with(target: &str, run: fuzz::Target) {
    let (dir, files) = saved_inputs(target);
    if files.is_empty() {
        println!("fuzz regressions of {target}: no saved inputs in {}: nothing to replay", dir.display());
        return;
    }
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        println!("replaying {target}/{} ({} bytes)", file.file_name().unwrap().to_string_lossy(), data.len());
        run(&data);
    }
    println!("fuzz regressions of {target}: {} inputs replayed", files.len());
}

#[test]
fn kvirt_api_regressions_replay() {
    replay("kvirt_api");
}

#[test]
fn kvirt_api_regressions_replay_each_on_its_own_spaces() {
    replay_with("kvirt_api", fuzz::kvirt_api_alone);
}

#[test]
fn pte_decode_regressions_replay() {
    replay("pte_decode");
}

#[test]
fn every_target_has_a_regressions_directory() {
    for (target, _) in fuzz::TARGETS {
        let (dir, _) = saved_inputs(target);
        assert!(dir.is_dir(), "{} is missing", dir.display());
    }
}
