//! palisade-digest (placeholder, being written).
