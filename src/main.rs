#![forbid(unsafe_code)]

// Parsing and lowering allocate many small strings and nodes; mimalloc cuts the cost of that
// by a third against glibc's allocator in `cargo bench --bench config`, and suits the
// long-running server as well.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    telbase::cli::run()
}
