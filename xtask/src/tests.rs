//! Parsing of cargo's output and the manifest for `cargo xtask deps`.

use super::{Update, semver_line, workspace_dependencies};

#[test]
fn update_lines_are_parsed() {
    let u = Update::parse("   Updating serde v1.0.1 -> v1.0.2").unwrap();
    assert_eq!((u.name.as_str(), u.from.as_str(), u.to.as_str()), ("serde", "v1.0.1", "v1.0.2"));
    assert!(u.compatible);
    let u = Update::parse("   Unchanged rand v0.9.5 (available: v0.10.4)").unwrap();
    assert_eq!((u.name.as_str(), u.to.as_str()), ("rand", "v0.10.4"));
    assert!(!u.compatible);
    assert!(u.advice().starts_with("new major"));
    let u = Update::parse("   Unchanged matchit v0.8.4 (available: v0.8.6)").unwrap();
    assert!(u.advice().contains("held back"));
    assert!(Update::parse("    Updating crates.io index").is_none());
    assert!(Update::parse("note: to see how you depend on a package").is_none());
}

#[test]
fn semver_lines_follow_cargo() {
    assert_eq!(semver_line("v1.2.3"), "1");
    assert_eq!(semver_line("v0.9.12+spec-1.1.0"), "0.9");
    assert_eq!(semver_line("0.0.4"), "0.0.4");
}

#[test]
fn direct_dependencies_come_from_the_workspace_table() {
    let manifest = "[workspace]\nmembers = []\n\n[workspace.dependencies]\n# ours\n\
                    palisade-token = { path = \"x\" }\nanyhow = \"1\"\nrustls = { version = \"0.23\" }\n\n\
                    [workspace.lints.rust]\nunsafe_code = \"forbid\"\n";
    assert_eq!(workspace_dependencies(manifest), ["anyhow", "rustls"]);
}
