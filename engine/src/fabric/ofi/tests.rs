//! Unit tests of the ofi transport on loopback: bad input gives typed errors naming the
//! provider, and a node keeps serving the others.
