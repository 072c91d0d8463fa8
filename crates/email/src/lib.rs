//! palisade-email (placeholder, being written).
