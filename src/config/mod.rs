//! Config schema v1: TOML text → validated [`layers::Plan`].
