//! Unit tests of the cache and the memory backend.
