//! Quarantine, kill and collection on this machine, for real.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use mamori_respond::quarantine::Quarantine;
use mamori_respond::{RespondError, collect, kill};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mamori-respond-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn quarantine_seals_restores_exactly_and_deletes() {
    let dir = scratch("q");
    let store = dir.join("store");
    let q = Quarantine::open(&store, vec![store.clone()]).unwrap();
    let victim = dir.join("dropper.sh");
    let content = b"#!/bin/sh\necho MAMORI-QUARANTINE-MARKER\n".repeat(50);
    std::fs::write(&victim, &content).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o4751)).unwrap();
    let mtime = std::time::UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    std::fs::File::options()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let before = std::fs::metadata(&victim).unwrap();

    let item = q.quarantine(victim.to_str().unwrap()).unwrap();
    assert!(!victim.exists(), "the original is gone");
    assert_eq!(item.size, content.len() as u64);
    assert_eq!(item.mode, 0o4751);
    // Sealed: the plaintext appears nowhere in the store, and the store is private.
    for e in std::fs::read_dir(&store).unwrap().flatten() {
        let body = std::fs::read(e.path()).unwrap();
        assert!(
            !body.windows(23).any(|w| w == b"MAMORI-QUARANTINE-MARKE"),
            "{} holds the plaintext",
            e.path().display()
        );
    }
    assert_eq!(std::fs::metadata(&store).unwrap().mode() & 0o777, 0o700);
    assert_eq!(q.list().unwrap(), vec![item.clone()]);

    // Restore refuses to overwrite a file that appeared at the old path.
    std::fs::write(&victim, b"new").unwrap();
    let e = q.restore(&item.id).unwrap_err();
    assert!(matches!(e, RespondError::Refused(_)), "{e}");
    std::fs::remove_file(&victim).unwrap();

    let back = q.restore(&item.id).unwrap();
    assert_eq!(back, item);
    assert_eq!(std::fs::read(&victim).unwrap(), content);
    let after = std::fs::metadata(&victim).unwrap();
    assert_eq!(after.mode(), before.mode(), "mode including setuid");
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    assert_eq!(
        (after.mtime(), after.mtime_nsec()),
        (before.mtime(), before.mtime_nsec())
    );
    assert!(q.list().unwrap().is_empty());

    // Quarantine again, then delete for good.
    let item = q.quarantine(victim.to_str().unwrap()).unwrap();
    q.delete(&item.id).unwrap();
    assert!(q.list().unwrap().is_empty() && !victim.exists());
    assert!(matches!(
        q.restore(&item.id).unwrap_err(),
        RespondError::NotFound(_)
    ));

    // A damaged item does not decrypt: a clear error, and the item stays.
    std::fs::write(&victim, b"payload").unwrap();
    let item = q.quarantine(victim.to_str().unwrap()).unwrap();
    let bin = store.join(format!("{}.bin", item.id));
    let mut sealed = std::fs::read(&bin).unwrap();
    sealed[14] ^= 0xff;
    std::fs::write(&bin, sealed).unwrap();
    let e = q.restore(&item.id).unwrap_err();
    assert!(e.to_string().contains("does not decrypt"), "{e}");
    assert_eq!(q.list().unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn quarantine_refuses_what_it_must_not_touch() {
    let dir = scratch("qr");
    let store = dir.join("store");
    let q = Quarantine::open(&store, vec![store.clone(), dir.join("agent")]).unwrap();
    std::fs::create_dir_all(dir.join("agent")).unwrap();
    std::fs::write(dir.join("agent/identity.json"), b"{}").unwrap();
    std::fs::write(dir.join("real"), b"x").unwrap();
    std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
    let exe = std::fs::canonicalize("/proc/self/exe").unwrap();
    for (path, why) in [
        ("/etc/passwd".to_string(), "system file"),
        ("/boot/vmlinuz".to_string(), "/boot/"),
        ("relative/file".to_string(), "absolute"),
        (dir.join("link").display().to_string(), "symbolic link"),
        (dir.display().to_string(), "regular file"),
        (exe.display().to_string(), "Mamori agent"),
        (
            dir.join("agent/identity.json").display().to_string(),
            "belongs to the Mamori agent",
        ),
        (dir.join("missing").display().to_string(), "No such file"),
    ] {
        let e = q.quarantine(&path).unwrap_err();
        assert!(e.to_string().contains(why), "{path}: {e}");
    }
    assert!(dir.join("real").exists() && dir.join("agent/identity.json").exists());
    assert!(q.list().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.split(") ").nth(1).unwrap_or("").starts_with('Z'))
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn kill_hits_only_the_identified_process_and_its_whole_tree() {
    let mut root = Command::new("sh")
        .args([
            "-c",
            "sleep 1000 & sleep 1000 & sh -c 'sleep 1000 & wait' & wait",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = root.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while children(pid).len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let kids = children(pid);
    assert_eq!(kids.len(), 3, "the tree started");
    let grandkids: Vec<u32> = kids.iter().flat_map(|&k| children(k)).collect();
    let ticks = kill::start_ticks(pid).unwrap();

    // A wrong start time (a reused pid) is refused and nothing is signalled.
    let e = kill::kill_process(pid, ticks + 1, None, true).unwrap_err();
    assert!(e.to_string().contains("another process"), "{e}");
    assert!(alive(pid) && kids.iter().all(|&k| alive(k)));
    let e = kill::kill_process(pid, ticks, Some("another-boot"), true).unwrap_err();
    assert!(e.to_string().contains("earlier boot"), "{e}");

    let out = kill::kill_process(pid, ticks, None, true).unwrap();
    let killed = out["killed"].as_array().unwrap();
    assert!(killed.len() >= 4, "{out}");
    let _ = root.wait();
    for p in kids.iter().chain(&grandkids) {
        assert!(!alive(*p), "{p} survived");
    }
}

#[test]
fn kill_refuses_pid_1_and_the_agent() {
    let e = kill::kill_process(1, kill::start_ticks(1).unwrap_or(0), None, false).unwrap_err();
    assert!(e.to_string().contains("PID 1"), "{e}");
    let me = std::process::id();
    let e = kill::kill_process(me, kill::start_ticks(me).unwrap(), None, false).unwrap_err();
    assert!(e.to_string().contains("Mamori agent"), "{e}");
    let e = kill::kill_process(u32::MAX - 1, 0, None, false).unwrap_err();
    assert!(matches!(e, RespondError::NotFound(_)), "{e}");
}

#[test]
fn collection_reads_files_processes_and_the_host() {
    let dir = scratch("c");
    let f = dir.join("evidence.bin");
    std::fs::write(&f, b"evidence").unwrap();
    let v = collect::file(f.to_str().unwrap(), 1024).unwrap();
    use sha2::Digest;
    let want: String = sha2::Sha256::digest(b"evidence")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v["sha256"], want);
    assert_eq!(v["size"], 8);
    assert_eq!(v["content_base64"], "ZXZpZGVuY2U=");
    let e = collect::file(f.to_str().unwrap(), 4).unwrap_err();
    assert!(e.to_string().contains("over the limit"), "{e}");
    assert!(collect::file("/etc", 10).is_err());

    // This process, with a socket of its own.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let p = collect::process(std::process::id()).unwrap();
    assert!(p["maps"].as_array().unwrap().len() > 5);
    let socks = p["sockets"].as_array().unwrap();
    assert!(
        socks
            .iter()
            .any(|s| s["local"] == format!("127.0.0.1:{port}") && s["state"] == "LISTEN"),
        "{socks:?}"
    );
    assert!(p["executable"].as_str().unwrap().contains("respond"));

    let t = collect::triage();
    let procs = t["processes"].as_array().unwrap();
    assert!(procs.iter().any(|p| p["pid"] == std::process::id()));
    assert!(
        t["sockets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["local"] == format!("127.0.0.1:{port}") && s["pid"] == std::process::id()),
        "the listening socket with its owner"
    );
    assert!(
        t["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "root")
    );
    assert!(
        !t["kernel_modules"].as_array().unwrap().is_empty()
            || !std::path::Path::new("/proc/modules").exists()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
