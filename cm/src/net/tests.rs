//! Loopback tests of the CM links.
