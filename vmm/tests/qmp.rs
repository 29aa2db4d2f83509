//! End-to-end tests of the control sockets on this host's /dev/kvm with the ticker payload
//! (tests/payloads/ticker.S): the real QMP client from PyPI (`qemu.qmp`, installed here with
//! pip when missing; scripts/install-deps.sh installs it too) and `socat` on the monitor.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "these tests boot real VMs and need /dev/kvm (not present on this host)"
    );
}

fn run(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(st.success(), "{cmd} {args:?} failed");
}

/// tests/payloads/ticker.S as a Multiboot ELF32 image, built once.
fn ticker() -> PathBuf {
    static ELF: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ELF.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/payloads/ticker.S");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let s = |p: PathBuf| p.to_str().unwrap().to_string();
        let (obj, elf64, elf) = (
            s(dir.join("ticker.o")),
            s(dir.join("ticker64.elf")),
            s(dir.join("ticker.elf")),
        );
        run("cc", &["-c", "-o", &obj, src.to_str().unwrap()]);
        run(
            "ld",
            &[
                "-m",
                "elf_x86_64",
                "-Ttext=0x100000",
                "-z",
                "noseparate-code",
                "-nostdlib",
                "-o",
                &elf64,
                &obj,
            ],
        );
        run(
            "objcopy",
            &["-I", "elf64-x86-64", "-O", "elf32-i386", &elf64, &elf],
        );
        PathBuf::from(elf)
    })
    .clone()
}

/// The qemu.qmp package, installed with pip if this Python lacks it.
fn require_qemu_qmp() {
    let has = || {
        Command::new("python3")
            .args(["-c", "import qemu.qmp"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has() {
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "qemu.qmp"])
            .status();
    }
    assert!(
        has(),
        "python3 cannot import qemu.qmp and pip could not install it (scripts/install-deps.sh)"
    );
}

fn tmp(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()))
}

/// A free loopback TCP port (bound, then released for minivmm to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_exit(mut child: Child, secs: u64) -> (Option<i32>, String) {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return (st.code(), err);
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("minivmm still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `path` exists (a socket minivmm binds).
fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{path:?} never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs HMP `commands` through socat on the monitor at `port`; returns what came back.
fn socat_hmp(port: u16, commands: &str) -> String {
    let mut c = Command::new("socat")
        .args(["-t", "2", "-", &format!("TCP:127.0.0.1:{port}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("socat runs (apt install socat; scripts/install-deps.sh)");
    let mut stdin = c.stdin.take().unwrap();
    for line in commands.lines() {
        writeln!(stdin, "{line}").unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(stdin);
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn qmp_client_and_monitor_drive_the_vm_until_powerdown() {
    require_kvm();
    require_qemu_qmp();
    let sock = tmp("qmp.sock");
    let console = tmp("ticker-console");
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_minivmm"))
        .args(["--kernel", ticker().to_str().unwrap(), "--memory", "32M"])
        .args(["--cpus", "2", "--iommu", "--device", "edu"])
        .args(["--serial", &format!("file={}", console.display())])
        .args(["--qmp", &format!("unix:{},server,wait=off", sock.display())])
        .args([
            "--monitor",
            &format!("telnet:127.0.0.1:{port},server,nowait"),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("minivmm runs");
    wait_for(&sock);

    // The monitor: one client, then a second one (clients one after another).
    let out = socat_hmp(
        port,
        "help\ninfo status\ninfo pci\ninfo mtree\ninfo iommu\nfrob\n",
    );
    for needle in [
        "monitor - type 'help' for more information",
        "(qemu) ",
        "system_powerdown -- ",
        "VM status: running",
        "PCI device 1234:11e8",
        "acpi ged (power button)",
        "serial (COM1)",
        "VT-d: translation off",
        "unknown command: 'frob'",
    ] {
        assert!(
            out.contains(needle),
            "monitor output lacks {needle:?}:\n{out}"
        );
    }
    let out = socat_hmp(port, "stop\ninfo status\ncont\ninfo status\n");
    let paused = out.find("VM status: paused").expect("paused after stop");
    let running = out.rfind("VM status: running").expect("running after cont");
    assert!(paused < running, "{out}");

    // QMP with qemu.qmp: queries, errors, stop/cont with events, powerdown.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/qmp_client.py");
    let mut py = Command::new("python3")
        .arg(&script)
        .arg(&sock)
        .arg(&console)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut lines = Vec::new();
    for l in BufReader::new(py.stdout.take().unwrap()).lines() {
        let l = l.unwrap();
        println!("{l}");
        lines.push(l);
    }
    let st = py.wait_with_output().unwrap();
    assert!(
        st.status.success() && lines.iter().any(|l| l == "QMP-CLIENT-PASS"),
        "the qemu.qmp client failed: {}\n{}",
        lines.join("\n"),
        String::from_utf8_lossy(&st.stderr)
    );
    // The guest powered off through the power button: status 0, no error line.
    let (code, err) = wait_exit(child, 30);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert!(!err.contains("minivmm: error"), "stderr: {err}");
    let text = std::fs::read_to_string(&console).unwrap();
    assert!(
        text.ends_with("P\n"),
        "the payload saw the button: {text:?}"
    );
    let _ = std::fs::remove_file(&console);
}

#[test]
fn qmp_quit_and_system_reset_end_the_vm_with_status_0() {
    require_kvm();
    for (cmd, cause) in [
        ("quit", "host-qmp-quit"),
        ("system_reset", "host-qmp-system-reset"),
    ] {
        let sock = tmp(&format!("qmp-{cmd}.sock"));
        let child = Command::new(env!("CARGO_BIN_EXE_minivmm"))
            .args(["--kernel", ticker().to_str().unwrap(), "--memory", "32M"])
            .args(["--serial", "off"])
            // Without wait=off the guest waits for this client.
            .args(["--qmp", &format!("unix:{},server", sock.display())])
            .stderr(Stdio::piped())
            .spawn()
            .expect("minivmm runs");
        wait_for(&sock);
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"QMP\""), "greeting: {line}");
        // Two commands in one write, without a newline between them.
        write!(
            s,
            "{{\"execute\":\"qmp_capabilities\"}}{{\"execute\":\"{cmd}\",\"id\":\"x\"}}"
        )
        .unwrap();
        let mut got = String::new();
        while !got.contains("\"SHUTDOWN\"") {
            line.clear();
            if r.read_line(&mut line).unwrap() == 0 {
                break;
            }
            got += &line;
        }
        assert!(
            got.lines()
                .any(|l| l.contains("\"id\":\"x\"") && l.contains("\"return\":{}")),
            "{cmd}: {got}"
        );
        assert!(
            got.contains(&format!("\"reason\":\"{cause}\"")),
            "{cmd}: {got}"
        );
        if cmd == "system_reset" {
            let reset = got.find("\"RESET\"").expect("a RESET event");
            assert!(reset < got.find("\"SHUTDOWN\"").unwrap(), "{got}");
        }
        let (code, err) = wait_exit(child, 30);
        assert_eq!(code, Some(0), "{cmd}: stderr {err}");
    }
}

#[test]
fn control_socket_bad_address_is_one_clear_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_minivmm"))
        .args(["--kernel", "/nonexistent", "--qmp", "unix:/tmp/x.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only server sockets are supported"), "{err}");
}
