//! meshd: one daemon per host.
mod api;
mod checks;
mod local;

fn main() {}
