//! Fills a spool with synthetic sensor events for the server benchmark:
//! `fill DIR N` appends N ECS process-start documents (varied command lines, about 1 in 1,000
//! of them suspicious) and syncs.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).expect("usage: fill DIR N");
    let n: u64 = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .expect("usage: fill DIR N");
    let (mut sp, _) = mamori_spool::Spool::open(dir, mamori_spool::SpoolConfig::default())
        .expect("opening the spool");
    let cmds = [
        "/usr/bin/ls -la /var/log",
        "/usr/bin/git status --porcelain",
        "/usr/bin/python3 /opt/app/worker.py --queue default",
        "/usr/sbin/sshd -D -R",
        "/usr/bin/make -j2 all",
        "/bin/sh -c systemctl is-active nginx",
    ];
    for i in 0..n {
        let cmd = if i % 1000 == 999 {
            "sh -c echo aWQK | base64 -d | sh"
        } else {
            cmds[(i % cmds.len() as u64) as usize]
        };
        let exe = cmd.split(' ').next().unwrap_or("");
        let doc = format!(
            r#"{{"@timestamp":"2026-11-26T10:00:00.{:06}Z","event":{{"kind":"event","category":["process"],"type":["start"],"action":"exec","module":"mamori","dataset":"mamori.process"}},"host":{{"name":"bench-host","os":{{"type":"linux","kernel":"6.18"}}}},"process":{{"pid":{},"entity_id":"boot:{}:1","executable":"{exe}","name":"x","args":["{exe}"],"args_count":1,"command_line":"{cmd}","working_directory":"/","parent":{{"pid":1,"entity_id":"boot:1:1","executable":"/usr/lib/systemd/systemd","name":"systemd","command_line":"/sbin/init"}}}},"user":{{"id":"0","name":"root"}},"group":{{"id":"0","name":"root"}}}}"#,
            i % 1_000_000,
            1000 + i % 30000,
            1000 + i
        );
        sp.append(doc.as_bytes()).expect("append");
    }
    sp.sync().expect("sync");
}
