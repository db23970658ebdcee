//! What reaches the sensor from outside its control: DNS payloads (anything can be sent to
//! port 53), audit record text (user space writes it), and ring-buffer records.
//! Invariant: no panic, and a parsed DNS message never claims more records than it holds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = mamori_sensor::dns::parse(data) {
        assert!(m.questions.len() <= 64 && m.answers.len() <= 64);
    }
    let text = String::from_utf8_lossy(data);
    for t in [1100u16, 1105, 1112, 1123] {
        let _ = mamori_sensor::audit::parse(t, &text);
    }
    let _ = mamori_sensor::bpf::SensorEvent::decode(data);
});
