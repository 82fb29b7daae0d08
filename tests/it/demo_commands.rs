//! The newcomer's path (issue 28): README's first command, then every command line the demo
//! prints at its end, run exactly as printed (through `bash`, from the demo's directory),
//! each exiting 0.

use std::process::Command;

#[test]
fn every_command_the_demo_prints_runs_as_printed() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("demo")
        .current_dir(dir.path())
        .env_remove("PHASEGATE_CONFIG")
        .env_remove("PHASEGATE_SQLITE_PATH")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&demo.stdout).into_owned();
    assert!(
        demo.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    let printed: Vec<&str> = out
        .split("Inspect it yourself")
        .nth(1)
        .expect("the demo ends with commands to inspect it")
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(printed.len() >= 8, "{printed:?}");
    for needle in ["freshness", "history", "--output html", "--scheduled-at"] {
        assert!(
            printed.iter().any(|l| l.contains(needle)),
            "the demo shows `{needle}`: {printed:?}"
        );
    }
    // One shell, in order (the first line exports the configuration for the rest); each
    // line's failure names it.
    let script: String = printed
        .iter()
        .enumerate()
        .map(|(i, line)| format!("{line} || {{ echo \"line {i} failed: $?\" >&2; exit 1; }}\n"))
        .collect();
    let run = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env_remove("PHASEGATE_CONFIG")
        .env_remove("PHASEGATE_SQLITE_PATH")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{script}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let html = std::fs::read_to_string(dir.path().join("phasegate-status.html")).unwrap();
    assert!(
        html.contains("<table") || html.contains("<html"),
        "{html:.200}"
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("is for 2025-11-18"),
        "the scheduled-style trigger derives yesterday in New York: {stdout}"
    );
}
