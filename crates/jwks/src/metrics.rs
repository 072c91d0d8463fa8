//! The issuers' metrics as OpenMetrics text, appended to the server's `/metrics`.

use std::fmt::Write as _;

/// One issuer's sample: name, fetches by outcome, keys held, seconds since the last good fetch.
pub(crate) type Sample<'a> = (&'a str, Vec<(&'static str, u64)>, usize, Option<f64>);

pub(crate) fn encode(samples: &[Sample<'_>]) -> String {
    if samples.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    out.push_str(
        "# HELP palisade_jwks_fetches JWKS and discovery fetches, by issuer and outcome.\n",
    );
    out.push_str("# TYPE palisade_jwks_fetches counter\n");
    for (issuer, fetches, _, _) in samples {
        for (outcome, n) in fetches {
            let _ = writeln!(
                out,
                "palisade_jwks_fetches_total{{issuer=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(issuer)
            );
        }
    }
    out.push_str("# HELP palisade_jwks_keys Usable keys held, by issuer.\n");
    out.push_str("# TYPE palisade_jwks_keys gauge\n");
    for (issuer, _, keys, _) in samples {
        let _ = writeln!(out, "palisade_jwks_keys{{issuer=\"{}\"}} {keys}", escape(issuer));
    }
    out.push_str(
        "# HELP palisade_jwks_seconds_since_last_good_fetch Seconds since the keys were last \
         fetched successfully, by issuer (absent before the first success).\n",
    );
    out.push_str("# TYPE palisade_jwks_seconds_since_last_good_fetch gauge\n");
    for (issuer, _, _, age) in samples {
        if let Some(age) = age {
            let _ = writeln!(
                out,
                "palisade_jwks_seconds_since_last_good_fetch{{issuer=\"{}\"}} {age:.3}",
                escape(issuer)
            );
        }
    }
    out.push_str("# EOF\n");
    out
}

/// OpenMetrics label escapes.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
