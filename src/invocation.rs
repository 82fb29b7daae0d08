//! How the commands phasegate prints for a person to run (the demo's closing lines, a
//! backfill's retry commands) name this program, so that each runs as printed.

use std::path::{Path, PathBuf};

/// This very binary as the shell reads it from the current directory: its relative path when
/// it is under it (`target/debug/phasegate` after `cargo run`), else its absolute path.
pub fn this_binary() -> String {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("phasegate"));
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or(exe);
    shell_word(&shown.display().to_string())
}

/// A word as the shell reads it back (quoted where it needs to be). Only a NUL byte cannot
/// be quoted; command-line words and paths never hold one.
pub fn shell_word(text: &str) -> String {
    shlex::try_quote(text).map_or_else(|_| text.to_string(), |q| q.into_owned())
}
