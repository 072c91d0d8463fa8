//! The parts of `cargo xtask autobahn` that decide pass or fail.

use super::field;

#[test]
fn summary_fields_are_read_from_run_sh_last_line() {
    let line = "autobahn: OK=296 NON-STRICT=2 INFORMATIONAL=3 UNIMPLEMENTED=0 FAILED=0 total=301";
    assert_eq!(field(line, "OK"), Some(296));
    assert_eq!(field(line, "NON-STRICT"), Some(2));
    assert_eq!(field(line, "FAILED"), Some(0));
    assert_eq!(field(line, "total"), Some(301));
    assert_eq!(field("autobahn: OK=1 FAILED=7 total=8", "FAILED"), Some(7));
}

#[test]
fn a_missing_summary_has_no_fields() {
    assert_eq!(field("autobahn: no summary line", "FAILED"), None);
    assert_eq!(field("autobahn: OK=x FAILED= total=3", "FAILED"), None);
}
