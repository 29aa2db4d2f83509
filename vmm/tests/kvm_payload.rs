//! End-to-end tests of the `minivmm` binary on this host's /dev/kvm with tiny payloads from
//! tests/payloads/ (assembled here with binutils). They need /dev/kvm and fail, saying so,
//! without it.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn minivmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_minivmm"))
}

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
        .unwrap_or_else(|e| panic!("cannot run {cmd} (install binutils): {e}"));
    assert!(st.success(), "{cmd} {args:?} failed");
}

/// The hello payload as a Multiboot image ("hello") or a PVH ELF ("hello-pvh"), built once.
fn payload(name: &str) -> PathBuf {
    static HELLO: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    static HELLO_PVH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    static VTD: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    static IDLE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    static PCIFIND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    match name {
        "idle" => IDLE.get_or_init(|| assemble("idle", false)).clone(),
        "pcifind" => PCIFIND.get_or_init(|| assemble("pcifind", false)).clone(),
        "vtd" => VTD.get_or_init(|| assemble("vtd", false)).clone(),
        "hello" => HELLO.get_or_init(|| assemble("hello", false)).clone(),
        "hello-pvh" => HELLO_PVH.get_or_init(|| assemble("hello", true)).clone(),
        _ => panic!("unknown payload {name}"),
    }
}

/// Builds tests/payloads/NAME.S: a Multiboot ELF32 image, or with `pvh` an ELF64 with a PVH
/// note. Returns its path.
fn assemble(name: &str, pvh: bool) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/payloads/{name}.S"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let tag = if pvh { "-pvh" } else { "" };
    let obj = dir.join(format!("{name}{tag}.o"));
    let elf64 = dir.join(format!("{name}{tag}64.elf"));
    let elf = dir.join(format!("{name}{tag}.elf"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let mut cc = vec!["-c", "-o"];
    let (o, sr) = (s(&obj), s(&src));
    cc.extend([o.as_str(), sr.as_str()]);
    if pvh {
        cc.push("-DPVH");
    }
    run("cc", &cc);
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
            &s(&elf64),
            &s(&obj),
        ],
    );
    if pvh {
        return elf64;
    }
    run(
        "objcopy",
        &[
            "-I",
            "elf64-x86-64",
            "-O",
            "elf32-i386",
            &s(&elf64),
            &s(&elf),
        ],
    );
    elf
}

fn output(args: &[&str]) -> Output {
    minivmm().args(args).output().expect("minivmm runs")
}

/// Boots payload `name` with 64 MiB and isa-debug-exit, and checks that it printed every line
/// of the hello payload and exited through the debug port with 0x21 (status 0x43).
fn assert_hello_runs(name: &str) {
    require_kvm();
    let elf = payload(name);
    let out = output(&[
        "--kernel",
        elf.to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "minivmm-payload: hello from long mode",
        "minivmm-payload: fw_cfg signature QEMU",
        "minivmm-payload: IOAPIC interrupt on vector 0x40",
    ] {
        assert!(
            stdout.contains(line),
            "{name}: no {line:?} in stdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // isa-debug-exit: the payload writes 0x21 -> status (0x21 << 1) | 1.
    assert_eq!(out.status.code(), Some(0x43), "{name}");
}

#[test]
fn payload_long_mode_serial_and_ioapic_interrupt() {
    assert_hello_runs("hello");
}

#[test]
fn payload_boots_through_pvh() {
    // The PVH build checks the hvm_start_info magic at EBX before going on.
    assert_hello_runs("hello-pvh");
}

#[test]
fn payload_debug_exit_port_is_configurable() {
    require_kvm();
    let elf = payload("hello");
    // The payload writes to port 0xf4; a device at 0xf0 with 8 ports covers it (offset 4).
    let out = output(&[
        "--kernel",
        elf.to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
        "iobase=0xf0,iosize=8",
    ]);
    assert_eq!(out.status.code(), Some(0x43), "0xf4 is inside 0xf0..0xf8");
}

#[test]
fn payload_runs_with_ram_split_at_low_ram_end() {
    require_kvm();
    let elf = payload("hello");
    // 32 MiB below 4 GiB, the other 32 MiB from 4 GiB: two RAM slots.
    let out = output(&[
        "--kernel",
        elf.to_str().unwrap(),
        "--memory",
        "size=64M,low-ram-end=32M",
        "--debug-exit",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0x43),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn debug_exit_on_com1_ports_is_one_clear_line() {
    require_kvm();
    let out = output(&["--kernel", "k", "--debug-exit", "iobase=0x3fc"]);
    assert_one_line_error(&out, "isa-debug-exit at 0x3fc (size 0x4) overlaps COM1");
}

#[test]
fn serial_file_mode_writes_console_to_file() {
    require_kvm();
    let elf = payload("hello");
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serial.log");
    let arg = format!("file={}", log.display());
    let out = output(&[
        "--kernel",
        elf.to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
        "--serial",
        &arg,
    ]);
    assert_eq!(out.status.code(), Some(0x43));
    assert!(
        out.stdout.is_empty(),
        "console went to the file, not stdout"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("hello from long mode"));
}

fn assert_one_line_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "must fail");
    assert!(err.starts_with("minivmm: error: "), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "stderr {err:?} lacks {needle:?}");
    assert!(!err.contains("panicked"), "no panic: {err}");
}

#[test]
fn missing_kernel_is_one_clear_line() {
    let out = output(&["--kernel", "/nonexistent/bzImage"]);
    assert_one_line_error(&out, "/nonexistent/bzImage");
}

#[test]
fn kernel_of_unknown_format_is_one_clear_line() {
    require_kvm();
    let junk = Path::new(env!("CARGO_TARGET_TMPDIR")).join("junk.bin");
    std::fs::write(&junk, vec![0x90u8; 20000]).unwrap();
    let out = output(&["--kernel", junk.to_str().unwrap()]);
    assert_one_line_error(&out, "not a bzImage");
}

#[test]
fn missing_initramfs_is_one_clear_line() {
    require_kvm();
    let elf = payload("hello");
    let out = output(&[
        "--kernel",
        elf.to_str().unwrap(),
        "--initramfs",
        "/nonexistent/initrd",
    ]);
    assert_one_line_error(&out, "/nonexistent/initrd");
}

#[test]
fn memory_beyond_host_is_one_clear_line() {
    require_kvm();
    let elf = payload("hello");
    let out = output(&["--kernel", elf.to_str().unwrap(), "--memory", "100000G"]);
    assert_one_line_error(&out, "more than this host can give");
}

#[test]
fn bad_flag_value_fails_without_panic() {
    let out = output(&["--kernel", "k", "--cpus", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let out = output(&["--kernel", "k", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn help_documents_every_flag() {
    let out = output(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--kernel",
        "--initramfs",
        "--cmdline",
        "--cpus",
        "--memory",
        "--serial",
        "--debug-exit",
        "--rng",
        "--disk",
        "--net",
        "--seccomp",
        "--qmp",
        "--monitor",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
}

/// Runs payload `name` with 64 MiB, isa-debug-exit and the given extra flags; returns (exit
/// status, stdout, stderr).
fn run_payload(name: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    require_kvm();
    let elf = payload(name);
    let mut args = vec![
        "--kernel",
        elf.to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
    ];
    args.extend_from_slice(extra);
    let out = output(&args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn iommu_translates_edu_dma_and_records_faults() {
    let (code, stdout, stderr) = run_payload("vtd", &["--iommu", "--device", "edu"]);
    for line in [
        "vtd: translation enabled",
        "vtd: DMA through the IOMMU ok",
        "vtd: unmapped DMA blocked, fault reason 5 recorded",
    ] {
        assert!(
            stdout.contains(line),
            "no {line:?} in stdout: {stdout}\nstderr: {stderr}"
        );
    }
    assert_eq!(code, Some(0x63), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains("DMA write of 0x50000 by 00:01.0 blocked"),
        "minivmm logs the blocked DMA: {stderr}"
    );
}

#[test]
fn without_iommu_the_drhd_is_absent() {
    // No --iommu: the register window reads as nothing, so the payload's first check fails.
    let (code, stdout, _) = run_payload("vtd", &["--device", "edu"]);
    assert!(stdout.contains("vtd: FAIL VER"), "{stdout}");
    assert_eq!(code, Some(0x61));
}

/// Waits up to `secs` for `child`; a process still running then is killed and the test fails
/// (a wedged VMM).
fn wait_bounded(mut child: std::process::Child, secs: u64) -> Output {
    let start = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > std::time::Duration::from_secs(secs) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "minivmm still running after {secs} s (wedged); stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("wait")
}

/// Whether process `pid` is blocked in open(2)/openat(2) (field 1 of /proc/PID/syscall).
fn blocked_in_open(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .is_some_and(|nr| nr == libc::SYS_open.to_string() || nr == libc::SYS_openat.to_string())
}

fn kill(pid: u32, sig: i32) {
    // SAFETY: signals a child this test started and has not reaped.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Starts minivmm on the idle payload (COM1 off, stderr piped) with `cpus` vCPUs and, in
/// debug builds, the fault hook `fault` (`MINIVMM_TEST_FAULT`, vmm/src/lifecycle.rs).
fn spawn_idle(cpus: &str, fault: Option<&str>) -> std::process::Child {
    require_kvm();
    let elf = payload("idle");
    let mut cmd = minivmm();
    cmd.args(["--kernel", elf.to_str().unwrap(), "--memory", "32M"])
        .args(["--cpus", cpus, "--serial", "off"])
        .stderr(std::process::Stdio::piped());
    if let Some(f) = fault {
        cmd.env("MINIVMM_TEST_FAULT", f);
    }
    cmd.spawn().expect("minivmm runs")
}

#[test]
fn sigterm_during_setup_stops_in_order_with_status_143() {
    require_kvm();
    // The kernel is a FIFO: minivmm blocks opening it, halfway through setting the VM up
    // (KVM, RAM and devices are made), until the test opens the other end.
    let fifo = Path::new(env!("CARGO_TARGET_TMPDIR")).join("setup-fifo");
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let child = minivmm()
        .args(["--kernel", fifo.to_str().unwrap(), "--memory", "64M"])
        .args(["--debug-exit"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("minivmm runs");
    let pid = child.id();
    let start = std::time::Instant::now();
    while !blocked_in_open(pid) {
        assert!(
            start.elapsed().as_secs() < 20,
            "minivmm never opened the kernel"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    kill(pid, libc::SIGTERM);
    // Let the open finish (std retries it after the signal); setup then stops at its next
    // step, or fails reading a kernel from a pipe: either way the signal is the reason.
    std::thread::sleep(std::time::Duration::from_millis(200));
    if let Ok(mut w) = std::fs::OpenOptions::new().write(true).open(&fifo) {
        use std::io::Write;
        let _ = w.write_all(&std::fs::read(payload("hello")).unwrap());
    }
    let out = wait_bounded(child, 20);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGTERM),
        "stderr: {err}"
    );
    assert!(
        err.contains("stopped by signal 15; devices released"),
        "stderr: {err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

#[test]
fn sigterm_with_setup_stuck_exits_after_the_stop_deadline() {
    require_kvm();
    // As above, but nobody ever opens the FIFO: setup never reaches its next step.
    let fifo = Path::new(env!("CARGO_TARGET_TMPDIR")).join("stuck-fifo");
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let child = minivmm()
        .args(["--kernel", fifo.to_str().unwrap(), "--memory", "64M"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("minivmm runs");
    let pid = child.id();
    let start = std::time::Instant::now();
    while !blocked_in_open(pid) {
        assert!(
            start.elapsed().as_secs() < 20,
            "minivmm never opened the kernel"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    kill(pid, libc::SIGTERM);
    let out = wait_bounded(child, 20);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGTERM),
        "stderr: {err}"
    );
    assert!(
        err.contains("stopped by signal 15") && err.contains("exiting anyway"),
        "stderr: {err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

#[test]
fn sigterm_with_vcpu_stuck_exits_after_the_stop_deadline() {
    // Debug builds only: vCPU 1 never returns (as if held inside a device handler).
    let child = spawn_idle("2", Some("hang:vcpu1-sandboxed"));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let t = std::time::Instant::now();
    kill(child.id(), libc::SIGTERM);
    let out = wait_bounded(child, 20);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGTERM),
        "stderr: {err}"
    );
    assert!(
        err.contains("stopped by signal 15") && err.contains("exiting anyway"),
        "stderr: {err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        t.elapsed().as_secs() < 10,
        "bounded by the 5 s stop deadline"
    );
}

#[test]
fn sigterm_while_running_stops_in_order_with_status_143() {
    let child = spawn_idle("1", None);
    // Long enough for setup and the guest to start on this emulated KVM.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    kill(child.id(), libc::SIGTERM);
    let out = wait_bounded(child, 20);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGTERM),
        "stderr: {err}"
    );
    assert!(
        err.contains("stopped by signal 15; devices released"),
        "stderr: {err}"
    );
}

#[test]
fn vcpu_panic_stops_vm_with_one_error_line() {
    // Debug builds only: the named thread panics as it starts (see vmm/src/lifecycle.rs),
    // under its seccomp filter.
    let child = spawn_idle("1", Some("panic:vcpu0-sandboxed"));
    let out = wait_bounded(child, 20);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("minivmm: error: thread vcpu0 panicked")
            && err.contains("test panic requested"),
        "stderr: {err}"
    );
}

#[test]
fn seccomp_filter_is_on_by_default_in_every_thread() {
    let child = spawn_idle("2", None);
    let pid = child.id();
    let threads = || -> Vec<(String, String)> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.filter_map(|t| {
                    let p = t.ok()?.path();
                    let comm = std::fs::read_to_string(p.join("comm")).ok()?;
                    let status = std::fs::read_to_string(p.join("status")).ok()?;
                    let mode = status
                        .lines()
                        .find(|l| l.starts_with("Seccomp:"))?
                        .to_string();
                    Some((comm.trim().to_string(), mode))
                })
                .collect()
            })
            .unwrap_or_default()
    };
    // Wait until both vCPUs run (they take their filters as they start).
    let start = std::time::Instant::now();
    while threads()
        .iter()
        .filter(|(c, _)| c.starts_with("vcpu"))
        .count()
        < 2
    {
        assert!(start.elapsed().as_secs() < 20, "vCPUs never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let seen = threads();
    kill(pid, libc::SIGTERM);
    let out = wait_bounded(child, 20);
    // KVM's own workers (kvm-nx-lpage-recovery) may be listed among the tasks; they are
    // kernel threads, not minivmm's.
    for (comm, mode) in seen.iter().filter(|(c, _)| !c.starts_with("kvm-")) {
        // Seccomp: 2 is filter mode (proc(5)).
        assert!(mode.ends_with('2'), "thread {comm}: {mode}; all: {seen:?}");
    }
    assert!(seen.iter().any(|(c, _)| c == "minivmm"), "{seen:?}");
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM));
}

#[test]
fn config_address_low_bits_find_edu_as_on_qemu() {
    // CONFIG_ADDRESS bits 1:0 select the byte read at 0xCFC, as QEMU forwards them.
    let (code, stdout, _) = run_payload("pcifind", &["--device", "edu"]);
    assert!(stdout.contains("pcifind: edu 1234:11e8 found"), "{stdout}");
    assert_eq!(code, Some(0x83), "stdout: {stdout}");
}

#[test]
fn config_address_scan_without_edu_finds_none() {
    let (code, stdout, _) = run_payload("pcifind", &[]);
    assert!(stdout.contains("pcifind: no edu"), "{stdout}");
    assert_eq!(code, Some(0x81), "stdout: {stdout}");
}

#[test]
fn rng_device_with_and_without_iommu_leaves_the_payload_running() {
    require_kvm();
    let elf = payload("hello");
    for (extra, translated) in [
        (&["--rng"][..], false),
        (&["--iommu", "--rng"], true),
        (&["--iommu", "--rng", "iommu_platform=off"], false),
    ] {
        let out = minivmm()
            .args(["--kernel", elf.to_str().unwrap(), "--memory", "64M"])
            .arg("--debug-exit")
            .args(extra)
            .env("RUST_LOG", "info")
            .output()
            .expect("minivmm runs");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            stdout.contains("minivmm-payload: IOAPIC interrupt on vector 0x40"),
            "{extra:?}: stdout: {stdout}\nstderr: {stderr}"
        );
        assert_eq!(out.status.code(), Some(0x43), "{extra:?}: stderr: {stderr}");
        let line = format!("virtio device type 4 at 00:01.0 (ACCESS_PLATFORM: {translated})");
        assert!(stderr.contains(&line), "{extra:?}: no {line:?} in {stderr}");
    }
}

#[test]
fn virtio_rng_thread_is_sandboxed_and_stops_with_the_vm() {
    require_kvm();
    let elf = payload("idle");
    let child = minivmm()
        .args(["--kernel", elf.to_str().unwrap(), "--memory", "32M"])
        .args(["--serial", "off", "--rng"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("minivmm runs");
    let pid = child.id();
    let rng_seccomp = || -> Option<String> {
        let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        dir.filter_map(|t| {
            let p = t.ok()?.path();
            let comm = std::fs::read_to_string(p.join("comm")).ok()?;
            let status = std::fs::read_to_string(p.join("status")).ok()?;
            (comm.trim() == "virtio-rng").then(|| {
                status
                    .lines()
                    .find(|l| l.starts_with("Seccomp:"))
                    .unwrap_or_default()
                    .to_string()
            })
        })
        .next()
    };
    let start = std::time::Instant::now();
    let mode = loop {
        match rng_seccomp() {
            // Seccomp: 2 is filter mode (proc(5)).
            Some(m) if m.ends_with('2') => break m,
            _ if start.elapsed().as_secs() > 20 => break format!("{:?}", rng_seccomp()),
            _ => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    };
    kill(pid, libc::SIGTERM);
    let out = wait_bounded(child, 20);
    assert!(mode.ends_with('2'), "virtio-rng thread: {mode}");
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 1 MiB raw image in the test's temp directory.
fn disk_image(name: &str) -> PathBuf {
    let img = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    img
}

#[test]
fn disk_device_with_and_without_iommu_leaves_the_payload_running() {
    require_kvm();
    let elf = payload("hello");
    let img = disk_image("disk-running.img");
    let disk = format!("path={}", img.display());
    let disk_off = format!("{disk},iommu_platform=off");
    for (extra, translated) in [
        (vec!["--disk", disk.as_str()], false),
        (vec!["--iommu", "--disk", disk.as_str()], true),
        (vec!["--iommu", "--disk", disk_off.as_str()], false),
    ] {
        let out = minivmm()
            .args(["--kernel", elf.to_str().unwrap(), "--memory", "64M"])
            .arg("--debug-exit")
            .args(&extra)
            .env("RUST_LOG", "info")
            .output()
            .expect("minivmm runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0x43), "{extra:?}: stderr: {stderr}");
        let line = format!("virtio device type 2 at 00:01.0 (ACCESS_PLATFORM: {translated})");
        assert!(stderr.contains(&line), "{extra:?}: no {line:?} in {stderr}");
    }
}

#[test]
fn disk_missing_image_is_one_clear_line_naming_the_flag() {
    require_kvm();
    let elf = payload("hello");
    let out = output(&[
        "--kernel",
        elf.to_str().unwrap(),
        "--disk",
        "path=/nonexistent/disk.img",
    ]);
    assert_one_line_error(&out, "--disk: Cannot open disk image /nonexistent/disk.img");
}

#[test]
fn disk_image_locked_by_another_process_is_one_clear_line() {
    require_kvm();
    let elf = payload("hello");
    let img = disk_image("disk-locked.img");
    let held = std::fs::File::open(&img).unwrap();
    // SAFETY: flock on a descriptor this test owns; no memory is passed.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_SH) }, 0);
    let disk = format!("path={}", img.display());
    let out = output(&["--kernel", elf.to_str().unwrap(), "--disk", &disk]);
    assert_one_line_error(&out, "is locked by another process (flock LOCK_EX)");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--disk: "));
    // Read-only users share the image.
    let out = output(&[
        "--kernel",
        elf.to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
        "--disk",
        &format!("{disk},readonly=on"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0x43),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn virtio_blk_threads_are_sandboxed_and_stop_with_the_vm() {
    require_kvm();
    let elf = payload("idle");
    let img = disk_image("disk-threads.img");
    let child = minivmm()
        .args(["--kernel", elf.to_str().unwrap(), "--memory", "32M"])
        .args([
            "--serial",
            "off",
            "--disk",
            &format!("path={}", img.display()),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("minivmm runs");
    let pid = child.id();
    // (thread name, whether its Seccomp line says filter mode) for the virtio-blk threads.
    let blk_threads = || -> Vec<(String, bool)> {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Vec::new();
        };
        dir.filter_map(|t| {
            let p = t.ok()?.path();
            let comm = std::fs::read_to_string(p.join("comm")).ok()?;
            let status = std::fs::read_to_string(p.join("status")).ok()?;
            let comm = comm.trim().to_string();
            comm.starts_with("virtio-blk").then(|| {
                // Seccomp: 2 is filter mode (proc(5)).
                let filtered = status.lines().any(|l| l == "Seccomp:\t2");
                (comm, filtered)
            })
        })
        .collect()
    };
    let start = std::time::Instant::now();
    let threads = loop {
        let t = blk_threads();
        if (t.len() == 5 && t.iter().all(|(_, f)| *f)) || start.elapsed().as_secs() > 20 {
            break t;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    kill(pid, libc::SIGTERM);
    let out = wait_bounded(child, 20);
    let workers = threads.iter().filter(|(n, _)| n == "virtio-blk").count();
    let io = threads.iter().filter(|(n, _)| n == "virtio-blk-io").count();
    assert_eq!((workers, io), (1, 4), "{threads:?}");
    assert!(threads.iter().all(|(_, f)| *f), "{threads:?}");
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tap name of this test process's own (taps minivmm creates vanish with it).
fn tap_name(tag: &str) -> String {
    format!("mv{tag}{}", std::process::id() % 100_000)
}

#[test]
#[ignore = "creates a tap: needs CAP_NET_ADMIN (cargo test -p minivmm --test kvm_payload -- --ignored net_)"]
fn net_device_over_a_tap_with_and_without_iommu_leaves_the_payload_running() {
    require_kvm();
    let elf = payload("hello");
    let tap = format!("tap={}", tap_name("p"));
    let tap_off = format!("{tap},iommu_platform=off");
    for (extra, translated) in [
        (vec!["--net", tap.as_str()], false),
        (vec!["--iommu", "--net", tap.as_str()], true),
        (vec!["--iommu", "--net", tap_off.as_str()], false),
    ] {
        let out = minivmm()
            .args(["--kernel", elf.to_str().unwrap(), "--memory", "64M"])
            .arg("--debug-exit")
            .args(&extra)
            .env("RUST_LOG", "info")
            .output()
            .expect("minivmm runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0x43), "{extra:?}: stderr: {stderr}");
        let line = format!("virtio device type 1 at 00:01.0 (ACCESS_PLATFORM: {translated})");
        assert!(stderr.contains(&line), "{extra:?}: no {line:?} in {stderr}");
    }
}

#[test]
#[ignore = "creates a tap: needs CAP_NET_ADMIN (cargo test -p minivmm --test kvm_payload -- --ignored net_)"]
fn net_tap_in_use_by_another_vm_is_one_clear_line_naming_the_flag() {
    require_kvm();
    let idle = payload("idle");
    let hello = payload("hello");
    let name = tap_name("b");
    let tap = format!("tap={name}");
    let first = minivmm()
        .args(["--kernel", idle.to_str().unwrap(), "--memory", "32M"])
        .args(["--serial", "off", "--net", &tap])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("minivmm runs");
    let pid = first.id();
    // The first VM holds the tap once its interface exists.
    let start = std::time::Instant::now();
    while !Path::new(&format!("/sys/class/net/{name}")).exists() {
        assert!(start.elapsed().as_secs() < 20, "first VM made no tap");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = output(&["--kernel", hello.to_str().unwrap(), "--net", &tap]);
    kill(pid, libc::SIGTERM);
    wait_bounded(first, 20);
    assert_one_line_error(
        &out,
        &format!("--net {tap}: cannot attach to tap {name}: it is in use"),
    );
}

#[test]
fn rng_device_behind_device_iotlb_has_ats_and_its_cache_in_the_state() {
    require_kvm();
    let elf = payload("hello");
    let run = |extra: &[&str]| {
        let out = minivmm()
            .args(["--kernel", elf.to_str().unwrap(), "--memory", "64M"])
            .args(["--debug-exit", "--iommu", "device-iotlb=on", "--rng"])
            .args(extra)
            .env("RUST_LOG", "info")
            .output()
            .expect("minivmm runs");
        assert_eq!(out.status.code(), Some(0x43));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = run(&[]);
    assert!(
        stderr.contains("virtio device at 00:01.0: ATS capability"),
        "{stderr}"
    );
    // The state at exit: the device's cache, and ATS as the payload left it (not enabled).
    assert!(
        stderr.contains("emulated virtio type 4 at 00:01.0: IOTLB 0 hits, 0 misses (hit rate -)"),
        "{stderr}"
    );
    assert!(stderr.contains("; ATS disabled (STU 0)"), "{stderr}");
    let stderr = run(&["ats=off"]);
    assert!(!stderr.contains("ATS capability"), "{stderr}");
}
