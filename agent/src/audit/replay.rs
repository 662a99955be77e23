//! Session replay (being written).
