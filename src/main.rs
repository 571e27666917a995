//! The `event-manager` binary: parses the command line and hands over to the library.

mod cli;

/// The service allocates with mimalloc: decoding a message and writing an API response make many
/// small, short-lived allocations, and the glibc allocator spent a fifth of the API's own CPU
/// time on them. The allocator is the binary's choice, not the library's (benches set it too).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
