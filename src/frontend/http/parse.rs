//! The parts of HTTP request handling that are ours: pure functions over bytes, each fuzzed.
