//! `cargo xtask`'s command line, run as a process: the help of every command
//! (compared exactly with `tests/snapshots/help/`; re-bless with
//! `NITRIDE_BLESS=1 cargo test -p nitride-qemu --test xtask_cli`), usage errors, and
//! `xtask man` writing nitride's man pages. Nothing here boots QEMU or builds images.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("COLUMNS", "100")
        .env("NO_COLOR", "1")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CLICOLOR")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

const COMMANDS: &[&str] = &[
    "build",
    "run",
    "test",
    "demo",
    "bench",
    "up",
    "down",
    "dev-chain",
    "measure",
    "igvm",
    "snp",
    "man",
    "install",
    "install-token",
];

#[test]
fn help_of_every_command_matches_its_snapshot() {
    let bless = std::env::var_os("NITRIDE_BLESS").is_some_and(|v| v == "1");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/help");
    // The list above is every command: the top-level help lists no other.
    let top = stdout(&xtask(&["--help"]));
    let listed: Vec<&str> = top
        .split("Commands:\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert_eq!(listed, COMMANDS, "{top}");
    let mut failures = Vec::new();
    let cases = std::iter::once(("xtask.txt".to_string(), vec!["--help"])).chain(
        COMMANDS
            .iter()
            .map(|c| (format!("xtask-{c}.txt"), vec![*c, "--help"])),
    );
    for (file, args) in cases {
        let o = xtask(&args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        let got = stdout(&o);
        assert!(got.contains("Examples:\n  "), "{args:?} has no example");
        let path = dir.join(&file);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &got).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(got.as_str()) {
            failures.push(format!(
                "cargo xtask {}: differs from {}",
                args.join(" "),
                path.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "help output changed (re-bless with NITRIDE_BLESS=1 after checking):\n{}",
        failures.join("\n")
    );
}

#[test]
fn usage_errors_exit_2_with_suggestions() {
    let o = xtask(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("Commands:"), "{}", stderr(&o));
    let o = xtask(&["demmo"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("similar subcommand") && stderr(&o).contains("'demo'"),
        "{}",
        stderr(&o)
    );
    let o = xtask(&["dev-chain", "--forse"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("'--force'"), "{}", stderr(&o));
    let o = xtask(&["measure", "--guest", ""]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("expected relay, test"),
        "{}",
        stderr(&o)
    );
    let o = xtask(&["measure", "--guest"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("a value is required"), "{}", stderr(&o));
}

#[test]
fn man_writes_a_page_per_nitride_command() {
    let dir = tempfile::tempdir().unwrap();
    let o = xtask(&["man", "--out", &dir.path().display().to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for page in [
        "nitride.1",
        "nitride-key.1",
        "nitride-key-generate.1",
        "nitride-report-verify.1",
        "nitride-completions.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.starts_with(".ie"), "{page}: {text}");
        assert!(text.contains(".TH "), "{page}");
        assert!(text.contains(".SH NAME"), "{page}");
    }
    let top = std::fs::read_to_string(dir.path().join("nitride.1")).unwrap();
    assert!(
        top.contains("vHSM protocol"),
        "the version section names the protocols"
    );
    let generate = std::fs::read_to_string(dir.path().join("nitride-key-generate.1")).unwrap();
    assert!(generate.contains("ecdsa\\-p384"), "{generate}");
    // groff, when installed, reads them without a warning.
    if let Ok(out) = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(dir.path().join("nitride-key-generate.1"))
        .output()
    {
        assert!(out.status.success());
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
