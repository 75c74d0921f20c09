//! Compiles the .proto files with protox (pure Rust: no system `protoc`), generates
//! tonic/prost code, and writes the descriptor set used by gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "strom/admin/v1/admin.proto",
        "strom/internal/v1/raft.proto",
        "strom/internal/v1/worker.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("strom_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Admin messages are printed by the CLI with `--output json`.
        .type_attribute(".strom.admin.v1", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
