//! palisade-server (placeholder, being written).
