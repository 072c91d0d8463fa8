//! The configuration loader: any text either parses and validates, or is refused with an error;
//! what is accepted builds its transport and firewall settings without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_server::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(mut config) = Config::from_toml(text) else { return };
    let _ = config.transport();
    // Check the firewall lists and origin patterns too, but read no key, token or certificate
    // file the input names.
    config.secure.enabled = false;
    config.admin.token_file = None;
    config.tls = palisade_server::config::TlsSection::default();
    let _ = palisade_server::server::check(&config);
});
