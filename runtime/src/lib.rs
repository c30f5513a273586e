//! What every Cadre service shares: layered configuration, telemetry with W3C trace-context
//! propagation, structured shutdown, the thin adapter that puts [`cadre_proto`] events on
//! NATS JetStream and reads them back, the membership of replicas that share a service's work,
//! and the watch on how far the projector's read models
//! have got ([`projection`]).
//!
//! No domain logic lives here: deciding what to publish is the services' job.

/// The memory allocator of every program linked with this crate (the services, their tests
/// and benchmarks). Each step allocates thousands of small short-lived buffers (NATS messages
/// and headers, JSON values, SQL parameters) on many threads; profiled under load, glibc's
/// allocator took over a third of the services' CPU time. mimalloc's thread-local free lists
/// make the same work several times cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod bus;
pub mod config;
pub mod health;
pub mod membership;
pub mod projection;
pub mod shutdown;
pub mod telemetry;
