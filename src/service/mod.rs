//! Running xetmount as a service: background mounts ([`daemon`]), the state directory with a
//! record and a control socket per mount ([`state`], [`control`]), log files ([`logging`]),
//! and options from config files and `mount -o` ([`config`]).

pub mod config;
pub mod control;
pub mod daemon;
pub mod logging;
pub mod state;
