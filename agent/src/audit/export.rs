//! Forensic export (being written).
