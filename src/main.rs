//! The `event-manager` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    event_manager::cli::main()
}
