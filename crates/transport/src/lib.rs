//! palisade-transport (placeholder, being written).
