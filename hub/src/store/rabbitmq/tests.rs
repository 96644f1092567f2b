//! Unit tests of the pure parts: the fold and the work-message headers.
