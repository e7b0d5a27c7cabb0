//! temper's runner: turns a validated recipe into a plan (petgraph), computes Merkle keys,
//! explains what will run and why, schedules nodes on devices with checkpoints and resume,
//! and reports progress. Holds the `temper` binary's subcommands, one file each in `cmd/`.
