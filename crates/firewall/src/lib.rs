//! palisade-firewall (placeholder, being written).
