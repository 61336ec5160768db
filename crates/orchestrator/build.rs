//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds the files at
//! compile time, and Cargo does not watch that directory on its own.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
