//! Tidy checks on the tree: docs/architecture.md names every crate, every module of the
//! server crate and of xtask, so the map cannot fall behind the code unnoticed.

use std::fs;
use std::path::{Path, PathBuf};

/// The repository root (xtask's parent folder).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The module names of a `src` folder: `foo.rs` and `foo/mod.rs` give `foo`; crate roots,
/// `tests.rs` files and non-Rust files give nothing.
fn modules(src: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(src)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", src.display()))
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let path = entry.path();
            let name = path.file_name()?.to_str()?.to_owned();
            if path.is_dir() {
                let is_module =
                    path.join("mod.rs").exists() || src.join(format!("{name}.rs")).exists();
                return is_module.then_some(name);
            }
            let stem = name.strip_suffix(".rs")?;
            (!matches!(stem, "lib" | "main" | "tests")).then(|| stem.to_owned())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The text of the `### heading` section of `doc` (up to the next `##` heading).
fn section<'d>(doc: &'d str, heading: &str) -> &'d str {
    let start = doc.find(heading).unwrap_or_else(|| panic!("docs/architecture.md lacks {heading}"));
    let body = &doc[start + heading.len()..];
    let end = body.find("\n## ").into_iter().chain(body.find("\n### ")).min();
    &body[..end.unwrap_or(body.len())]
}

fn architecture() -> String {
    fs::read_to_string(root().join("docs/architecture.md")).expect("read docs/architecture.md")
}

#[test]
fn architecture_names_every_crate() {
    let doc = architecture();
    let mut missing = Vec::new();
    for entry in fs::read_dir(root().join("crates")).expect("read crates/").flatten() {
        if !entry.path().join("Cargo.toml").exists() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if !doc.contains(&format!("### `crates/{name}`")) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/architecture.md has no `### `crates/NAME`` section for {missing:?}"
    );
}

#[test]
fn architecture_names_every_server_and_xtask_module() {
    let doc = architecture();
    let mut missing = Vec::new();
    for (heading, src) in [
        ("### `crates/server`", root().join("crates/server/src")),
        ("### `xtask`", root().join("xtask/src")),
    ] {
        let text = section(&doc, heading);
        for module in modules(&src) {
            if !text.contains(&format!("`{module}`")) && !text.contains(&format!("`{module}::")) {
                missing.push(format!("{heading}: `{module}`"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not mention these modules: {missing:#?}"
    );
}

#[test]
fn modules_are_read_from_files_and_folders() {
    let names = modules(&root().join("crates/server/src"));
    assert!(names.contains(&"endpoints".to_owned()), "{names:?}");
    assert!(names.contains(&"tls".to_owned()), "{names:?}");
    assert!(!names.contains(&"lib".to_owned()) && !names.contains(&"main".to_owned()));
}
