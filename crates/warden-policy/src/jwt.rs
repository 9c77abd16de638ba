//! JSON Web Tokens (being written).
