//! HTTP side (being written).
