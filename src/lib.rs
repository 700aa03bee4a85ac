//! wireleap-relay
