//! Certificate identities (being written).
