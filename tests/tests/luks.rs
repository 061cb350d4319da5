//! LUKS2 volumes unlocked by the vHSM, end to end: the firmware in QEMU, the real
//! `cryptsetup` (Debian cryptsetup-bin) on image files, `nitride luks enroll|unlock`
//! relaying through the relay guest. Sealed keys: enroll, a new VM (the same
//! images) unlocks, another image does not, a changed token is refused with a clear
//! message. Remote keys: the test KBS releases the vault key after attestation; with
//! the KBS refusing the measurement, unlock fails and the volume stays closed.
//! Throughout, every process's argv and environment is watched for the passphrase,
//! and the logs are searched for it afterwards.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use nitride_protocol::launch_config::LaunchConfig;
use nitride_protocol::vhsm::{LUKS_PASSPHRASE_INFO_PREFIX, LUKS_PASSPHRASE_SALT};
use nitride_qemu::RunningVm;
use nitride_tests::{images, nitride, start_relay_with, test_dir, Kbs};

fn cryptsetup(args: &[&str], stdin: &[u8]) -> (bool, String) {
    let mut child = Command::new("cryptsetup")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cryptsetup is needed (Debian: cryptsetup-bin)");
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A fresh LUKS2 image (24 MiB, sparse: the 16 MiB header and 8 MiB of data) with a recovery key file; removed on drop.
struct Volume {
    image: PathBuf,
    recovery: PathBuf,
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.image);
        let _ = std::fs::remove_file(&self.recovery);
    }
}

impl Volume {
    fn new(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let image = dir.join(format!("{name}.img"));
        let recovery = dir.join(format!("{name}.recovery"));
        std::fs::File::create(&image)
            .unwrap()
            .set_len(24 << 20)
            .unwrap();
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
            .unwrap();
        std::fs::write(&recovery, key).unwrap();
        let (ok, out) = cryptsetup(
            &[
                "luksFormat",
                "--batch-mode",
                "--type",
                "luks2",
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--key-file",
                &recovery.display().to_string(),
                &image.display().to_string(),
            ],
            b"",
        );
        assert!(ok, "luksFormat: {out}");
        Self { image, recovery }
    }

    fn path(&self) -> String {
        self.image.display().to_string()
    }

    /// Whether `passphrase` opens the volume (cryptsetup's own check).
    fn opens_with(&self, passphrase: &[u8]) -> bool {
        cryptsetup(
            &["open", "--test-passphrase", "--key-file", "-", &self.path()],
            passphrase,
        )
        .0
    }

    fn token(&self, id: u32) -> String {
        let (ok, out) = cryptsetup(
            &[
                "token",
                "export",
                "--token-id",
                &id.to_string(),
                &self.path(),
            ],
            b"",
        );
        assert!(ok, "token export: {out}");
        out
    }

    fn replace_token(&self, id: u32, json: &str) {
        let (ok, out) = cryptsetup(
            &[
                "token",
                "remove",
                "--token-id",
                &id.to_string(),
                &self.path(),
            ],
            b"",
        );
        assert!(ok, "token remove: {out}");
        let (ok, out) = cryptsetup(
            &[
                "token",
                "import",
                "--token-id",
                &id.to_string(),
                "--json-file",
                "-",
                &self.path(),
            ],
            json.as_bytes(),
        );
        assert!(ok, "token import: {out}");
    }
}

/// Watches every process's argv and environment (`/proc/*/cmdline`,
/// `/proc/*/environ`) until stopped; remembers everything it read.
struct Watcher {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<HashSet<Vec<u8>>>>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Watcher {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut scans = 0;
            while !s.load(Ordering::Relaxed) {
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    for f in ["cmdline", "environ"] {
                        if let Ok(b) = std::fs::read(entry.path().join(f)) {
                            v.lock().unwrap().insert(b);
                        }
                    }
                }
                scans += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            scans
        });
        Self {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stop; the number of scans and whether any argv or environment held `secret`.
    fn finish(mut self, secret: &[u8]) -> (usize, bool, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let scans = self.thread.take().unwrap().join().unwrap();
        let seen = self.seen.lock().unwrap();
        let found = seen
            .iter()
            .any(|b| b.windows(secret.len()).any(|w| w == secret));
        let cryptsetups = seen
            .iter()
            .filter(|b| b.starts_with(b"cryptsetup\0"))
            .count();
        (scans, found, cryptsetups)
    }
}

/// Whether any file under `dir` (image files excluded) contains `secret`.
fn logs_contain(dir: &Path, secret: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            hits.extend(logs_contain(&p, secret));
        } else if p.extension().is_none_or(|e| e != "img") {
            let b = std::fs::read(&p).unwrap_or_default();
            if b.windows(secret.len()).any(|w| w == secret) {
                hits.push(p);
            }
        }
    }
    hits
}

fn relay(name: &str, guest: &Path) -> RunningVm {
    let i = images();
    RunningVm::start_with_psp(&i.svsm, guest, &test_dir(name), "", None)
        .unwrap_or_else(|e| panic!("could not start the relay VM: {e}"))
}

fn passphrase(sock: &Path, image: &str) -> Vec<u8> {
    let (code, out, e) = nitride(Some(sock), &["luks", "unlock", image, "--print-passphrase"]);
    assert_eq!(code, 0, "{e}");
    assert_eq!(out.len(), 64);
    assert!(out.iter().all(|c| c.is_ascii_hexdigit()));
    out
}

/// Open the volume for real as `name`, write a marker through device-mapper (or
/// read it back when `write` is false), close it. `None`: device-mapper is not
/// usable here (and why).
fn open_for_real(sock: &Path, v: &Volume, name: &str, write: bool) -> Result<(), String> {
    if !Path::new("/dev/mapper/control").exists() {
        return Err("no /dev/mapper/control".into());
    }
    let (code, _, e) = nitride(Some(sock), &["luks", "unlock", &v.path(), name]);
    if code != 0 {
        if e.contains("device-mapper") || e.contains("Cannot initialize") || e.contains("dm") {
            return Err(format!("device-mapper is not usable here: {e}"));
        }
        panic!("unlock {name}: {e}");
    }
    let dev = format!("/dev/mapper/{name}");
    let marker = b"nitride luks test: written through dm-crypt\n";
    let result = if write {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&dev)
            .and_then(|mut f| f.write_all(marker).and_then(|()| f.sync_all()))
            .map_err(|e| e.to_string())
    } else {
        let mut got = vec![0u8; marker.len()];
        std::fs::File::open(&dev)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut got))
            .map_err(|e| e.to_string())
            .map(|()| assert_eq!(&got[..], &marker[..], "read back through dm-crypt"))
    };
    let (ok, out) = cryptsetup(&["close", name], b"");
    assert!(ok, "close: {out}");
    result.map_err(|e| panic!("{dev}: {e}"))
}

/// Where Debian's libcryptsetup 2.6 loads token plugins from (its only path).
const PLUGIN_DIR: &str = "/lib/x86_64-linux-gnu/cryptsetup";

/// Build the token plugin (a no-op when `cargo test` already built it) and install
/// it where libcryptsetup looks, as `cargo xtask install-token` does (without debug
/// information); once per test process.
fn install_plugin() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let root = nitride_qemu::repo_root();
        let st = Command::new(cargo)
            .args(["build", "--quiet", "-p", "nitride-luks-token"])
            .current_dir(&root)
            .status()
            .unwrap();
        assert!(st.success(), "building nitride-luks-token failed");
        let so = root.join("target/x86_64-unknown-linux-gnu/debug/libcryptsetup_token_nitride.so");
        let dest = Path::new(PLUGIN_DIR).join("libcryptsetup-token-nitride.so");
        let st = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(&so)
            .arg(&dest)
            .status()
            .expect("objcopy (binutils) installs the plugin");
        assert!(
            st.success(),
            "installing {} failed (run as root)",
            dest.display()
        );
    });
}

/// `cryptsetup open --test-passphrase --token-only` through the plugin, which
/// reaches the vHSM at `sock`.
fn token_only(sock: &Path, image: &str) -> (bool, String) {
    install_plugin();
    let out = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--token-only", "-v", image])
        .env("NITRIDE_SOCKET", sock)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Sealed: enroll in one VM; a new VM with the same images unlocks (test and, where
/// device-mapper works, for real, a write and a read across two opens); a changed
/// token fails with a clear message; another guest image (another measurement)
/// cannot unlock. The passphrase is in no argv, environment or log.
#[test]
fn sealed_volume_unlocks_only_in_the_same_image() {
    let name = "luks-sealed";
    let dir = test_dir(name);
    let v = Volume::new(&dir, "sealed");
    let watcher = Watcher::start();
    let first;
    {
        let vm = relay(&format!("{name}-1"), &images().relay_guest);
        let started = std::time::Instant::now();
        let (code, out, e) = nitride(
            Some(&vm.socket),
            &[
                "luks",
                "enroll",
                &v.path(),
                "--sealed",
                "--key-file",
                &v.recovery.display().to_string(),
                "--json",
            ],
        );
        eprintln!("luks enroll --sealed took {:?}", started.elapsed());
        assert_eq!(code, 0, "{e}");
        let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(j["source"], "sealed");
        assert_eq!(j["keyslot"], 1);
        first = passphrase(&vm.socket, &v.path());
        assert!(
            v.opens_with(&first),
            "cryptsetup opens it with the passphrase"
        );
        let mut c = nitride_tests::VhsmClient::new(
            nitride_tests::RelayClient::connect(&vm.socket).unwrap(),
        );
        assert!(
            c.list().unwrap().is_empty(),
            "enroll and unlock leave no key in the vault"
        );
    }
    let token = v.token(0);
    let t: serde_json::Value = serde_json::from_str(&token).unwrap();
    assert_eq!(t["type"], "nitride");
    assert_eq!(t["keyslots"], serde_json::json!(["1"]));
    {
        // The firmware restarted: a new VM, the same images.
        let vm = relay(&format!("{name}-2"), &images().relay_guest);
        let started = std::time::Instant::now();
        let (code, out, e) = nitride(
            Some(&vm.socket),
            &["luks", "unlock", &v.path(), "--test-passphrase"],
        );
        eprintln!("luks unlock (sealed) took {:?}", started.elapsed());
        assert_eq!(code, 0, "{e}");
        assert!(String::from_utf8_lossy(&out).contains("opens keyslot 1"));
        assert_eq!(passphrase(&vm.socket, &v.path()), first);
        let (ok, out) = token_only(&vm.socket, &v.path());
        assert!(ok, "the plugin opens it: {out}");
        assert!(out.contains("Key slot 1 unlocked"), "{out}");
        let (ok, out) = cryptsetup(&["luksDump", &v.path()], b"");
        assert!(
            ok && out.contains("nitride version: 1"),
            "the plugin's dump: {out}"
        );
        match open_for_real(&vm.socket, &v, "nitride-luks-test", true)
            .and_then(|()| open_for_real(&vm.socket, &v, "nitride-luks-test", false))
        {
            Ok(()) => eprintln!(
                "opened for real through device-mapper: wrote, closed, reopened, read back"
            ),
            Err(why) => eprintln!("SKIPPED opening for real: {why}"),
        }
        // A changed token: one byte of the sealed key flipped.
        let mut blob = STANDARD.decode(t["sealed_key"].as_str().unwrap()).unwrap();
        let mid = blob.len() / 2;
        blob[mid] ^= 1;
        let mut changed = t.clone();
        changed["sealed_key"] = STANDARD.encode(&blob).into();
        v.replace_token(0, &changed.to_string());
        let (code, _, e) = nitride(
            Some(&vm.socket),
            &["luks", "unlock", &v.path(), "--test-passphrase"],
        );
        assert_eq!(code, 1);
        assert!(
            e.contains("the sealed volume key does not open in this SVSM"),
            "{e}"
        );
        let (ok, out) = token_only(&vm.socket, &v.path());
        assert!(!ok, "{out}");
        assert!(
            out.contains("the sealed volume key does not open in this SVSM"),
            "the plugin says why: {out}"
        );
        // A token bound to another volume (its UUID changed).
        let mut other = t.clone();
        other["volume_uuid"] = "00000000-0000-4000-8000-000000000000".into();
        v.replace_token(0, &other.to_string());
        let (code, _, e) = nitride(
            Some(&vm.socket),
            &["luks", "unlock", &v.path(), "--test-passphrase"],
        );
        assert_eq!(code, 1);
        assert!(e.contains("is bound to volume 00000000-"), "{e}");
        v.replace_token(0, &token);
    }
    {
        // Another guest image: another launch measurement.
        let guest = nitride_tests::relay_guest_variant();
        let other_guest = dir.join("relay-guest-variant");
        std::fs::write(&other_guest, guest).unwrap();
        let vm = relay(&format!("{name}-3"), &other_guest);
        let (code, out, e) = nitride(
            Some(&vm.socket),
            &["luks", "unlock", &v.path(), "--print-passphrase"],
        );
        assert_eq!((code, out.len()), (1, 0));
        assert!(
            e.contains("the sealed volume key does not open in this SVSM"),
            "{e}"
        );
        let _ = std::fs::remove_file(&other_guest);
    }
    let (scans, found, cryptsetups) = watcher.finish(&first);
    eprintln!("watched /proc {scans} times; saw {cryptsetups} cryptsetup argv");
    assert!(cryptsetups > 0, "the watcher saw cryptsetup run");
    assert!(
        !found,
        "the passphrase was in some process's argv or environment"
    );
    let raw = hex::decode(&first).unwrap();
    for base in [
        dir.clone(),
        test_dir(&format!("{name}-1")),
        test_dir(&format!("{name}-2")),
        test_dir(&format!("{name}-3")),
    ] {
        for secret in [&first[..], &raw[..]] {
            assert_eq!(logs_contain(&base, secret), Vec::<PathBuf>::new());
        }
    }
}

/// Python's HKDF-SHA-384 (the outside judge of the passphrase derivation).
fn python_hkdf(ikm: &[u8], salt: &[u8], info: &[u8]) -> Vec<u8> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys\n\
             from cryptography.hazmat.primitives.kdf.hkdf import HKDF\n\
             from cryptography.hazmat.primitives import hashes\n\
             a = [bytes.fromhex(x) for x in sys.argv[1:4]]\n\
             print(HKDF(hashes.SHA384(), 32, a[1], a[2]).derive(a[0]).hex())",
            &hex::encode(ikm),
            &hex::encode(salt),
            &hex::encode(info),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .as_bytes()
        .to_vec()
}

/// Remote: the vault key is an owner-signed envelope the test KBS releases after
/// attestation. Enroll and unlock provision it; the passphrase is exactly the
/// documented HKDF of the owner's key and the volume UUID (Python computes it);
/// with the KBS refusing the launch measurement, unlock fails and the volume stays
/// closed. No argv, environment or log holds the passphrase.
#[test]
fn remote_volume_unlocks_only_with_the_kbs_release() {
    let name = "luks-kbs";
    let dir = test_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let f = |n: &str| dir.join(n).display().to_string();
    let secret: Vec<u8> = (0u8..32)
        .map(|b| b.wrapping_mul(53).wrapping_add(7))
        .collect();
    std::fs::write(f("volume.key"), &secret).unwrap();
    for args in [
        vec!["owner", "keygen", "--out", &f("owner.pem")][..].to_vec(),
        vec![
            "owner",
            "launch-config",
            "--owner",
            &f("owner.pem.pub"),
            "--out",
            &f("launch-config.bin"),
        ],
    ] {
        let (code, _, e) = nitride(None, &args);
        assert_eq!(code, 0, "{e}");
    }
    let (code, _, e) = nitride(
        None,
        &[
            "owner",
            "envelope",
            "--key",
            &f("owner.pem"),
            "--type",
            "aes-256",
            "--usage",
            "release",
            "--vmpls",
            "1",
            "--label",
            "volume",
            "--in",
            &f("volume.key"),
            "--out",
            &f("envelope.jws"),
        ],
    );
    assert_eq!(code, 0, "{e}");
    let _ = std::fs::remove_file(f("volume.key"));
    let config = LaunchConfig::parse(&std::fs::read(f("launch-config.bin")).unwrap()).unwrap();
    let i = images();
    let m = hex::encode(
        nitride_qemu::measure::launch_measurement_with(
            &i.svsm,
            &i.relay_guest,
            Some(Path::new(&f("launch-config.bin"))),
        )
        .unwrap(),
    );
    let resource = format!("nitride/key/volume={}", f("envelope.jws"));
    let good = Kbs::start(&dir, "kbs", &["--measurement", &m, "--resource", &resource]);
    let wrong = "00".repeat(48);
    let refusing = Kbs::start(
        &dir,
        "kbs-refusing",
        &["--measurement", &wrong, "--resource", &resource],
    );
    let v = Volume::new(&dir, "remote");
    let watcher = Watcher::start();
    let (vm, client) = start_relay_with(name, "", Some(&config));
    drop(client);
    let s = vm.socket.clone();

    let started = std::time::Instant::now();
    let (code, _, e) = nitride(
        Some(&s),
        &[
            "luks",
            "enroll",
            &v.path(),
            "--kbs",
            &good.url,
            "--resource",
            "nitride/key/volume",
            "--key-file",
            &v.recovery.display().to_string(),
        ],
    );
    eprintln!("luks enroll --kbs took {:?}", started.elapsed());
    assert_eq!(code, 0, "{e}\n{}", good.log());
    let started = std::time::Instant::now();
    let (code, _, e) = nitride(
        Some(&s),
        &["luks", "unlock", &v.path(), "--test-passphrase"],
    );
    eprintln!("luks unlock (kbs) took {:?}", started.elapsed());
    assert_eq!(code, 0, "{e}\n{}", good.log());
    let p = passphrase(&s, &v.path());
    let (ok, out) = token_only(&s, &v.path());
    assert!(ok, "the plugin opens it: {out}");
    let uuid = cryptsetup(&["luksUUID", &v.path()], b"").1;
    let mut info = LUKS_PASSPHRASE_INFO_PREFIX.to_vec();
    info.extend_from_slice(&hex::decode(uuid.trim().replace('-', "")).unwrap());
    assert_eq!(p, python_hkdf(&secret, LUKS_PASSPHRASE_SALT, &info));
    assert!(v.opens_with(&p));

    // The KBS refuses this launch measurement: nothing is released, nothing opens.
    let token = v.token(0);
    let mut t: serde_json::Value = serde_json::from_str(&token).unwrap();
    assert_eq!(t["source"], "kbs");
    t["kbs_url"] = refusing.url.clone().into();
    v.replace_token(0, &t.to_string());
    let mapper = "nitride-luks-kbs-test";
    for args in [
        vec!["luks", "unlock", &v.path(), "--print-passphrase"],
        vec!["luks", "unlock", &v.path(), mapper],
    ] {
        let (code, out, e) = nitride(Some(&s), &args);
        assert_eq!((code, out.len()), (1, 0), "{e}");
        assert!(e.contains("provisioning nitride/key/volume from"), "{e}");
        assert!(e.contains("PolicyDeny") && e.contains("401"), "{e}");
    }
    let (ok, out) = token_only(&s, &v.path());
    assert!(!ok, "{out}");
    assert!(out.contains("PolicyDeny"), "the plugin says why: {out}");
    assert!(
        !Path::new(&format!("/dev/mapper/{mapper}")).exists(),
        "the volume stays closed"
    );
    v.replace_token(0, &token);
    drop(vm);

    let (_, found, cryptsetups) = watcher.finish(&p);
    assert!(cryptsetups > 0);
    assert!(
        !found,
        "the passphrase was in some process's argv or environment"
    );
    let raw = hex::decode(&p).unwrap();
    for secret in [&p[..], &raw[..]] {
        assert_eq!(logs_contain(&dir, secret), Vec::<PathBuf>::new());
    }
}
