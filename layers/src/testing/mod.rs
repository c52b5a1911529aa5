//! Test support shared by the crate's tests and the binary's integration tests
//! (feature `test-utils`): a seeded random source, plan builders, and the
//! model-based checker that runs random operations against a stack and a plain
//! in-memory reference image.

pub mod crash;
pub mod faults;
pub mod model;
pub mod plans;
pub mod sim;
pub mod sim_crash;
pub use crate::rng;

pub use crate::rng::Rng;
pub use model::{check_stack, fill_text, verify_image, ModelConfig};
pub use plans::PlanBuilder;
