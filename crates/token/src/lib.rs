//! palisade-token (placeholder, being written).
