//! The engine's integration tests, in one binary so the build stays fast on two cores
//! (STYLE.md, "Tests").

mod cluster;
mod fabric;
