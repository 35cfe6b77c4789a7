//! `slayerfs-fdholder --socket PATH`: keeps the snapshotter's FUSE
//! connections open while the snapshotter restarts. Started by the
//! snapshotter when none is running; it exits when the snapshotter asks
//! (`slayerfs-snapshotter --unmount-on-exit`), and ignores SIGTERM, SIGINT
//! and SIGHUP: ending it while it holds connections nobody else holds
//! would end the filesystems of running containers.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let socket = match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(path), None) if flag == "--socket" => {
            match std::path::absolute(PathBuf::from(path)) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("slayerfs-fdholder: the socket path: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => {
            eprintln!("usage: slayerfs-fdholder --socket PATH");
            return ExitCode::from(2);
        }
    };
    // SAFETY: setting signal dispositions and the working directory at
    // start, before anything else runs.
    unsafe {
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
            libc::signal(sig, libc::SIG_IGN);
        }
        // Holding no directory open: the daemon's root may be unmounted.
        libc::chdir(c"/".as_ptr());
    }
    match slayerfs_fdstore::holder::serve(&socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slayerfs-fdholder: {e}");
            ExitCode::FAILURE
        }
    }
}
