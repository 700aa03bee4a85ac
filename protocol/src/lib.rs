//! wireleap-protocol: see the crate's README or module docs (work in progress).
