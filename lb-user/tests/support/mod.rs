pub mod fixture;
pub mod frames;
