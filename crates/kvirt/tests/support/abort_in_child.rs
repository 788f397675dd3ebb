//! Tests whose expected outcome is an abort of the process. An abort cannot
//! be caught in the process that aborts, so such a test runs its own test
//! binary again as a child, selected by an environment variable and the
//! exact test name, and checks how the child died.
//!
//! Not for Miri, which cannot spawn processes: includers declare the
//! module `#[cfg(not(miri))]` (`cargo xtask miri` runs only `tests/miri.rs`
//! in any case).

#![allow(dead_code, reason = "not every includer has a test that aborts")]
use std::process::Command;

/// Set in the child's environment: the test then does what must abort
/// instead of spawning a child. Only the one test named on the child's
/// command line runs there, so one variable serves every such test.
const CHILD: &str = "KVIRT_TEST_ABORT_CHILD";

/// In the child, runs `abort`, and fails like an ordinary test if it
/// returns. In the parent, runs the test named by `test_path` (its
/// `module_path!()` and name) as a child and asserts that the child was
/// aborted, not failed or passed, after printing `message` on stderr.
pub fn assert_aborts_in_child(test_path: &str, message: &str, abort: impl FnOnce()) {
    if std::env::var_os(CHILD).is_some() {
        abort();
        panic!("what should have aborted the process returned");
    }
    // The harness names a test by its path without the crate name.
    let (_crate, name) = test_path.split_once("::").expect("a test has a module path");
    let out = Command::new(std::env::current_exe().expect("the path of this test binary"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("the test binary runs again as a child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("running 1 test"), "the child did not run exactly this test:\n{stdout}");
    assert!(!out.status.success(), "the child survived ({})\n{stderr}", out.status);
    assert_ne!(
        out.status.code(),
        Some(101),
        "the child failed like an ordinary test (a panic), not by aborting:\n{stderr}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        const SIGABRT: i32 = 6;
        assert_eq!(out.status.signal(), Some(SIGABRT), "the child was not aborted:\n{stderr}");
    }
    assert!(stderr.contains(message), "the child's stderr does not say {message:?}:\n{stderr}");
}
