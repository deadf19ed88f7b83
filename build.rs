//! Compiles `src/storage/resume.cc`, the one RocksDB call the C API lacks
//! (`DB::Resume`), against the headers of the RocksDB that librocksdb-sys builds.

fn main() {
    println!("cargo:rerun-if-changed=src/storage/resume.cc");
    let rocksdb_sys = std::env::var("DEP_ROCKSDB_CARGO_MANIFEST_DIR")
        .expect("librocksdb-sys tells its source folder (links = \"rocksdb\")");
    let include = std::path::Path::new(&rocksdb_sys).join("rocksdb/include");
    cc::Build::new()
        .cpp(true)
        .std("c++20")
        .include(include)
        .file("src/storage/resume.cc")
        .warnings(false)
        .compile("ourwhats_rocksdb_resume");
}
