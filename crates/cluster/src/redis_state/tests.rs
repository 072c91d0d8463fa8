//! Tests against a real `redis-server`.
