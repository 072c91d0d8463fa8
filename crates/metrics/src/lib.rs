//! palisade-metrics (placeholder, being written).
