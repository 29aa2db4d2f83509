use std::os::fd::AsRawFd;
use std::process::Command;

use super::*;

/// Environment variable that tells [`probe`] (run in a child process) what to do.
const PROBE: &str = "MINIVMM_SECCOMP_PROBE";

/// Runs [`probe`] in a child process (the test binary again) with `mode` and `call`; returns
/// (exit status, stdout, stderr). The filter and a trap end only the child.
fn run_probe(mode: &str, call: &str) -> (Option<i32>, String, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "seccomp::tests::probe",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .args(["--test-threads=1"])
        .env(PROBE, format!("{mode}:{call}"))
        .output()
        .expect("test binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The child's side: a thread named seccomp-probe takes the vCPU filter and makes `call`.
#[test]
#[ignore = "run by the seccomp tests in a child process"]
fn probe() {
    let Ok(spec) = std::env::var(PROBE) else {
        return;
    };
    let (mode, call) = spec.split_once(':').unwrap();
    // "CALL@virtio" makes the call from a virtio worker's sandbox instead of a vCPU's.
    let (call, class) = match call.split_once('@') {
        Some((c, "virtio")) => (c, ThreadClass::Virtio),
        _ => (call, ThreadClass::Vcpu),
    };
    let mode = match mode {
        "on" => SeccompMode::On,
        "log" => SeccompMode::Log,
        _ => SeccompMode::Off,
    };
    set_mode(mode).unwrap();
    let call = call.to_string();
    std::thread::Builder::new()
        .name("seccomp-probe".into())
        .spawn(move || {
            // An eventfd made before the filter goes on, as a worker's are.
            // SAFETY: eventfd(2) takes no pointers; the descriptor is only read below.
            let efd = unsafe { libc::eventfd(1, libc::EFD_NONBLOCK) };
            // A disk image opened before the filter goes on, as virtio-blk's is.
            let img = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
            // A frame-at-a-time descriptor pair standing in for a tap opened during setup.
            let mut pair = [0; 2];
            // SAFETY: socketpair(2) writes two descriptors into `pair`, an array of two.
            let ret = unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK,
                    0,
                    pair.as_mut_ptr(),
                )
            };
            assert_eq!(ret, 0);
            // A stream backend (passt's protocol) over a socketpair, made during setup.
            let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
            let stream = devices::virtio::net::Stream::new(ours, "probe peer").unwrap();
            // The peer's frames wait in the socket: a 2-byte frame, then a bad length.
            {
                use std::io::Write;
                peer.write_all(&[0, 0, 0, 2, 0xaa, 0xbb]).unwrap();
                peer.write_all(&u32::MAX.to_be_bytes()).unwrap();
            }
            sandbox(class).unwrap();
            // SAFETY: plain system calls on values that need no memory of ours to stay valid
            // (the winsize, pollfd and byte buffers are locals of the sizes given).
            unsafe {
                match call.as_str() {
                    "socket" => {
                        libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                    }
                    "getpid" => {
                        libc::getpid();
                    }
                    "worker" => {
                        // What a virtio worker does: wait on an eventfd, read it, getrandom.
                        let mut p = libc::pollfd {
                            fd: efd,
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        libc::poll(&mut p, 1, 0);
                        let mut v = 0u64;
                        libc::read(efd, (&mut v as *mut u64).cast(), 8);
                        let mut b = [0u8; 16];
                        libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0);
                    }
                    "blockio" => {
                        // What virtio-blk's I/O threads do on an image opened before.
                        let mut b = [0u8; 512];
                        let iov = libc::iovec {
                            iov_base: b.as_mut_ptr().cast(),
                            iov_len: b.len(),
                        };
                        let f = img.as_raw_fd();
                        assert_eq!(libc::pwritev(f, &iov, 1, 0), 512);
                        assert_eq!(libc::preadv(f, &iov, 1, 0), 512);
                        assert_eq!(libc::pwrite(f, b.as_ptr().cast(), 512, 512), 512);
                        libc::fdatasync(f);
                        libc::fallocate(f, libc::FALLOC_FL_ZERO_RANGE, 0, 512);
                    }
                    "net" => {
                        // What virtio-net's worker does on its tap: poll it, writev a frame
                        // gathered from guest buffers, read a frame into its bounce buffer.
                        let mut hdr = [0u8; 12];
                        let mut payload = [0u8; 60];
                        let iov = [
                            libc::iovec {
                                iov_base: hdr.as_mut_ptr().cast(),
                                iov_len: hdr.len(),
                            },
                            libc::iovec {
                                iov_base: payload.as_mut_ptr().cast(),
                                iov_len: payload.len(),
                            },
                        ];
                        assert_eq!(libc::writev(pair[0], iov.as_ptr(), 2), 72);
                        let mut p = libc::pollfd {
                            fd: pair[1],
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        assert_eq!(libc::poll(&mut p, 1, 1000), 1);
                        let mut frame = [0u8; 128];
                        assert_eq!(libc::read(pair[1], frame.as_mut_ptr().cast(), 128), 72);
                        // The offloads, set at activation (ENOTTY on a socket; not trapped).
                        let req = devices::virtio::net::tap::TUNSETOFFLOAD;
                        libc::ioctl(pair[0], req as _, 0 as libc::c_ulong);
                    }
                    "stream" => {
                        // What virtio-net's worker does on a stream socket to passt: sendmsg
                        // a frame, poll and read one, shut down a peer breaking the protocol.
                        use devices::virtio::net::NetBackend;
                        let mut f = [0u8; 72];
                        let slice = vm_memory::VolatileSlice::from(&mut f[..]);
                        assert_eq!(stream.write_frame(&[slice]).unwrap(), 72);
                        let mut p = libc::pollfd {
                            fd: stream.rx_fd(),
                            events: libc::POLLIN | libc::POLLOUT,
                            revents: 0,
                        };
                        assert_eq!(libc::poll(&mut p, 1, 1000), 1);
                        let mut buf = vec![0u8; 128];
                        assert_eq!(stream.read_frame(&mut buf).unwrap(), 14);
                        assert!(stream.read_frame(&mut buf).is_err());
                        assert!(!stream.link_up());
                    }
                    "tunsetiff" => {
                        // Attaching a tap is setup's, never a worker's.
                        let mut ifr = [0u8; 40];
                        let req = devices::virtio::net::tap::TUNSETIFF;
                        libc::ioctl(pair[0], req as _, ifr.as_mut_ptr());
                    }
                    "tiocgwinsz" => {
                        let mut ws: libc::winsize = std::mem::zeroed();
                        libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws);
                    }
                    other => panic!("unknown probe call {other}"),
                }
            }
        })
        .unwrap()
        .join()
        .unwrap();
    println!("PROBE-SURVIVED");
}

#[test]
fn seccomp_on_forbidden_syscall_traps_with_one_line() {
    let (code, stdout, stderr) = run_probe("on", "socket");
    assert_eq!(
        code,
        Some(FORBIDDEN_EXIT),
        "stdout {stdout} stderr {stderr}"
    );
    assert!(!stdout.contains("PROBE-SURVIVED"));
    assert!(
        stderr.contains(&format!(
            "seccomp: thread seccomp-probe made a forbidden system call {} (socket)",
            libc::SYS_socket
        )),
        "stderr: {stderr}"
    );
}

#[test]
fn seccomp_on_allowed_syscall_passes() {
    let (code, stdout, stderr) = run_probe("on", "getpid");
    assert_eq!(code, Some(0), "stdout {stdout} stderr {stderr}");
    assert!(stdout.contains("PROBE-SURVIVED"));
}

#[test]
fn seccomp_on_ioctl_outside_thread_list_traps() {
    // TIOCGWINSZ is the main thread's, never a vCPU's.
    let (code, _, stderr) = run_probe("on", "tiocgwinsz");
    assert_eq!(code, Some(FORBIDDEN_EXIT), "stderr {stderr}");
    assert!(stderr.contains("(ioctl)"), "stderr: {stderr}");
}

#[test]
fn seccomp_virtio_worker_waits_reads_and_gets_random_bytes() {
    let (code, stdout, stderr) = run_probe("on", "worker@virtio");
    assert_eq!(code, Some(0), "stdout {stdout} stderr {stderr}");
    assert!(stdout.contains("PROBE-SURVIVED"));
}

#[test]
fn seccomp_virtio_worker_socket_traps() {
    let (code, _, stderr) = run_probe("on", "socket@virtio");
    assert_eq!(code, Some(FORBIDDEN_EXIT), "stderr {stderr}");
}

#[test]
fn seccomp_virtio_blk_io_thread_reads_writes_syncs_and_allocates() {
    let (code, stdout, stderr) = run_probe("on", "blockio@virtio");
    assert_eq!(code, Some(0), "stdout {stdout} stderr {stderr}");
    assert!(stdout.contains("PROBE-SURVIVED"));
}

#[test]
fn seccomp_virtio_net_worker_polls_reads_writes_and_sets_offloads_on_its_tap() {
    let (code, stdout, stderr) = run_probe("on", "net@virtio");
    assert_eq!(code, Some(0), "stdout {stdout} stderr {stderr}");
    assert!(stdout.contains("PROBE-SURVIVED"));
}

#[test]
fn seccomp_virtio_net_worker_sends_reads_and_shuts_down_a_stream_socket() {
    let (code, stdout, stderr) = run_probe("on", "stream@virtio");
    assert_eq!(code, Some(0), "stdout {stdout} stderr {stderr}");
    assert!(stdout.contains("PROBE-SURVIVED"));
}

#[test]
fn seccomp_virtio_worker_tunsetiff_traps() {
    let (code, _, stderr) = run_probe("on", "tunsetiff@virtio");
    assert_eq!(code, Some(FORBIDDEN_EXIT), "stderr {stderr}");
    assert!(stderr.contains("(ioctl)"), "stderr: {stderr}");
}

#[test]
fn seccomp_virtio_threads_get_the_virtio_class() {
    assert_eq!(
        ThreadClass::of_device_thread("virtio-rng"),
        ThreadClass::Virtio
    );
    for name in [
        "virtio-blk",
        "virtio-blk-io",
        devices::virtio::net::THREAD_NAME,
    ] {
        assert_eq!(ThreadClass::of_device_thread(name), ThreadClass::Virtio);
    }
    assert_eq!(
        ThreadClass::of_device_thread("vfio-irq"),
        ThreadClass::Device
    );
}

#[test]
fn seccomp_log_forbidden_syscall_passes() {
    let (code, stdout, stderr) = run_probe("log", "socket");
    assert_eq!(code, Some(0), "stdout {stdout} stderr {stderr}");
    assert!(stdout.contains("PROBE-SURVIVED"));
}

#[test]
fn seccomp_filter_builds_for_every_class() {
    for class in [
        ThreadClass::Vcpu,
        ThreadClass::Device,
        ThreadClass::Virtio,
        ThreadClass::DmaMap,
        ThreadClass::Main,
        ThreadClass::Watchdog,
    ] {
        for mode in [SeccompMode::On, SeccompMode::Log] {
            assert!(
                !filter(class, mode).unwrap().is_empty(),
                "{class:?} {mode:?}"
            );
        }
    }
}

#[test]
fn seccomp_ioctl_numbers_match_the_kernel_headers() {
    // Values from include/uapi/linux/kvm.h and vfio.h as strace prints them on x86_64.
    assert_eq!(allowlist::KVM_RUN, 0xae80);
    assert_eq!(allowlist::KVM_GET_REGS, 0x8090_ae81);
    assert_eq!(allowlist::KVM_SIGNAL_MSI, 0x4020_aea5);
    assert_eq!(allowlist::KVM_SET_GSI_ROUTING, 0x4008_ae6a);
    assert_eq!(allowlist::KVM_IRQFD, 0x4020_ae76);
    assert_eq!(allowlist::KVM_IOEVENTFD, 0x4040_ae79);
    assert_eq!(allowlist::KVM_SET_USER_MEMORY_REGION, 0x4020_ae46);
    assert_eq!(allowlist::VFIO_DEVICE_SET_IRQS, 0x3b6e);
    assert_eq!(allowlist::VFIO_IOMMU_MAP_DMA, 0x3b71);
}

#[test]
fn seccomp_forbidden_line_names_thread_and_call() {
    let mut name = [0u8; 16];
    name[..5].copy_from_slice(b"vcpu3");
    let l = forbidden_line(&name, libc::SYS_execve);
    let s = std::str::from_utf8(&l.buf[..l.len]).unwrap();
    assert!(
        s.starts_with(
            "minivmm: error: seccomp: thread vcpu3 made a forbidden system call 59 (execve)"
        ),
        "{s}"
    );
    assert!(s.ends_with('\n') && s.matches('\n').count() == 1);
}
