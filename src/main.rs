#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    telbase::cli::run()
}
