//! The `event-manager` binary: parses the command line and hands over to the library.

mod cli;

/// The service allocates with mimalloc: decoding a message and writing an API response make many
/// small, short-lived allocations, and the glibc allocator spent a fifth of the API's own CPU
/// time on them. The allocator is the binary's choice, not the library's (benches set it too).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Without transparent huge pages (`no_thp` above: mimalloc does not ask for them; and here for
/// hosts that give them unasked, `/sys/kernel/mm/transparent_hugepage/enabled` = `always`).
/// A store thread's first allocations touched fresh 2 MiB pages, each zeroed whole: 15–25 % of
/// the pipeline's CPU, and a third of its peak RSS (docs/performance-log.md, 2026-12-04).
fn without_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes one integer argument and touches no memory of ours; a
    // kernel without it answers EINVAL, which changes nothing.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> std::process::ExitCode {
    without_huge_pages();
    cli::main()
}
