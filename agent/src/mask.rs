//! Masking engine (being written).
