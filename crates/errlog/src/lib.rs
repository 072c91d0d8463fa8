//! palisade-errlog (placeholder, being written).
