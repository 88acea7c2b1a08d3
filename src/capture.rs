//! capture (in progress).
