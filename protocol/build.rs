//! Compiles `proto/sluice.proto` with protox (a pure-Rust protobuf compiler), so a fresh machine
//! needs no system `protoc`. Output goes to `OUT_DIR` only.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/sluice.proto");
    let descriptors = protox::compile(["proto/sluice.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
