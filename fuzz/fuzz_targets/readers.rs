//! Any bytes as a log file (EVTX when it starts with the EVTX magic, JSON otherwise).
//! Invariant: no panic; every record delivered is a JSON object event.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mamori_sources::read_bytes(data, &mut |rec| {
        let _ = rec.event.kind();
        let _ = rec.event.timestamp();
        rec.event.for_each_field(&mut |_, _| {});
    });
});
