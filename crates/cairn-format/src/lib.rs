//! Cairn's on-disk format v1: pure encode/decode of manifests and canonical state files
