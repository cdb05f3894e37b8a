//! Unit tests of the verbs transport against the fake verbs layer.

use super::*;
