//! E-mail parsing: no panic on any input; an accepted address is stable (its normalised form
//! parses to the same address) and its redacted form keeps the domain and hides the local part.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_email::{Email, EmailPolicy};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let lenient = EmailPolicy {
        allow_display_name: true,
        require_dotted_domain: false,
        allow_ip_literal: true,
    };
    for policy in [EmailPolicy::strict(), lenient] {
        let Ok(email) = Email::parse_with(input, &policy) else { continue };
        let again = Email::parse_with(email.as_str(), &policy)
            .unwrap_or_else(|e| panic!("normalised form {:?} does not parse: {e}", email.as_str()));
        assert_eq!(again, email, "normalising is not stable");
        assert_eq!(again.as_str(), email.as_str());
        assert_eq!(email.as_str(), format!("{}@{}", email.local_part(), email.domain()));
        let redacted = email.redacted();
        assert!(redacted.ends_with(&format!("***@{}", email.domain())), "{redacted:?}");
        assert!(redacted.chars().count() <= email.domain().chars().count() + 5, "{redacted:?}");
    }
});
