//! A virtio device's worker thread, started when the device is made and parked until the
//! driver activates the device.
//!
//! Why not start it at activation: DRIVER_OK and resets are guest register writes, handled on
//! a vCPU thread, and vCPU threads run sandboxed; a sandboxed thread cannot start threads
//! (clone is in no thread class's allow-list). So the VMM makes the device, and with it the
//! thread, during setup (the thread sandboxes itself first, as the "virtio-*" class), and
//! activation hands the thread its job over a channel. A stop is synchronous: when
//! [`WorkerThread::stop`] returns, the job is gone and touches guest memory no more.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What a worker thread runs while its device is active.
pub trait WorkerJob: Send + 'static {
    /// Descriptors to wait on (the queues' notification eventfds, ...).
    fn fds(&self) -> Vec<RawFd>;
    /// Runs once when the job starts (requests made before the thread saw it).
    fn start(&mut self) {}
    /// `fds()[i]` is readable.
    fn ready(&mut self, i: usize);
    /// Descriptors to wait on until they are writable (a socket with output waiting).
    fn write_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// `write_fds()[i]` is writable (or hung up).
    fn writable(&mut self, _i: usize) {}
}

enum Command<J> {
    Start(J),
    Stop(Sender<()>),
    Exit,
}

/// A parked or running worker thread. Dropping it ends the thread.
pub struct WorkerThread<J: WorkerJob> {
    commands: Sender<Command<J>>,
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl<J: WorkerJob> WorkerThread<J> {
    /// Starts the thread `name` (its seccomp class follows from the name), parked.
    pub fn spawn(name: &str) -> std::io::Result<Self> {
        let (commands, rx) = channel();
        let wake = EventFd::new(EFD_NONBLOCK)?;
        let thread_wake = wake.try_clone()?;
        let thread_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                crate::thread_started(&thread_name);
                run(&thread_name, &thread_wake, &rx);
            })?;
        Ok(WorkerThread {
            commands,
            wake,
            thread: Some(thread),
        })
    }

    fn send(&self, c: Command<J>) -> bool {
        self.commands.send(c).is_ok() && self.wake.write(1).is_ok()
    }

    /// Hands the thread its job (replacing one it runs).
    pub fn start(&self, job: J) -> std::io::Result<()> {
        if self.send(Command::Start(job)) {
            Ok(())
        } else {
            Err(std::io::Error::other("worker thread is gone"))
        }
    }

    /// Drops the job and waits until the thread has.
    pub fn stop(&self) {
        let (ack, done) = channel();
        if self.send(Command::Stop(ack)) {
            let _ = done.recv();
        }
    }
}

impl<J: WorkerJob> Drop for WorkerThread<J> {
    fn drop(&mut self) {
        if self.send(Command::Exit) {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// The thread: waits on its wake eventfd and its job's descriptors.
fn run<J: WorkerJob>(name: &str, wake: &EventFd, commands: &Receiver<Command<J>>) {
    let mut job: Option<J> = None;
    loop {
        let pollfd = |events| {
            move |fd| libc::pollfd {
                fd,
                events,
                revents: 0,
            }
        };
        let mut fds: Vec<libc::pollfd> = std::iter::once(wake.as_raw_fd())
            .chain(job.iter().flat_map(|j| j.fds()))
            .map(pollfd(libc::POLLIN))
            .collect();
        let readers = fds.len();
        fds.extend(
            job.iter()
                .flat_map(|j| j.write_fds())
                .map(pollfd(libc::POLLOUT)),
        );
        // SAFETY: `fds` is a live, initialised array of `fds.len()` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("{name}: poll: {e}");
            return;
        }
        if fds[0].revents != 0 {
            // Non-blocking: an error is "nothing pending".
            let _ = wake.read();
            while let Ok(c) = commands.try_recv() {
                match c {
                    Command::Start(mut j) => {
                        let _busy = crate::quiesce::vm_gate().enter();
                        j.start();
                        job = Some(j);
                    }
                    Command::Stop(ack) => {
                        job = None;
                        let _ = ack.send(());
                    }
                    Command::Exit => return,
                }
            }
            continue;
        }
        if let Some(j) = job.as_mut() {
            // Queue processing is guest-visible progress: not while the VM is paused.
            let _busy = crate::quiesce::vm_gate().enter();
            for (i, p) in fds[1..readers].iter().enumerate() {
                if p.revents != 0 {
                    j.ready(i);
                }
            }
            for (i, p) in fds[readers..].iter().enumerate() {
                if p.revents != 0 {
                    j.writable(i);
                }
            }
        }
    }
}
