//! Any text: parse it as Sigma, compile what parses, scan an event with the result.
//! Invariant: no panic, whatever the input; a rule that loads evaluates without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut compiler = mamori_sigma::Compiler::default();
    for doc in mamori_sigma::parse::parse_documents(text).into_iter().flatten() {
        compiler.add(doc);
    }
    let (set, _) = compiler.compile();
    let event = mamori_model::Event::new(serde_json::json!({"Event": {
        "System": {"Channel": "Microsoft-Windows-Sysmon/Operational", "EventID": 1},
        "EventData": {"Image": "C:\\Windows\\System32\\cmd.exe", "CommandLine": "cmd /c whoami",
                      "User": "x", "DestinationIp": "10.1.2.3", "Size": 12}}}));
    let mut hits = Vec::new();
    set.scanner().scan(&event, &mut hits);
});
