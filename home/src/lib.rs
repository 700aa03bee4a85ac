//! What the relay, the supervisor and the demo share about a relay's home directory, owned once
//! here: no async runtime, no actors, so that the supervisor (the trusted path) can depend on it.
//!
//! | module | owns |
//! | --- | --- |
//! | [`files`] | the names of the shared files, sockets and environment variables |
//! | [`value`] | `config.json`'s value formats: Go-style durations and data sizes (also the supervisor's flags) |
//! | [`instance`] | the home's lock: one supervisor, or one relay without one |

pub mod files;
pub mod instance;
pub mod value;
