//! The `Storage` trait: its contract suite (generic over the trait, for every backend) and the
//! local backend's run of it, plus what only the local file system can be asked.

pub mod contract;
mod local;
mod s3;
