//! The crate's modules form layers, and no module imports one above it:
//!
//! ```text
//! addr, inv, page_prop, arch, platform   (facts, formats, the platform boundary)
//! frame                                  (physical memory, metadata, allocation)
//! page_table                             (the tree and its cursors)
//! kspace, spec                           (kernel spaces and areas; the executable spec)
//! ```
//!
//! A kernel space extends the types below it (`kspace/extend.rs`), never the
//! reverse. This test reads the sources of the lower layers and fails if
//! their code (comments and `#[cfg(test)]` modules aside) names anything of
//! the top layer.

use std::path::{Path, PathBuf};

/// What the lower layers may not name.
const ABOVE: &[&str] = &["kspace", "KernelSpace", "KernelLayout", "KVirtArea", "crate::spec"];

/// The lower layers, relative to `src/`.
const LOWER: &[&str] =
    &["addr.rs", "inv.rs", "page_prop.rs", "arch", "platform.rs", "platform", "frame", "page_table"];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("a source directory") {
            rust_files(&entry.expect("a directory entry").path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The code of `file` before its first `#[cfg(test)]`, without comments.
fn code_lines(file: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(file).expect("a readable source file");
    text.lines()
        .enumerate()
        .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
        .map(|(i, line)| (i + 1, line.split("//").next().unwrap_or("").to_string()))
        .filter(|(_, code)| !code.trim().is_empty())
        .collect()
}

#[test]
fn frames_and_page_tables_name_nothing_of_kernel_spaces() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for part in LOWER {
        rust_files(&src.join(part), &mut files);
    }
    assert!(files.len() > 20, "the lower layers were not found: {files:?}");
    let mut found = Vec::new();
    for file in &files {
        for (line, code) in code_lines(file) {
            if let Some(name) = ABOVE.iter().find(|name| code.contains(*name)) {
                found.push(format!("{}:{line}: names `{name}`: {}", file.display(), code.trim()));
            }
        }
    }
    assert!(found.is_empty(), "a lower layer imports from above:\n{}", found.join("\n"));
}

#[test]
fn the_check_sees_an_import_from_above() {
    let dir = std::env::temp_dir().join(format!("kvirt-layering-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let file = dir.join("planted.rs");
    std::fs::write(
        &file,
        "// KernelSpace in a comment is fine\nuse crate::kspace::KernelSpace;\n#[cfg(test)]\nmod tests {}\n",
    )
    .expect("write the planted file");
    let lines = code_lines(&file);
    assert_eq!(lines.len(), 1, "comments and test modules are skipped: {lines:?}");
    assert!(lines[0].1.contains("crate::kspace"));
    std::fs::remove_dir_all(&dir).expect("remove the temporary directory");
}
