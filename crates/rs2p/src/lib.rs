//! rs2p
