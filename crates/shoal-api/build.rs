//! Generates the prost messages (always), their canonical protobuf-JSON serde impls (for
//! `--format json`), and the tonic stubs (with the `grpc` feature).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "../../proto/shoal/v1/objects.proto",
        "../../proto/shoal/v1/store.proto",
        "../../proto/shoal/v1/control.proto",
        "../../proto/shoal/v1/dispatcher.proto",
    ];
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out.join("shoal_descriptors.bin");
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .build_transport(grpc)
        // Ordered maps: the same store encodes to the same snapshot bytes on every manager.
        .btree_map(".")
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&protos, &["../../proto"])?;
    let set = std::fs::read(&descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .preserve_proto_field_names()
        // `inspect` shows every field, defaults included.
        .emit_fields()
        .btree_map(["."])
        .build(&[".shoal.v1"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
