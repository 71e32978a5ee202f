//! Stack files: the Compose format as Swarm reads it. Pure: files and variables in, a project
//! out ([`load`]); a project and a stack name in, the specs to deploy out ([`stack`]).
//!
//! - [`yaml`]: the tree with every node's file, line and column; anchors, aliases, merge keys.
//! - [`interp`]: `$V`, `${V:-d}`, `${V?msg}`, ... and `.env` files.
//! - [`load`]: several files interpolated and merged by service name.
//! - [`decode`]: the typed project, unknown keys and wrong types refused with their place, keys
//!   Swarm ignores warned about.
//! - [`stack`]: the stack's objects named as Swarm names them (`<stack>_<name>`, the
//!   `com.docker.stack.namespace` label), secrets and configs versioned by content, and the
//!   plan of a deploy against what the cluster holds.

pub mod decode;
pub mod interp;
pub mod load;
pub mod stack;
pub mod yaml;

pub use decode::{Condition, Error, Project};
pub use load::{load, merged, Env, File, Loaded};
