//! The `nitride` command line as a user meets it, run as a process: the help of every
//! command (compared exactly with `tests/snapshots/help/`), the version, one usage
//! error of each kind (text and `--json`), limits named at parse time, shell
//! completions.
//!
//! Re-bless the help snapshots after a deliberate change with
//! `NITRIDE_BLESS=1 cargo test -p nitride-guest-driver --test cli_usage`, then review
//! the diff.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use nitride_protocol::vhsm::{MAX_DATA_LEN, MAX_LABEL_LEN, MAX_RANDOM_LEN};

/// A nonce of the one size accepted (64 bytes).
static NONCE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| "4e".repeat(64));

/// Run `nitride ARGS` with a fixed terminal width, no colour and no socket from the
/// environment, so that its output does not depend on who runs the test.
fn nitride(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nitride"))
        .args(args)
        .env("COLUMNS", "100")
        .env("NO_COLOR", "1")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CLICOLOR")
        .env_remove("NITRIDE_SOCKET")
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

fn snapshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/help")
}

/// Every command path: [], ["key"], ["key", "generate"], ...
fn command_paths(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
    out.push(prefix.to_vec());
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        let mut p = prefix.to_vec();
        p.push(sub.get_name().to_string());
        command_paths(sub, &p, out);
    }
}

/// The first line where `got` and `want` differ, for the failure message.
fn first_difference(got: &str, want: &str) -> String {
    for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        if g != w {
            return format!("line {}:\n  got:  {g:?}\n  want: {w:?}", i + 1);
        }
    }
    format!(
        "{} lines, snapshot has {}",
        got.lines().count(),
        want.lines().count()
    )
}

#[test]
fn help_of_every_command_matches_its_snapshot() {
    let bless = std::env::var_os("NITRIDE_BLESS").is_some_and(|v| v == "1");
    let dir = snapshots();
    let mut paths = Vec::new();
    let mut root = nitride_guest_driver::cli::command();
    root.build();
    command_paths(&root, &[], &mut paths);
    assert!(paths.len() > 20, "{paths:?}");
    let mut expected_files = Vec::new();
    let mut failures = Vec::new();
    let mut cases: Vec<(String, Vec<String>)> = paths
        .iter()
        .map(|p| {
            let name = std::iter::once("nitride".to_string())
                .chain(p.iter().cloned())
                .collect::<Vec<_>>()
                .join("-");
            let mut args = p.clone();
            args.push("--help".into());
            (format!("{name}.txt"), args)
        })
        .collect();
    cases.push(("nitride--version.txt".into(), vec!["--version".into()]));
    cases.push(("nitride-V.txt".into(), vec!["-V".into()]));
    for (file, args) in cases {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = nitride(&argv);
        assert_eq!(o.status.code(), Some(0), "{argv:?}: {}", stderr(&o));
        let got = stdout(&o);
        assert!(stderr(&o).is_empty(), "{argv:?}: {}", stderr(&o));
        let path = dir.join(&file);
        expected_files.push(file.clone());
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!(
                "nitride {}: differs from {}: {}",
                argv.join(" "),
                path.display(),
                first_difference(&got, &want)
            )),
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    // No snapshot for a command that no longer exists.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !expected_files.contains(&name) {
            if bless {
                std::fs::remove_file(dir.join(&name)).unwrap();
            } else {
                failures.push(format!("{name}: snapshot of no command"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "help output changed (re-bless with NITRIDE_BLESS=1 after checking):\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_command_shows_an_example() {
    let mut root = nitride_guest_driver::cli::command();
    root.build();
    let mut paths = Vec::new();
    command_paths(&root, &[], &mut paths);
    for p in paths {
        let mut args: Vec<&str> = p.iter().map(String::as_str).collect();
        args.push("--help");
        let o = nitride(&args);
        let help = stdout(&o);
        assert!(help.contains("Usage: nitride"), "{args:?}: {help}");
        assert!(
            help.contains("Examples:\n  "),
            "{args:?} has no example: {help}"
        );
    }
}

#[test]
fn version_names_the_protocols() {
    let o = nitride(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
    let v = stdout(&o);
    assert!(v.starts_with("nitride "), "{v}");
    for needle in [
        "SVSM core protocol (0)",
        "SVSM attestation protocol (1)",
        "vHSM protocol (0x4e48534d)",
        "message wire version",
    ] {
        assert!(v.contains(needle), "{v}");
    }
    let o = nitride(&["-V"]);
    assert!(stdout(&o).contains("vHSM protocol"), "{}", stdout(&o));
}

/// A usage error: exit 2, the message on stderr, nothing on stdout.
fn usage_error(args: &[&str]) -> String {
    let o = nitride(args);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    assert!(o.stdout.is_empty(), "{args:?}: {}", stdout(&o));
    stderr(&o)
}

/// The same with `--json`: exit 2 and a JSON error object on stdout.
fn json_usage_error(args: &[&str]) -> serde_json::Value {
    let mut argv = args.to_vec();
    argv.push("--json");
    let o = nitride(&argv);
    assert_eq!(o.status.code(), Some(2), "{argv:?}: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{argv:?}: {e}: {}", stdout(&o)));
    assert_eq!(v["error"]["kind"], "usage", "{v}");
    assert_eq!(v["error"]["exit_code"], 2, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    v["error"].clone()
}

#[test]
fn unknown_command_is_a_usage_error_with_a_suggestion() {
    let e = usage_error(&["frobnicate"]);
    assert!(e.contains("unrecognized subcommand 'frobnicate'"), "{e}");
    let e = usage_error(&["sing", "1"]);
    assert!(e.contains("similar subcommand exists: 'sign'"), "{e}");
    let e = usage_error(&["key", "genrate"]);
    assert!(e.contains("similar subcommand exists: 'generate'"), "{e}");
    let j = json_usage_error(&["key", "genrate"]);
    assert_eq!(j["usage_error"], "unknown_command", "{j}");
    assert_eq!(j["suggestion"], serde_json::json!(["generate"]), "{j}");
}

#[test]
fn unknown_option_is_a_usage_error_with_a_suggestion() {
    let e = usage_error(&["key", "generate", "--typ", "aes-256"]);
    assert!(e.contains("unexpected argument '--typ'"), "{e}");
    assert!(e.contains("similar argument exists: '--type'"), "{e}");
    let j = json_usage_error(&["key", "generate", "--typ", "aes-256"]);
    assert_eq!(j["usage_error"], "unknown_argument", "{j}");
    assert_eq!(j["suggestion"], "--type", "{j}");
    // Before this CLI, `--help` after a command was "unknown option --help".
    let o = nitride(&["key", "generate", "--help"]);
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn bad_values_are_refused_at_parse_time_naming_the_limit() {
    let e = usage_error(&["key", "generate", "--type", "rsa"]);
    assert!(
        e.contains("unknown key type rsa: one of aes-256, ecdsa-p384, ed25519, hmac-sha384"),
        "{e}"
    );
    let e = usage_error(&["key", "generate", "--type", "aes256"]);
    assert!(e.contains("did you mean aes-256?"), "{e}");
    let e = usage_error(&["key", "generate", "--type", "aes-256", "--usage", "sing"]);
    assert!(e.contains("unknown usage sing"), "{e}");
    let e = usage_error(&[
        "key",
        "generate",
        "--type",
        "ecdsa-p384",
        "--usage",
        "encrypt",
    ]);
    assert!(
        e.contains(
            "a key of type ecdsa-p384 cannot have usage encrypt; it can have sign,verify,attest"
        ),
        "{e}"
    );
    let e = usage_error(&["key", "generate", "--type", "aes-256", "--vmpls", "0,4"]);
    assert!(e.contains("bad VMPL 4"), "{e}");
    // Limits of the vHSM protocol, named (issue 10 item 17).
    let too_many = (MAX_RANDOM_LEN + 1).to_string();
    let e = usage_error(&["random", &too_many]);
    assert!(
        e.contains(&format!("at most {MAX_RANDOM_LEN} random bytes")),
        "{e}"
    );
    let e = usage_error(&["random", "100000"]);
    assert!(e.contains("at most 4096"), "{e}");
    let long = "l".repeat(MAX_LABEL_LEN + 1);
    let e = usage_error(&["key", "generate", "--type", "aes-256", "--label", &long]);
    assert!(
        e.contains(&format!(
            "the label is {} bytes long; a label is at most {MAX_LABEL_LEN} bytes",
            MAX_LABEL_LEN + 1
        )),
        "{e}"
    );
    let aad = "a".repeat(MAX_DATA_LEN + 1);
    let e = usage_error(&["encrypt", "1", "--aad", &aad]);
    assert!(e.contains(&format!("at most {MAX_DATA_LEN} bytes")), "{e}");
    let e = usage_error(&["sign", "one"]);
    assert!(e.contains("a key id is a number"), "{e}");
    let e = usage_error(&[
        "report",
        "verify",
        "r",
        "--vcek",
        "v",
        "--report-data",
        "zz",
    ]);
    assert!(e.contains("not a hex digit"), "{e}");
    let e = usage_error(&[
        "report",
        "verify",
        "r",
        "--vcek",
        "v",
        "--measurement",
        "00",
    ]);
    assert!(e.contains("expected exactly 48"), "{e}");
    // Nonces are exactly 64 bytes, for both attest commands and report verify.
    for len in [1, 32, 63, 65, 4097] {
        let nonce = "00".repeat(len);
        for args in [
            &["attest", "services", "--nonce", &nonce, "-o", "x"][..],
            &["attest", "key", "1", "--nonce", &nonce, "-o", "x"][..],
            &[
                "report",
                "verify",
                "r",
                "--vcek",
                "v",
                "--manifest",
                "m",
                "--nonce",
                &nonce,
            ][..],
        ] {
            let e = usage_error(args);
            assert!(
                e.contains(&format!(
                    "the nonce is {len} bytes; it must be exactly 64 bytes"
                )),
                "{e}"
            );
        }
    }
    let e = usage_error(&[
        "report",
        "verify",
        "r",
        "--vcek",
        "v",
        "--min-tcb",
        "ucode=3",
    ]);
    assert!(e.contains("not a TCB component"), "{e}");
    let e = usage_error(&[
        "report",
        "verify",
        "r",
        "--vcek",
        "v",
        "--min-tcb",
        "snp=300",
    ]);
    assert!(e.contains("0 to 255"), "{e}");
    let e = usage_error(&[
        "attest",
        "services",
        "--nonce",
        &NONCE,
        "--service",
        "nope",
        "-o",
        "x",
    ]);
    assert!(e.contains("expected a GUID"), "{e}");
    let j = json_usage_error(&["random", "100000"]);
    assert_eq!(j["usage_error"], "invalid_value", "{j}");
    assert_eq!(j["value"], "100000", "{j}");
    assert!(
        j["message"].as_str().unwrap().contains("at most 4096"),
        "{j}"
    );
}

#[test]
fn missing_arguments_are_named() {
    let e = usage_error(&["sign"]);
    assert!(e.contains("required arguments were not provided"), "{e}");
    assert!(e.contains("<ID>"), "{e}");
    let e = usage_error(&["attest", "services", "-o", "x"]);
    assert!(e.contains("--nonce <HEX>"), "{e}");
    let e = usage_error(&["report", "verify", "--vcek", "v"]);
    assert!(e.contains("<FILE|--dir <DIR>>"), "{e}");
    let j = json_usage_error(&["sign"]);
    assert_eq!(j["usage_error"], "missing_argument", "{j}");
    // A group alone prints its help on stderr, exit 2.
    for args in [&[][..], &["key"], &["attest"], &["report"]] {
        let e = usage_error(args);
        assert!(e.contains("Commands:"), "{args:?}: {e}");
    }
}

#[test]
fn conflicting_options_are_refused() {
    let e = usage_error(&["report", "verify", "r", "--vcek", "v", "--certs", "t"]);
    assert!(
        e.contains("'--vcek <CERT>' cannot be used with '--certs <TABLE>'"),
        "{e}"
    );
    let e = usage_error(&[
        "report",
        "verify",
        "r",
        "--vcek",
        "v",
        "--manifest",
        "m",
        "--key-binding",
        "b",
        "--nonce",
        &NONCE,
    ]);
    assert!(e.contains("cannot be used with"), "{e}");
    let rd = "00".repeat(64);
    let e = usage_error(&[
        "report",
        "verify",
        "r",
        "--vcek",
        "v",
        "--report-data",
        &rd,
        "--nonce",
        &NONCE,
    ]);
    assert!(e.contains("cannot be used with"), "{e}");
    let j = json_usage_error(&["random", "4", "--hex"]);
    assert_eq!(j["usage_error"], "argument_conflict", "{j}");
    let e = usage_error(&[
        "attest",
        "services",
        "--nonce",
        &NONCE,
        "--manifest-version",
        "1",
        "-o",
        "x",
    ]);
    assert!(e.contains("--service <GUID>"), "{e}");
    let j = json_usage_error(&["report", "verify", "r", "--vcek", "v", "--certs", "t"]);
    assert_eq!(j["usage_error"], "argument_conflict", "{j}");
}

#[test]
fn runtime_errors_with_json_are_json() {
    let o = nitride(&[
        "key",
        "list",
        "--socket",
        "/nonexistent/vhsm.sock",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "vhsm", "{v}");
    assert_eq!(v["error"]["exit_code"], 1, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot reach the vHSM at /nonexistent/vhsm.sock"),
        "{v}"
    );
    assert!(
        stderr(&o).contains("cannot reach the vHSM"),
        "{}",
        stderr(&o)
    );
    let o = nitride(&["report", "show", "/nonexistent/report.bin", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "input", "{v}");
    // Without --json nothing goes to stdout.
    let o = nitride(&["report", "show", "/nonexistent/report.bin"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
}

#[test]
fn completions_generate_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F _nitride"),
        ("zsh", "#compdef nitride"),
        ("fish", "complete -c nitride"),
        ("elvish", "nitride"),
        ("powershell", "nitride"),
    ] {
        let o = nitride(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        assert!(script.contains(marker), "{shell}: {script}");
        // Commands and options are completed; bash, zsh and fish complete typed values.
        for word in ["generate", "socket"] {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
        if ["bash", "zsh", "fish"].contains(&shell) {
            assert!(script.contains("ecdsa-p384"), "{shell} lacks the key types");
        }
    }
    let e = usage_error(&["completions", "tcsh"]);
    assert!(e.contains("invalid value 'tcsh'"), "{e}");
}

#[test]
fn bash_accepts_its_completion_script() {
    let o = nitride(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("nitride.bash");
    std::fs::write(&script, &o.stdout).unwrap();
    // Source it and ask for the completions of `nitride key ge`.
    let check = format!(
        "source {}; COMP_WORDS=(nitride key ge); COMP_CWORD=2; _nitride nitride ge key; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &check])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let words = String::from_utf8_lossy(&out.stdout);
    assert!(words.lines().any(|w| w == "generate"), "{words}");
}
