//! The knowledge tests build their database with `sqlx::migrate!` over the projector's
//! migrations, embedded at compile time: cargo must rebuild them when one is added.
fn main() {
    println!("cargo:rerun-if-changed=../projector/migrations");
}
